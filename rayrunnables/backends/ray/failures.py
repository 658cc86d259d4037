"""Ray's own failures, translated where the Ray backend hands results to the engine.

As httpx translates transport errors at its transport's edge, a dead worker, a lost object, a dead actor
or a task killed for memory reaches the caller as a ``rayrunnables`` error that says what was lost, with
the step path and item index every other error carries, and Ray's error as ``__cause__``:

==========================================  ==============================================================
Ray                                         rayrunnables (all ``BackendError``)
==========================================  ==============================================================
``WorkerCrashedError``                      ``WorkerLost``
``NodeDiedError``                           ``WorkerLost`` (``shared``: not the chunk's own doing)
``OutOfMemoryError``                        ``OutOfMemory`` (a ``WorkerLost``)
``RayActorError`` (``ActorDiedError``...)   ``ActorLost`` (a ``WorkerLost``, ``shared``)
``ObjectLostError`` (``OwnerDiedError``...)  ``ObjectLost``
any other ``RayError``                      ``BackendError``
==========================================  ==============================================================

Left as they are: the user's own exceptions (``tasks.convert`` unwraps them), a cancelled task (our own
doing), ``GetTimeoutError`` (a ``TimeoutError`` already), and an exception Ray cannot rebuild
(``UnserializableException``, ``RaySystemError``: ``tasks.convert``'s business).

The edges: ``chunks.RayChunkRunner.result`` (``batch``/``imap``/``.map()`` chunks), ``Invocation``'s gets
(``invoke``: the step path of the task that was lost, found by walking back from the failed result through
the tasks it waited on), ``RayBackend.stream``, and a ``.map()`` inside a chain (``maps``).
"""

from __future__ import annotations

from typing import Any

import ray
from ray.exceptions import (
    ActorUnavailableError,
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    TaskCancelledError,
    UnserializableException,
    WorkerCrashedError,
)

from ...errors import (
    ActorLost,
    BackendError,
    ObjectLost,
    OutOfMemory,
    WorkerLost,
    attach_step,
    item_index_of,
    step_path_of,
)

__all__ = ["LOST_ARGUMENT", "failed_with", "is_lost", "ray_failure", "translate", "translate_outcomes"]

_LEFT_ALONE = (TaskCancelledError, GetTimeoutError, UnserializableException, RaySystemError)

#: what Ray says of a task that never ran because an argument (an earlier task's output) failed
LOST_ARGUMENT = "input arguments for this task could not be computed"


def ray_failure(err: BaseException) -> RayError | None:
    """The Ray failure ``err`` is, or that a task met and raised (a lost argument, a nested ``ray.get``);
    None for the user's own exceptions and for what is left alone."""
    seen = 0
    while isinstance(err, RayTaskError) and isinstance(err.cause, BaseException) and seen < 16:
        err, seen = err.cause, seen + 1
    if isinstance(err, RayError) and not isinstance(err, (RayTaskError, *_LEFT_ALONE)):
        return err
    return None


def _describe(err: RayError) -> tuple[type[BackendError], str, bool | None]:
    """Our class for ``err``, what it says, and whether the process served other chunks (None: the class's)."""
    if isinstance(err, OutOfMemoryError):
        return OutOfMemory, (
            "Ray killed the process running this step for want of memory, and its retries were spent "
            "(give the step more memory with with_options(memory=...), or use smaller chunks)"
        ), None
    if isinstance(err, ActorUnavailableError):
        return ActorLost, "the actor serving this step could not be reached (it may be restarting)", None
    if isinstance(err, RayActorError):
        how = "in its constructor" if getattr(err, "_actor_init_failed", False) else "past its max_restarts"
        return ActorLost, f"the actor serving this step died ({how})", None
    if isinstance(err, NodeDiedError):
        return WorkerLost, "the node running this step died, and Ray's retries were spent", True
    if isinstance(err, WorkerCrashedError):
        return WorkerLost, (
            "the process running this step died (a crash, os._exit, a signal or the OOM killer), "
            "and Ray's retries were spent"
        ), None
    if isinstance(err, ObjectLostError):
        return ObjectLost, (
            "a value this step needed or produced was lost from Ray's object store (its node or its owner "
            "died) and could not be rebuilt"
        ), None
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return BackendError, f"Ray failed: {type(err).__name__}: {first}", None


def translate(err: BaseException, path: str | None = None, index: int | None = None) -> BaseException:
    """``err`` as a ``rayrunnables`` error if it is a Ray failure (Ray's error as ``__cause__``), with the
    step path and item index (given, or those ``err`` carried); anything else unchanged."""
    found = ray_failure(err)
    if found is None:
        return err
    kind, text, shared = _describe(found)
    path = path or step_path_of(err) or step_path_of(found)
    index = index if index is not None else item_index_of(err)
    exc = kind(f"{path}: {text}" if path else text)
    if shared is not None:
        exc.shared = shared  # type: ignore[attr-defined]
    exc.__cause__ = found
    return attach_step(exc, path, index) if path else exc


def translate_outcomes(outcomes: list[tuple[int, bool, Any, str | None]]) -> None:
    """A Ray failure a step met as an item's error (a call to a dead actor inside the step) is translated
    in place, keeping its step path and index."""
    for n, (index, ok, value, tb) in enumerate(outcomes):
        if not ok and ray_failure(value) is not None:
            outcomes[n] = (index, ok, translate(value, index=index), tb)


def failed_with(ref: Any, wait: float = 10.0) -> BaseException | None:
    """The error of ``ref`` if it has ended with one (not waiting for it to end), else None.

    Used on failure paths only: a ref that ended well is fetched to find out."""
    try:
        ready, _ = ray.wait([ref], num_returns=1, timeout=0, fetch_local=False)
        if not ready:
            return None
        ray.get(ref, timeout=wait)
    except GetTimeoutError:
        return None
    except Exception as err:
        return err
    return None


def is_lost(err: BaseException) -> bool:
    """Whether ``err`` is (or carries) a Ray failure that lost a process: a ``WorkerLost`` once translated."""
    found = ray_failure(err)
    return found is not None and issubclass(_describe(found)[0], WorkerLost)
