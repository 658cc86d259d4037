"""Conformance, part 2: retry, fallbacks, config, listeners, names, options, explain, recursion.

Attempts are counted in a file under ``tmp_path`` (each attempt appends one line), which every process
on this machine sees: a counter in driver memory would not see the attempts made in a Ray worker.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import rayrunnables
from rayrunnables import (
    ConfigError,
    OptionsError,
    RunnableBranch,
    RunnableLambda,
    RunnableParallel,
    RunnableRetry,
    RunnableWithFallbacks,
    StepRecursionError,
)

from . import backend_name, exported

# ---- pure step functions (side effects only through the file system) -----------------------------


class Flaky(Exception):
    pass


def _attempt(path: str) -> int:
    with open(path, "a") as f:
        f.write("x\n")
    with open(path) as f:
        return len(f.read().splitlines())


def fail_until(d: dict[str, Any]) -> str:
    """Raise ``d['exc']`` on attempts 1..fails, then succeed; returns the attempt number."""
    n = _attempt(d["log"])
    if n <= d["fails"]:
        raise d["exc"](f"attempt {n}")
    return f"ok at attempt {n}"


def inc(x: int) -> int:
    return x + 1


def ident(x: Any) -> Any:
    return x


def fail_value(x: Any) -> Any:
    raise ValueError(f"primary failed on {x!r}")


def fail_key(x: Any) -> Any:
    raise KeyError("fallback failed")


def describe_error(d: dict[str, Any]) -> str:
    return f"{type(d['error']).__name__}: {d['error']} (q={d['q']})"


def config_seen(x: Any, config: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": sorted(config.get("tags", [])),
        "metadata": config.get("metadata", {}),
        "run_name": config.get("run_name"),
    }


def recurse(x: int) -> RunnableLambda[int, Any]:
    return RunnableLambda(recurse)


def countdown(n: int) -> Any:
    return n if n <= 0 else RunnableLambda(lambda m: countdown_step(m))


def countdown_step(m: int) -> int:
    return m - 1


def lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


# ---- with_retry -----------------------------------------------------------------------------------


def test_retry_succeeds_after_failures(cfg: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    step = RunnableLambda(fail_until).with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
    assert isinstance(step, RunnableRetry)
    out = step.invoke({"log": str(log), "fails": 2, "exc": Flaky}, config=cfg)
    assert out == "ok at attempt 3"
    assert lines(log) == 3


def test_retry_exhausted_reraises_original_type(cfg: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    step = RunnableLambda(fail_until).with_retry(stop_after_attempt=3, wait_exponential_jitter=False)
    with pytest.raises(Flaky, match="attempt 3"):
        step.invoke({"log": str(log), "fails": 99, "exc": Flaky}, config=cfg)
    assert lines(log) == 3


def test_retry_if_exception_type_not_matching_does_not_retry(cfg: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "attempts"
    step = RunnableLambda(fail_until).with_retry(
        retry_if_exception_type=(Flaky,), stop_after_attempt=5, wait_exponential_jitter=False
    )
    with pytest.raises(ValueError, match="attempt 1"):
        step.invoke({"log": str(log), "fails": 99, "exc": ValueError}, config=cfg)
    assert lines(log) == 1


def test_retry_inside_a_sequence_and_batch(cfg: dict[str, Any], tmp_path: Path) -> None:
    step = RunnableLambda(ident) | RunnableLambda(fail_until).with_retry(
        stop_after_attempt=2, wait_exponential_jitter=False
    )
    items = [{"log": str(tmp_path / f"a{i}"), "fails": 1, "exc": Flaky} for i in range(3)]
    assert step.batch(items, config=cfg) == ["ok at attempt 2"] * 3


def test_retry_rejects_bad_attempt_count() -> None:
    with pytest.raises(TypeError):
        RunnableLambda(inc).with_retry(stop_after_attempt=0)


# ---- with_fallbacks -------------------------------------------------------------------------------


def test_fallback_used(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_value).with_fallbacks([RunnableLambda(inc)])
    assert isinstance(step, RunnableWithFallbacks)
    assert step.invoke(1, config=cfg) == 2
    assert step.batch([1, 2], config=cfg) == [2, 3]


def test_fallback_not_matching_reraises(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_value).with_fallbacks([RunnableLambda(inc)], exceptions_to_handle=(KeyError,))
    with pytest.raises(ValueError, match="primary failed"):
        step.invoke(1, config=cfg)


def test_fallback_exception_key_passes_the_exception(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_value).with_fallbacks([RunnableLambda(describe_error)], exception_key="error")
    out = step.invoke({"q": 7}, config=cfg)
    assert out.startswith("ValueError: primary failed")
    assert out.endswith("(q=7)")


def test_fallbacks_all_fail_raise_the_first_error(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_value).with_fallbacks([RunnableLambda(fail_key), RunnableLambda(fail_key)])
    with pytest.raises(ValueError, match="primary failed"):
        step.invoke(1, config=cfg)


def test_second_fallback_used_when_first_fails(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(fail_value).with_fallbacks([RunnableLambda(fail_key), RunnableLambda(inc)])
    assert step.invoke(1, config=cfg) == 2


# ---- config -------------------------------------------------------------------------------------


def test_with_config_reaches_the_function(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(config_seen).with_config(tags=["bound"], metadata={"m": 1}, run_name="named-run")
    assert step.invoke(0, config={**cfg, "tags": ["call"], "metadata": {"c": 2}}) == {
        "tags": ["bound", "call"],
        "metadata": {"c": 2, "m": 1},
        "run_name": "named-run",
    }


def test_with_config_inside_a_chain(cfg: dict[str, Any]) -> None:
    inner = RunnableLambda(config_seen).with_config(tags=["inner"])
    step = RunnableLambda(ident) | {"a": inner, "b": RunnableLambda(config_seen)}
    out = step.invoke(0, config={**cfg, "tags": ["outer"]})
    assert out["a"]["tags"] == ["inner", "outer"]
    assert out["b"]["tags"] == ["outer"]


@pytest.mark.parametrize(
    "bad",
    [{"max_concurency": 2}, {"tags": "not-a-list"}, {"max_concurrency": 0}, {"recursion_limit": "5"}],
    ids=["unknown-key", "tags-type", "max-concurrency-0", "recursion-limit-type"],
)
def test_bad_config_raises_config_error_at_the_call(cfg: dict[str, Any], bad: dict[str, Any]) -> None:
    step = RunnableLambda(inc)
    config = {**cfg, **bad}
    with pytest.raises(ConfigError):
        step.invoke(1, config=config)
    with pytest.raises(ConfigError):
        step.batch([1, 2], config=config)
    with pytest.raises(ConfigError):
        asyncio.run(step.ainvoke(1, config=config))
    with pytest.raises(ConfigError):
        asyncio.run(step.abatch([1], config=config))


def test_with_config_unknown_key_raises_at_with_config() -> None:
    with pytest.raises(ConfigError, match="max_concurency"):
        RunnableLambda(inc).with_config(max_concurency=2)


@pytest.mark.parametrize("method", ["stream", "batch_as_completed", "imap", "imap_as_completed"])
def test_bad_config_raises_at_the_call_of_lazy_methods(cfg: dict[str, Any], method: str) -> None:
    step = RunnableLambda(inc)
    arg: Any = 1 if method == "stream" else [1, 2]
    with pytest.raises(ConfigError):
        getattr(step, method)(arg, config={**cfg, "max_concurency": 2})  # not iterated


def test_recursion_limit(cfg: dict[str, Any]) -> None:
    with pytest.raises(StepRecursionError) as info:
        RunnableLambda(recurse).invoke(1, config={**cfg, "recursion_limit": 5})
    assert isinstance(info.value, RecursionError)
    assert "lambda 'recurse'" in str(info.value)


def test_recursion_below_the_limit_is_fine(cfg: dict[str, Any]) -> None:
    assert RunnableLambda(countdown).invoke(3, config={**cfg, "recursion_limit": 5}) == 2


# ---- with_options ---------------------------------------------------------------------------------


def test_with_options_unknown_name_raises_at_the_call() -> None:
    with pytest.raises(OptionsError, match="num_cpu"):
        RunnableLambda(inc).with_options(num_cpu=1)


@pytest.mark.parametrize(
    "bad",
    [{"num_cpus": -1}, {"num_gpus": "1"}, {"resources": ["x"]}, {"max_retries": 1.5}, {"io_bound": "yes"}],
    ids=["num_cpus", "num_gpus", "resources", "max_retries", "io_bound"],
)
def test_with_options_bad_value(bad: dict[str, Any]) -> None:
    with pytest.raises(OptionsError) as info:
        RunnableLambda(inc).with_options(**bad)
    assert isinstance(info.value, ValueError)
    assert next(iter(bad)) in str(info.value)


def test_with_options_runs_unchanged(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc).with_options(num_cpus=1, max_retries=0) | RunnableLambda(inc).with_options(io_bound=True)
    assert step.invoke(1, config=cfg) == 3
    assert step.batch([1, 2], config=cfg) == [3, 4]


# ---- listeners ------------------------------------------------------------------------------------


def test_with_listeners_start_and_end(cfg: dict[str, Any]) -> None:
    events: list[tuple[str, Any, Any, Any]] = []
    step = (RunnableLambda(inc) | RunnableLambda(inc)).with_listeners(
        on_start=lambda run: events.append(("start", run.inputs, run.outputs, run.error)),
        on_end=lambda run: events.append(("end", run.inputs, run.outputs, run.error)),
        on_error=lambda run: events.append(("error", run.inputs, run.outputs, run.error)),
    )
    assert step.invoke(1, config=cfg) == 3
    assert events == [("start", 1, None, None), ("end", 1, 3, None)]


def test_with_listeners_on_error(cfg: dict[str, Any]) -> None:
    runs: list[Any] = []
    step = RunnableLambda(fail_value).with_listeners(on_end=runs.append, on_error=runs.append)
    with pytest.raises(ValueError, match="primary failed"):
        step.invoke(5, config=cfg)
    assert len(runs) == 1
    assert runs[0].inputs == 5
    assert isinstance(runs[0].error, ValueError)
    assert runs[0].outputs is None


def test_with_listeners_in_batch(cfg: dict[str, Any], request: pytest.FixtureRequest) -> None:
    ends: list[tuple[Any, Any]] = []
    step = RunnableLambda(inc).with_listeners(on_end=lambda run: ends.append((run.inputs, run.outputs)))
    assert step.batch([1, 2, 3], config=cfg) == [2, 3, 4]
    assert sorted(ends) == [(1, 2), (2, 3), (3, 4)]


# ---- names and explain ----------------------------------------------------------------------------


def test_with_name_in_error_path(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc) | {"ctx": RunnableLambda(fail_value).with_name("embed")}
    with pytest.raises(ValueError) as info:
        step.invoke(1, config=cfg)
    path = rayrunnables.step_path_of(info.value) or ""
    assert "parallel['ctx']" in path
    assert "'embed'" in path


def test_with_name_of_a_subchain_in_error_path(cfg: dict[str, Any]) -> None:
    sub = (RunnableLambda(ident) | RunnableLambda(fail_value)).with_name("retrieve")
    step = RunnableLambda(ident) | {"ctx": sub}
    with pytest.raises(ValueError) as info:
        step.invoke(1, config=cfg)
    assert "retrieve" in (rayrunnables.step_path_of(info.value) or "")


def test_branch_with_name(cfg: dict[str, Any]) -> None:
    step = RunnableBranch((lambda x: x > 0, inc), ident).with_name("router")
    assert step.invoke(1, config=cfg) == 2
    assert "'router'" in step.explain()


def test_with_name_keeps_behaviour(cfg: dict[str, Any]) -> None:
    assert RunnableLambda(inc).with_name("n").invoke(1, config=cfg) == 2
    assert (RunnableLambda(inc) | inc).with_name("n").invoke(1, config=cfg) == 3
    assert RunnableParallel(a=inc).with_name("n").invoke(1, config=cfg) == {"a": 2}
    assert RunnableLambda(inc).map().with_name("n").invoke([1, 2], config=cfg) == [2, 3]
    assert RunnableLambda(inc).with_name("n").get_name() == "n"


def test_explain_lists_every_step_path_and_options(backend: str) -> None:
    step = (
        RunnableLambda(inc)
        | {
            "context": RunnableLambda(ident).with_name("retrieve") | RunnableLambda(inc).with_name("embed"),
            "question": RunnableLambda(ident).with_options(num_cpus=2, resources={"llm": 1}),
        }
        | RunnableLambda(inc).map().with_name("each")
    )
    text = step.explain(backend=backend)
    assert isinstance(text, str)
    for expected in [
        "step 1",
        "step 2",
        "step 3",
        "parallel['context']",
        "parallel['question']",
        "'retrieve'",
        "'embed'",
        "'each'",
        "lambda 'inc'",
        "num_cpus",
        "'llm'",
    ]:
        assert expected in text, f"{expected!r} missing from explain():\n{text}"


# ---- one config per input (LangChain's batch(inputs, [config, ...])) --------------------------------


def tag_user(x: int, config: dict[str, Any]) -> tuple[int, str, list[str]]:
    return x, config.get("metadata", {}).get("user", "-"), sorted(config.get("tags", []))


def per_item(cfg: dict[str, Any], users: list[str]) -> list[dict[str, Any]]:
    return [{**cfg, "metadata": {"user": u}, "tags": [f"t-{u}"]} for u in users]


def test_batch_with_one_config_per_input(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc) | RunnableLambda(tag_user)
    out = step.batch([1, 2, 3], per_item(cfg, ["a", "b", "c"]))
    assert out == [(2, "a", ["t-a"]), (3, "b", ["t-b"]), (4, "c", ["t-c"])]


def test_per_input_configs_reach_every_branch_and_merge_with_bindings(cfg: dict[str, Any]) -> None:
    step = RunnableParallel(
        plain=RunnableLambda(tag_user),
        bound=RunnableLambda(tag_user).with_config(tags=["bound"]),
    )
    out = step.batch([1, 2], per_item(cfg, ["a", "b"]))
    assert out == [
        {"plain": (1, "a", ["t-a"]), "bound": (1, "a", ["bound", "t-a"])},
        {"plain": (2, "b", ["t-b"]), "bound": (2, "b", ["bound", "t-b"])},
    ]


def test_per_input_configs_many_items_in_chunks(cfg: dict[str, Any]) -> None:
    users = [f"u{i % 7}" for i in range(300)]  # chunks mix items of the batch's config and their own
    users[0] = users[7] = "u0"
    out = RunnableLambda(tag_user).batch(list(range(300)), per_item(cfg, users))
    assert [user for _, user, _ in out] == users


def test_per_input_configs_in_batch_as_completed(cfg: dict[str, Any]) -> None:
    pairs = RunnableLambda(tag_user).batch_as_completed([1, 2], per_item(cfg, ["a", "b"]))
    assert sorted(pairs) == [(0, (1, "a", ["t-a"])), (1, (2, "b", ["t-b"]))]


def test_per_input_configs_in_abatch(cfg: dict[str, Any]) -> None:
    out = asyncio.run(RunnableLambda(tag_user).abatch([1, 2], per_item(cfg, ["a", "b"])))
    assert out == [(1, "a", ["t-a"]), (2, "b", ["t-b"])]


def test_per_input_configs_reach_listeners(cfg: dict[str, Any]) -> None:
    ends: list[tuple[Any, Any, Any]] = []
    step = RunnableLambda(inc).with_listeners(
        on_end=lambda run: ends.append((run.inputs, run.name, dict(run.metadata)))
    )
    configs = [{**cfg, "run_name": f"item{i}", "metadata": {"i": i}} for i in range(3)]
    assert step.batch([10, 20, 30], configs) == [11, 21, 31]
    assert sorted(ends) == [(10, "item0", {"i": 0}), (20, "item1", {"i": 1}), (30, "item2", {"i": 2})]


def test_per_input_configs_with_vectorized_step(cfg: dict[str, Any]) -> None:
    def users_of(xs: list[int], config: dict[str, Any]) -> list[str]:
        return [f"{x}:{config.get('metadata', {}).get('user', '-')}" for x in xs]

    step = RunnableLambda(users_of, batched=True)
    users = ["a"] * 100 + ["b"] * 50 + ["a"] * 50
    out = step.batch(list(range(200)), per_item(cfg, users))
    assert out == [f"{x}:{u}" for x, u in zip(range(200), users, strict=True)]


def test_per_input_config_failure_names_the_item_and_keeps_the_others(cfg: dict[str, Any]) -> None:
    def fail_for_b(x: int, config: dict[str, Any]) -> int:
        if config["metadata"]["user"] == "b":
            raise ValueError(f"no access for item {x}")
        return x

    out = RunnableLambda(fail_for_b).batch([1, 2, 3], per_item(cfg, ["a", "b", "c"]), return_exceptions=True)
    assert out[0] == 1 and out[2] == 3
    assert isinstance(out[1], ValueError)
    assert rayrunnables.item_index_of(out[1]) == 1


def test_per_input_configs_bad_input(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc)
    with pytest.raises(ValueError, match="2 configs for 3 inputs"):
        step.batch([1, 2, 3], [cfg, cfg])
    with pytest.raises(ConfigError, match=r"config\[1\]: unknown config key"):
        step.batch([1, 2], [cfg, {**cfg, "bogus": 1}])
    other = "ray" if backend_name(cfg) == "local" else "local"
    with pytest.raises(ConfigError, match="one batch runs on one backend"):
        step.batch([1, 2], [cfg, {**cfg, "backend": other}])
    with pytest.raises(ConfigError, match="a dict or a list of dicts"):
        step.batch([1, 2], "local")  # type: ignore[arg-type]
    assert step.batch([1, 2], [cfg, dict(cfg)]) == [2, 3]  # equal configs: the plain path
    assert step.batch([], []) == []


__all__ = exported(globals())
