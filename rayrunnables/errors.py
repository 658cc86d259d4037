"""One small error hierarchy, and the helpers that tag a user's exception with the step it came from.

The user's exception type is never replaced: a ``ValueError`` raised inside ``parallel['a'] > step 2``
stays catchable as ``ValueError``. We only *annotate* it (an attribute, and a note on Python >= 3.11),
so ``except ValueError`` keeps working on every backend.
"""

from __future__ import annotations

import copy
from typing import Any, TypeVar

E = TypeVar("E", bound=BaseException)

__all__ = [
    "RayRunnablesError",
    "InputTypeError",
    "ConfigError",
    "OptionsError",
    "StepRecursionError",
    "UnpicklableStepError",
    "UnportableError",
    "BackendError",
    "WorkerLost",
    "OutOfMemory",
    "ActorLost",
    "ObjectLost",
    "StepConstructionError",
    "VectorizedOutputError",
    "ReadOnlyInputError",
    "RemoteTraceback",
    "FailureBudgetExceeded",
    "RateLimitTimeout",
    "UnhashableInputError",
    "attach_step",
    "copy_error",
    "deadline_error",
    "rebuild_error",
    "step_path_of",
    "item_index_of",
]


class RayRunnablesError(Exception):
    """Base of every error rayrunnables raises on its own account (never of the user's errors)."""


class InputTypeError(RayRunnablesError, TypeError, ValueError):
    """A step received an input of a type it cannot take (e.g. ``pick`` given a list).

    Both a ``TypeError`` and a ``ValueError``: LangChain raises ``ValueError`` for these, so code
    written against LangChain keeps catching them."""


class ConfigError(RayRunnablesError, ValueError):
    """A config dict has an unknown key or a value of the wrong type."""


class OptionsError(RayRunnablesError, ValueError):
    """``with_options`` got an unknown option name or a bad value."""


class StepRecursionError(RayRunnablesError, RecursionError):
    """Runnables returning runnables went deeper than ``recursion_limit``."""


class UnpicklableStepError(RayRunnablesError, TypeError):
    """A step cannot be sent to another process; raised before anything is submitted."""


class UnpicklableOutputError(RayRunnablesError, TypeError):
    """A step's output cannot be sent back from a Ray worker (it holds a lock, a socket, a generator...)."""


class UnportableError(RayRunnablesError):
    """A step's exception cannot be rebuilt in the process it was sent to, even without its constructor:
    this error stands for it, naming its type (``original_type``, as ``module.qualname``) and keeping its
    message, step path and item index. Exceptions that can be rebuilt keep their own type on every backend."""

    def __init__(self, message: str, original_type: str = "") -> None:
        super().__init__(message)
        self.original_type = original_type


class StepConstructionError(RayRunnablesError, RuntimeError):
    """A stateful step's class failed in ``__init__``; reported once, never retried."""


class VectorizedOutputError(RayRunnablesError, ValueError):
    """A vectorized (batched) step returned a different number of outputs than it got inputs."""


class ReadOnlyInputError(RayRunnablesError, ValueError):
    """A step wrote into a numpy array it received: inputs are shared between branches and items
    without copying, as read-only views (Ray's object store hands them out read-only too)."""


class BackendError(RayRunnablesError, RuntimeError):
    """The backend itself failed (cannot connect, worker lost beyond retries...)."""


class WorkerLost(BackendError):
    """The process running a step died while it ran (a crash, ``os._exit``, a signal, the kernel's OOM
    killer, its node lost), and the backend's retries were spent. Ray's (or the executor's) own error is
    the ``__cause__``.

    In ``batch``/``imap``/``.map()`` only the item that kills its process gets this error: a lost chunk is
    split and its parts re-run until that item is alone (``rayrunnables.engine.recovery``).
    ``shared``: the process also served other chunks (a pool actor, a process pool), so losing it says
    nothing about this chunk's items; the scheduler re-runs such a chunk alone before it blames one."""

    shared: bool = False


class OutOfMemory(WorkerLost):
    """Ray killed the process running a step for want of memory (its memory monitor), retries spent.
    Give the step more ``memory`` (``with_options(memory=...)``) or smaller chunks."""


class ActorLost(WorkerLost):
    """The actor serving a stateful step (``RunnableActor``) died past its ``max_restarts``, or could not
    be reached. The pool replaces a dead actor, so later calls get a new one."""

    shared = True


class ObjectLost(BackendError):
    """A value held in Ray's object store was lost (its node or its owner died) and could not be rebuilt."""


class FailureBudgetExceeded(RayRunnablesError):
    """More items failed than ``max_failures`` allows: the batch stopped submitting and cancelled what ran.

    ``failed``: how many items had failed; ``done``: how many results (values and errors) were handed out
    before it stopped. The last failure is the ``__cause__``."""

    def __init__(self, message: str, failed: int, done: int) -> None:
        super().__init__(message)
        self.failed, self.done = failed, done


class RateLimitTimeout(RayRunnablesError, TimeoutError):
    """A rate-limited step's provider kept answering "too many requests" past ``max_wait`` seconds of pauses.
    The provider's last error is the ``__cause__``."""


class UnhashableInputError(RayRunnablesError, TypeError):
    """A cached step (``with_cache``) got an input it cannot hash canonically (an object of a class it does
    not know): give ``with_cache(key=...)`` to say what identifies the input, or ``on_unhashable="miss"``."""


def deadline_error(path: str, seconds: float) -> TimeoutError:
    """The built-in ``TimeoutError`` of a step that gave no result within ``seconds``, naming the step."""
    return attach_step(TimeoutError(f"{path}: no result within {seconds:g} s"), path)


class RemoteTraceback(Exception):
    """Carries the traceback text of a failure in another process; set as ``__cause__``."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


_PATH_ATTR = "rayrunnables_step"
_INDEX_ATTR = "rayrunnables_index"


def attach_step(exc: E, path: str, index: int | None = None) -> E:
    """Record the innermost step path (and item index) on ``exc`` once; outer frames keep it."""
    if getattr(exc, _PATH_ATTR, None) is None:
        try:
            setattr(exc, _PATH_ATTR, path)
        except (AttributeError, TypeError):  # exceptions with __slots__: nothing to attach to
            return exc
        if hasattr(exc, "add_note"):
            exc.add_note(f"in step: {path}")
    if index is not None and getattr(exc, _INDEX_ATTR, None) is None:
        try:
            setattr(exc, _INDEX_ATTR, index)
        except (AttributeError, TypeError):
            pass
        else:
            if hasattr(exc, "add_note"):
                exc.add_note(f"for item index: {index}")
    return exc


def step_path_of(exc: BaseException) -> str | None:
    """The path of the step that raised ``exc``, e.g. ``parallel['context'] > step 2 'embed'``."""
    value: Any = getattr(exc, _PATH_ATTR, None)
    return value


def item_index_of(exc: BaseException) -> int | None:
    """The index of the batch/map item whose run raised ``exc``, when known."""
    value: Any = getattr(exc, _INDEX_ATTR, None)
    return value


def rebuild_error(cls: type[E], args: tuple[Any, ...], state: dict[str, Any]) -> E:
    """An exception of ``cls`` made without calling its constructor, its ``args`` and attributes restored.

    pickle and ``copy`` rebuild an exception as ``cls(*args)``, which fails for a class whose constructor
    takes other arguments (openai's ``RateLimitError(message, *, response, body)``); this does not."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    vars(exc).update(state)
    return exc


def copy_error(exc: E) -> E:
    """A shallow copy of ``exc`` (each item's own error when one call failed for a whole chunk): as
    ``copy.copy`` makes it, or, for a class whose constructor cannot be called again, ``rebuild_error``'s.
    Its notes are its own list, so a note added to the copy is not added to the original."""
    try:
        twin = copy.copy(exc)
        if type(twin) is not type(exc):
            raise TypeError(type(twin))
    except Exception:
        twin = rebuild_error(type(exc), exc.args, dict(vars(exc)))
    notes = vars(twin).get("__notes__")
    if isinstance(notes, list):
        vars(twin)["__notes__"] = list(notes)
    return twin
