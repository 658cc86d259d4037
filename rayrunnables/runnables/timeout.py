"""``runnable.with_timeout(seconds)``: a call that takes longer raises the built-in ``TimeoutError``.

The in-process meaning (the reference, and what runs wherever the timeout sits inside a chain): the
wrapped call runs in a daemon thread of its own while the caller waits at most ``seconds``. At the
deadline the call's cancel token is set (a step may cooperate: ``rayrunnables.cancel_requested()``) and
the caller gets ``TimeoutError`` at once; a Python thread cannot be killed, so the abandoned call runs on
in the background until it returns (a daemon thread never holds up the process's exit).

When the timeout is the outermost step of a ``batch``/``imap`` (and ``rayrunnables run --timeout``), the
scheduler also holds each item to its deadline, so a backend that can stop work in another process
does: on Ray the item's task is cancelled, then force-cancelled (its worker replaced) after a grace.
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..context import CancelToken, RunContext
from ..engine.process_state import STATE
from ..errors import OptionsError, deadline_error
from .base import Input, Output, Runnable

__all__ = ["RunnableTimeout", "cancel_requested", "check_timeout", "interrupt_on_deadline"]

_current = threading.local()


def interrupt_on_deadline() -> None:
    """Called in a worker process that is ours to interrupt (a Ray worker): a timed call on the main
    thread then runs there, and is stopped at its deadline by SIGINT (``KeyboardInterrupt``, as Ray's own
    cancel does), which ends a sleep, a Python loop or a wait on a socket. Never in the caller's process."""
    STATE.interruptible_worker = True


def _main_thread_interruptible() -> bool:
    return (
        STATE.interruptible_worker
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )


def cancel_requested() -> bool:
    """Whether the timed call running in this thread was given up (its deadline passed): a step that
    loops or polls can check it and return early, which is the only way to stop a thread in-process."""
    token: CancelToken | None = getattr(_current, "token", None)
    return token is not None and token.is_set()


def check_timeout(seconds: Any, where: str) -> float:
    """``seconds`` as a float, or ``OptionsError`` (a ``ValueError``) naming the step."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise OptionsError(f"{where}.with_timeout: seconds must be a positive number, got {seconds!r}")
    return float(seconds)


@dataclass(frozen=True, eq=False)
class RunnableTimeout(Runnable[Input, Output]):
    """``bound``, each call of which must end within ``seconds`` or raise ``TimeoutError``."""

    bound: Runnable[Input, Output]
    seconds: float
    name: str | None = None

    def label(self) -> str:
        return self.named(f"timeout({self.bound.label()})")

    def children(self) -> list[tuple[str, Runnable[Any, Any]]]:
        return [("", self.bound)]

    def cache_identity(self) -> Runnable[Input, Output]:
        """A deadline decides whether a call fails, and failures are not cached (``with_cache``)."""
        return self.bound

    def reports_run(self) -> bool:
        """A deadline changes how its step runs, not what it is: the step's own run is the one reported."""
        return False

    @property
    def item_timeout(self) -> float:
        """Read by the scheduler: the deadline of every item of a batch of this step."""
        return self.seconds

    @property
    def speculation(self) -> Any:
        """Straggler backups declared on the bound step (``with_options(speculative=...)``) hold for us too."""
        return self.bound.speculation

    def error(self, ctx: RunContext) -> TimeoutError:
        return deadline_error(ctx.child(self.label()).path_str, self.seconds)

    def _invoke(self, input: Input, ctx: RunContext) -> Output:
        ctx.check_cancelled()
        if _main_thread_interruptible():
            return self._interrupting(input, ctx)
        inner = ctx.fork()
        box: list[Any] = []

        def call() -> None:
            _current.token = inner.cancel
            try:
                box.append((True, self.bound._invoke(input, inner)))
            except BaseException as exc:
                box.append((False, exc))

        thread = threading.Thread(target=call, name=f"rayrunnables-timeout {self.bound.label()}"[:60], daemon=True)
        thread.start()
        thread.join(self.seconds)
        if not box:
            inner.cancel.cancel()  # cooperative stop; the thread itself cannot be killed
            raise self.error(ctx)
        ok, value = box[0]
        if ok:
            return value  # type: ignore[no-any-return]
        raise value

    def _interrupting(self, input: Input, ctx: RunContext) -> Output:
        """The call on this (main) thread, a watchdog sending SIGINT to it at the deadline (the signal ends
        a sleep or a wait where ``ray.cancel``'s interrupt would only land once the sleep is over). The lock
        makes "finished" and "interrupted" exclusive: a signal is only sent while the call still runs."""
        lock = threading.Lock()
        state = {"finished": False, "fired": False}
        main = threading.main_thread().ident
        assert main is not None

        def watchdog() -> None:
            with lock:
                if not state["finished"]:
                    state["fired"] = True
                    signal.pthread_kill(main, signal.SIGINT)

        # Ray keeps SIGINT blocked on a worker's main thread: open it for the timed call only
        mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        timer = threading.Timer(self.seconds, watchdog)
        timer.daemon = True
        timer.start()
        try:
            output = self.bound._invoke(input, ctx)
            with lock:
                state["finished"] = True
            return output
        except KeyboardInterrupt:
            if state["fired"]:  # ours, not a cancel from outside
                raise self.error(ctx) from None
            raise
        finally:
            timer.cancel()
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _transform(self, chunks: Iterator[Any], ctx: RunContext) -> Iterator[Output]:
        """Not streamed: the deadline covers the whole call, which then yields its output once."""
        from .chunks import gather

        yield self._invoke(gather(chunks), ctx)
