"""with_rate_limit on every backend: 429s absorbed (not counted as retries), a clear error past max_wait,
bad token estimates named by step. Pacing against a real provider-like server: tests/test_llm_limits.py."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

from rayrunnables import OptionsError, RateLimitTimeout, RunnableLambda, item_index_of, step_path_of

from ..steps.provider import always_busy, busy_once, not_an_int
from . import exported


def test_a_429_is_absorbed_and_the_item_runs_again(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(functools.partial(busy_once, str(tmp_path)), name="call_model")
    limited = step.with_rate_limit(requests_per_second=200, burst=5).with_retry(stop_after_attempt=1)
    assert limited.batch(list(range(8)), cfg) == [i * 10 for i in range(8)]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.called" for i in range(8))
    assert (RunnableLambda(lambda x: x) | limited).invoke(9, cfg) == 90


def test_past_max_wait_a_clear_error_and_the_other_items_kept(cfg: dict[str, Any]) -> None:
    limited = RunnableLambda(always_busy, name="call_model").with_rate_limit(max_wait=0.5, key="busy-" + cfg["backend"])
    out = limited.batch(list(range(6)), cfg, return_exceptions=True)
    assert [o for i, o in enumerate(out) if i != 3] == [0, 10, 20, 40, 50]
    err = out[3]
    assert isinstance(err, RateLimitTimeout) and isinstance(err, TimeoutError)
    assert "call_model" in str(err) and "busy, always" in str(err)
    assert step_path_of(err) is not None and "call_model" in (step_path_of(err) or "")
    assert item_index_of(err) == 3
    with pytest.raises(RateLimitTimeout, match="call_model"):
        limited.invoke(3, cfg)


def test_a_bad_token_estimate_names_the_step(cfg: dict[str, Any]) -> None:
    limited = RunnableLambda(str, name="call_model").with_rate_limit(tokens_per_minute=1000, tokens=not_an_int)
    out = limited.batch([1, 2], cfg, return_exceptions=True)
    assert all(isinstance(o, OptionsError) and "call_model" in str(o) and "'many'" in str(o) for o in out)


def test_explain_says_how_a_step_is_paced(backend: str) -> None:
    declared = RunnableLambda(str, name="call_model").with_rate_limit(requests_per_minute=500, tokens_per_minute=9000)
    assert "paced: 500 requests/min, 9000 tokens/min" in declared.explain(backend)
    assert "learned from 429s" in RunnableLambda(str).with_rate_limit().explain(backend)


__all__ = exported(globals())
