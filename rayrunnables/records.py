"""The records ``rayrunnables run`` writes, built in one place for the driver engine and the data engine.

An output record is ``{"index", "output"}`` (+ ``"id"``); an error record is
``{"index", "id", "step", "error_type", "message", "traceback"}``. With ``--usage`` both carry ``"usage"``
too: ``{"input_tokens", "output_tokens", "total_tokens"}`` of the item's own model calls (zeros when it
made none). Both engines build them here, so a file written by the driver and a shard written by a Ray
Data worker read the same.
"""

from __future__ import annotations

import re
import traceback
from typing import Any

from .errors import RemoteTraceback

__all__ = ["output_record", "error_record"]


def output_record(index: int, item_id: Any, output: Any, with_id: bool,
                  usage: dict[str, int] | None = None) -> dict[str, Any]:
    record = {"index": index, "id": item_id, "output": output}
    if not with_id:
        del record["id"]
    if usage is not None:
        record["usage"] = usage
    return record


def error_record(index: int, item_id: Any, step: str, exc: BaseException, prefix: str = "",
                 usage: dict[str, int] | None = None) -> dict[str, Any]:
    """One failed item (or malformed input line); ``prefix`` goes before the exception's message."""
    _drop_position_notes(exc)
    record = {
        "index": index,
        "id": item_id,
        "step": step,
        "error_type": type(exc).__name__,
        "message": prefix + _safe_str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    if usage is not None:
        record["usage"] = usage
    return record


def _drop_position_notes(exc: BaseException) -> None:
    """The scheduler notes "for item index: N" (N counts items sent to the chain); the record's index is the line."""
    notes = getattr(exc, "__notes__", None)
    if notes:
        setattr(exc, "__notes__", [note for note in notes if not note.startswith("for item index:")])  # noqa: B010
    if isinstance(exc.__cause__, RemoteTraceback):
        exc.__cause__.tb = _POSITION_NOTE.sub("", exc.__cause__.tb)


_POSITION_NOTE = re.compile(r"^for item index: \d+\n", re.MULTILINE)


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"
