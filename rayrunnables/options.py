"""Per-step Ray options (``.with_options``): checked at the call, so a typo fails before anything runs."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real
from typing import Any

from .errors import OptionsError

__all__ = ["RAY_OPTIONS", "OUR_OPTIONS", "validate_options"]

#: Ray's own task option names, passed straight to ``ray.remote(...).options(...)``.
RAY_OPTIONS = frozenset(
    {
        "num_cpus",
        "num_gpus",
        "memory",
        "resources",
        "max_retries",
        "retry_exceptions",
        "scheduling_strategy",
        "runtime_env",
        "accelerator_type",
        "label_selector",
    }
)
#: Options that are ours: ``io_bound`` runs the step where waiting is cheap instead of on a CPU slot.
#: ``speculative``/``speculative_after``: the step is safe to run twice, so a straggling item of a batch
#: gets one backup attempt (the scheduler's speculative execution, as Spark's ``spark.speculation``).
OUR_OPTIONS = frozenset({"io_bound", "speculative", "speculative_after"})


def _number(name: str, value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, Real) or value < 0:
        raise OptionsError(f"{where}.with_options: {name} must be a number >= 0, got {value!r}")


def validate_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    unknown = set(options) - RAY_OPTIONS - OUR_OPTIONS
    if unknown:
        raise OptionsError(
            f"{where}.with_options: unknown option(s) {sorted(unknown)}; "
            f"known options are {sorted(RAY_OPTIONS | OUR_OPTIONS)}"
        )
    for name in ("num_cpus", "num_gpus", "memory"):
        if name in options:
            _number(name, options[name], where)
    if "resources" in options:
        res = options["resources"]
        if not isinstance(res, Mapping) or not all(isinstance(k, str) for k in res):
            raise OptionsError(f"{where}.with_options: resources must be a dict of name -> amount, got {res!r}")
        for key, amount in res.items():
            _number(f"resources[{key!r}]", amount, where)
    if "max_retries" in options:
        mr = options["max_retries"]
        if isinstance(mr, bool) or not isinstance(mr, int) or mr < -1:
            raise OptionsError(f"{where}.with_options: max_retries must be an int >= -1, got {mr!r}")
    if "retry_exceptions" in options:
        re_ = options["retry_exceptions"]
        ok = isinstance(re_, bool) or (
            isinstance(re_, (list, tuple)) and all(isinstance(t, type) and issubclass(t, BaseException) for t in re_)
        )
        if not ok:
            raise OptionsError(
                f"{where}.with_options: retry_exceptions must be a bool or a list of exception types, got {re_!r}"
            )
    if "runtime_env" in options and not isinstance(options["runtime_env"], Mapping):
        raise OptionsError(f"{where}.with_options: runtime_env must be a dict, got {options['runtime_env']!r}")
    if "io_bound" in options and not isinstance(options["io_bound"], bool):
        raise OptionsError(f"{where}.with_options: io_bound must be a bool, got {options['io_bound']!r}")
    if "speculative" in options and not isinstance(options["speculative"], bool):
        raise OptionsError(f"{where}.with_options: speculative must be a bool, got {options['speculative']!r}")
    if "speculative_after" in options:
        after = options["speculative_after"]
        if isinstance(after, bool) or not isinstance(after, (int, float)) or not 0 < after < float("inf"):
            raise OptionsError(f"{where}.with_options: speculative_after must be a positive number of seconds, "
                               f"got {after!r}")
    return dict(options)
