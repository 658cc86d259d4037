"""Conformance, part 1: the calls (invoke, batch, stream, async, imap...) and the shapes of the algebra.

Every test takes ``backend``/``cfg`` and so runs on every backend. Step functions are module-level and
pure (they must pickle, and on Ray they run in another process, so they cannot report through driver
memory: whatever a test observes comes back in the outputs).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

import rayrunnables
import rayrunnables as rr
from rayrunnables import (
    InputTypeError,
    RunnableBranch,
    RunnableEach,
    RunnableLambda,
    RunnableParallel,
    RunnablePassthrough,
    RunnablePick,
    RunnableSequence,
    chain,
)

from . import backend_name, exported

# ---- pure step functions ---------------------------------------------------------------------------


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def neg(x: int) -> int:
    return -x


def ident(x: Any) -> Any:
    return x


def chars(text: str) -> Any:
    yield from text


def numbers(n: int) -> Any:
    yield from range(1, n + 1)


async def ainc(x: int) -> int:
    await asyncio.sleep(0)
    return x + 1


def is_positive(x: int) -> bool:
    return x > 0


def is_zero(x: int) -> bool:
    return x == 0


def add_items(d: dict[str, Any]) -> int:
    return d["a"] + d["b"]


def append_seen(d: dict[str, Any]) -> None:
    d["seen"].append("side effect")


def with_config_tags(x: Any, config: dict[str, Any]) -> Any:
    return (x, sorted(config.get("tags", [])))


def route(x: int) -> RunnableLambda[int, int]:
    """A function returning a runnable: that runnable is invoked on the same input."""
    return RunnableLambda(double) if x > 0 else RunnableLambda(neg)


@chain
def decorated(x: int) -> int:
    return x * 10


# ---- the calls ------------------------------------------------------------------------------------


def test_invoke_sequence(cfg: dict[str, Any]) -> None:
    assert (RunnableLambda(inc) | double).invoke(3, config=cfg) == 8


def test_invoke_without_config_uses_default_local() -> None:
    assert (RunnableLambda(inc) | double).invoke(3) == 8


def test_batch_keeps_order(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc) | double
    assert step.batch(list(range(20)), config=cfg) == [(i + 1) * 2 for i in range(20)]


def test_batch_empty(cfg: dict[str, Any]) -> None:
    assert RunnableLambda(inc).batch([], config=cfg) == []


def test_stream_generator_lambda_yields_chunks(cfg: dict[str, Any]) -> None:
    assert list(RunnableLambda(chars).stream("abc", config=cfg)) == ["a", "b", "c"]


def test_stream_last_step_of_sequence(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc) | numbers
    assert list(step.stream(2, config=cfg)) == [1, 2, 3]


def test_stream_non_generator_yields_one_chunk(cfg: dict[str, Any]) -> None:
    assert list((RunnableLambda(inc) | double).stream(1, config=cfg)) == [4]


def test_invoke_generator_lambda_concatenates_chunks(cfg: dict[str, Any]) -> None:
    assert RunnableLambda(chars).invoke("abc", config=cfg) == "abc"
    assert (RunnableLambda(inc) | numbers).invoke(3, config=cfg) == 1 + 2 + 3 + 4


def test_ainvoke(cfg: dict[str, Any]) -> None:
    assert asyncio.run((RunnableLambda(inc) | double).ainvoke(1, config=cfg)) == 4


def test_async_function_step(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ainc) | double
    assert step.invoke(1, config=cfg) == 4
    assert asyncio.run(step.ainvoke(2, config=cfg)) == 6
    assert step.batch([1, 2, 3], config=cfg) == [4, 6, 8]


def test_abatch(cfg: dict[str, Any]) -> None:
    assert asyncio.run(RunnableLambda(double).abatch([1, 2, 3], config=cfg)) == [2, 4, 6]


def test_astream(cfg: dict[str, Any]) -> None:
    async def collect() -> list[str]:
        return [chunk async for chunk in RunnableLambda(chars).astream("xyz", config=cfg)]

    assert asyncio.run(collect()) == ["x", "y", "z"]


def test_batch_as_completed_yields_every_index_once(cfg: dict[str, Any]) -> None:
    pairs = list(RunnableLambda(double).batch_as_completed(list(range(12)), config=cfg))
    assert sorted(i for i, _ in pairs) == list(range(12))
    assert all(out == 2 * i for i, out in pairs)


def test_abatch_as_completed_yields_every_index_once(cfg: dict[str, Any]) -> None:
    async def collect() -> list[tuple[int, Any]]:
        return [pair async for pair in RunnableLambda(inc).abatch_as_completed(list(range(7)), config=cfg)]

    pairs = asyncio.run(collect())
    assert sorted(i for i, _ in pairs) == list(range(7))
    assert all(out == i + 1 for i, out in pairs)


def test_batch_as_completed_return_exceptions(cfg: dict[str, Any]) -> None:
    pairs = dict(RunnableLambda(inverse).batch_as_completed([1, 0, 2], config=cfg, return_exceptions=True))
    assert set(pairs) == {0, 1, 2}
    assert pairs[0] == 1.0 and pairs[2] == 0.5
    assert isinstance(pairs[1], ZeroDivisionError)


def inverse(x: int) -> float:
    return 1 / x


def test_imap_ordered_over_generator(cfg: dict[str, Any]) -> None:
    source = (i for i in range(25))
    assert list(RunnableLambda(double).imap(source, config=cfg)) == [2 * i for i in range(25)]


def test_imap_is_lazy_over_an_endless_generator(cfg: dict[str, Any]) -> None:
    outputs = RunnableLambda(double).imap(itertools.count(), config=cfg, chunk_size=2, max_in_flight=2)
    try:
        assert list(itertools.islice(outputs, 5)) == [0, 2, 4, 6, 8]
    finally:
        outputs.close()  # type: ignore[attr-defined]


def test_imap_as_completed_over_generator(cfg: dict[str, Any]) -> None:
    source = (i for i in range(15))
    pairs = list(RunnableLambda(inc).imap_as_completed(source, config=cfg))
    assert sorted(i for i, _ in pairs) == list(range(15))
    assert all(out == i + 1 for i, out in pairs)


def test_imap_as_completed_is_lazy_over_an_endless_generator(cfg: dict[str, Any]) -> None:
    pairs = RunnableLambda(inc).imap_as_completed(itertools.count(), config=cfg, chunk_size=1, max_in_flight=3)
    try:
        got = list(itertools.islice(pairs, 6))
    finally:
        pairs.close()  # type: ignore[attr-defined]
    assert len({i for i, _ in got}) == 6
    assert all(out == i + 1 for i, out in got)


# ---- composition ----------------------------------------------------------------------------------


def test_dict_on_the_left_of_pipe(cfg: dict[str, Any]) -> None:
    step = {"a": inc, "b": double} | RunnableLambda(add_items)
    assert isinstance(step, RunnableSequence)
    assert step.invoke(5, config=cfg) == 6 + 10


def test_callable_on_the_left_of_pipe(cfg: dict[str, Any]) -> None:
    step = inc | RunnableLambda(double)
    assert step.invoke(1, config=cfg) == 4


def test_callable_and_dict_on_the_right_of_pipe(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc) | double | {"x": ident, "y": neg}
    assert step.invoke(1, config=cfg) == {"x": 4, "y": -4}


def test_pipe_method(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(inc).pipe(double, {"v": ident})
    assert step.invoke(2, config=cfg) == {"v": 6}


def test_chain_decorator(cfg: dict[str, Any]) -> None:
    assert isinstance(decorated, RunnableLambda)
    assert decorated.get_name() == "decorated"
    assert (decorated | inc).invoke(2, config=cfg) == 21


def test_parallel_with_kwargs_and_nested_dicts(cfg: dict[str, Any]) -> None:
    step = RunnableParallel(a=inc, nested={"b": double, "deeper": {"c": neg}}, same=RunnablePassthrough())
    assert step.invoke(3, config=cfg) == {"a": 4, "nested": {"b": 6, "deeper": {"c": -3}}, "same": 3}


def test_parallel_from_dict_and_kwargs_merged(cfg: dict[str, Any]) -> None:
    assert RunnableParallel({"a": inc}, b=double).invoke(1, config=cfg) == {"a": 2, "b": 2}


def test_non_coercible_dict_value_names_the_key() -> None:
    with pytest.raises(InputTypeError, match=r"parallel\['bad'\]"):
        _ = {"good": inc, "bad": 42} | RunnableLambda(ident)
    with pytest.raises(TypeError, match="bad"):
        RunnableParallel(good=inc, bad=3.5)


def test_function_with_config_param(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(with_config_tags)
    assert step.invoke(1, config={**cfg, "tags": ["t1"]}) == (1, ["t1"])


def test_function_returning_a_runnable_is_invoked(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(route)
    assert step.invoke(4, config=cfg) == 8
    assert step.invoke(-4, config=cfg) == 4
    assert step.batch([1, -1], config=cfg) == [2, 1]


# ---- passthrough, assign, pick --------------------------------------------------------------------


def test_passthrough_returns_its_input(cfg: dict[str, Any]) -> None:
    assert RunnablePassthrough().invoke({"k": [1]}, config=cfg) == {"k": [1]}
    assert (RunnableLambda(inc) | RunnablePassthrough()).invoke(1, config=cfg) == 2


def test_passthrough_func_runs_for_its_side_effect(cfg: dict[str, Any]) -> None:
    caller_input = {"seen": []}
    out = RunnablePassthrough(append_seen).invoke(caller_input, config=cfg)
    assert out == {"seen": ["side effect"]}  # the func ran on the value that is passed through
    assert caller_input == {"seen": []}  # ... and the caller's object was not touched


def test_passthrough_assign(cfg: dict[str, Any]) -> None:
    step = RunnablePassthrough.assign(total=add_items, echo=RunnablePick("a"))
    assert step.invoke({"a": 1, "b": 2}, config=cfg) == {"a": 1, "b": 2, "total": 3, "echo": 1}


def test_runnable_assign_method(cfg: dict[str, Any]) -> None:
    step = RunnableParallel(a=ident, b=double).assign(total=add_items)
    assert step.invoke(2, config=cfg) == {"a": 2, "b": 4, "total": 6}


def test_pick_str_and_list(cfg: dict[str, Any]) -> None:
    data = {"a": 1, "b": 2, "c": 3}
    assert RunnablePick("b").invoke(data, config=cfg) == 2
    assert RunnablePick(["a", "c"]).invoke(data, config=cfg) == {"a": 1, "c": 3}
    assert RunnablePassthrough().pick("a").invoke(data, config=cfg) == 1


def test_pick_missing_keys(cfg: dict[str, Any]) -> None:
    data = {"a": 1}
    assert RunnablePick("zzz").invoke(data, config=cfg) is None
    assert RunnablePick(["a", "zzz"]).invoke(data, config=cfg) == {"a": 1}


@pytest.mark.parametrize(
    ("step", "label"),
    [
        (RunnableLambda(inc) | RunnablePick("a"), "pick 'a'"),
        (RunnableLambda(inc) | RunnablePick(["a", "b"]), "pick ['a', 'b']"),
        (RunnableLambda(inc) | RunnablePassthrough.assign(x=ident), "assign"),
        (RunnablePick("a"), "pick 'a'"),
    ],
    ids=["pick-str", "pick-list", "assign", "pick-top-level"],
)
def test_non_dict_input_to_pick_or_assign(cfg: dict[str, Any], step: Any, label: str) -> None:
    with pytest.raises(InputTypeError) as info:
        step.invoke(1, config=cfg)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, rayrunnables.RayRunnablesError)
    assert label in str(info.value)
    assert label in (rayrunnables.step_path_of(info.value) or "")


# ---- map ------------------------------------------------------------------------------------------


def test_map_keeps_order(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(double).map()
    assert isinstance(step, RunnableEach)
    assert step.invoke(list(range(30)), config=cfg) == [2 * i for i in range(30)]
    assert step.invoke([], config=cfg) == []


def test_map_inside_sequence(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(lambda n: list(range(n))) | RunnableLambda(inc).map() | sum
    assert step.invoke(4, config=cfg) == 1 + 2 + 3 + 4


@pytest.mark.parametrize("bad", [7, "abc", {"a": 1}], ids=["int", "str", "dict"])
def test_map_non_list_input(cfg: dict[str, Any], bad: Any) -> None:
    with pytest.raises(InputTypeError, match=r"\.map\(\) needs a list"):
        RunnableLambda(inc).map().invoke(bad, config=cfg)


def test_map_non_list_input_names_the_step_path(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(ident) | {"each": RunnableLambda(inc).map()}
    with pytest.raises(InputTypeError) as info:
        step.invoke(5, config=cfg)
    assert "parallel['each']" in str(info.value)
    assert "parallel['each']" in (rayrunnables.step_path_of(info.value) or "")


# ---- branch ---------------------------------------------------------------------------------------


def test_branch_first_matching_condition_and_default(cfg: dict[str, Any]) -> None:
    step = RunnableBranch(
        (is_positive, double),
        (is_zero, RunnableLambda(lambda x: "zero")),
        (lambda x: x > -100, neg),  # also true for the inputs above: must not win over earlier pairs
        RunnableLambda(lambda x: "default"),
    )
    assert step.invoke(5, config=cfg) == 10
    assert step.invoke(0, config=cfg) == "zero"
    assert step.invoke(-5, config=cfg) == 5
    assert step.invoke(-500, config=cfg) == "default"
    assert step.batch([1, 0, -1, -1000], config=cfg) == [2, "zero", 1, "default"]


def test_branch_needs_a_default() -> None:
    with pytest.raises(TypeError):
        RunnableBranch(double)


# ---- numpy arrays stay writable (Ray hands out read-only views of its object store) ----------------


def vectors(n: int) -> dict[str, Any]:
    import numpy as np

    return {"small": np.ones(3), "big": np.ones(50_000), "nested": [(np.ones(2), "tag")]}


def scale_in_place(value: dict[str, Any]) -> dict[str, Any]:
    value["small"] *= 2  # in place: fails on a read-only array
    value["big"] /= 4
    value["nested"][0][0][:] = 7
    return value


def scale_dicts_in_place(value: Any) -> Any:
    return scale_in_place(value) if isinstance(value, dict) else value


def _all_writable(value: dict[str, Any]) -> bool:
    return bool(value["small"].flags.writeable and value["big"].flags.writeable
                and value["nested"][0][0].flags.writeable)


def test_numpy_outputs_are_writable(cfg: dict[str, Any]) -> None:
    step = RunnableLambda(vectors)
    assert _all_writable(step.invoke(1, config=cfg))
    assert all(_all_writable(v) for v in step.batch([1, 2], config=cfg))
    assert all(_all_writable(v) for v in step.map().invoke([1, 2], config=cfg))
    assert all(_all_writable(v) for v in step.imap(iter([1, 2]), config=cfg))


def test_a_step_may_change_an_array_it_received_in_place(cfg: dict[str, Any]) -> None:
    # different options: on Ray the second step runs in its own task and gets the first's output by ref
    chain = RunnableLambda(vectors).with_options(num_cpus=1) | RunnableLambda(scale_in_place)
    out = chain.invoke(1, config=cfg)
    assert out["small"].tolist() == [2.0, 2.0, 2.0]
    assert float(out["big"][0]) == 0.25
    assert out["nested"][0][0].tolist() == [7.0, 7.0]
    fanned = {"a": RunnableLambda(vectors), "b": RunnableLambda(vectors)} | RunnableLambda(
        lambda d: scale_in_place(d["a"])
    )
    assert fanned.invoke(1, config=cfg)["small"].tolist() == [2.0, 2.0, 2.0]


def test_arrays_shared_with_siblings_are_read_only(cfg: dict[str, Any]) -> None:
    """``.map()`` items, batch items, fan-out branches and the chain's input share arrays as read-only
    views (nothing copied); writing into one is a clear error naming the step, on every backend."""
    # only item 0 holds arrays, so it is the one failure whichever worker answers first
    mapped = RunnableLambda(lambda n: [vectors(0), *range(1, n)]).with_options(num_cpus=1) | RunnableLambda(
        scale_dicts_in_place, name="scale_in_place"
    ).map()
    with pytest.raises(rr.ReadOnlyInputError, match=r"lambda 'scale_in_place'.*copy first") as info:
        mapped.invoke(3, config=cfg)
    assert isinstance(info.value, ValueError)
    assert rr.step_path_of(info.value) == "step 2 > map > lambda 'scale_in_place'"
    assert rr.item_index_of(info.value) == 0
    fanned = RunnableParallel({"a": scale_in_place, "b": lambda d: float(d["big"].sum())})
    with pytest.raises(rr.ReadOnlyInputError, match="parallel\\['a'\\]"):
        fanned.invoke(vectors(0), config=cfg)
    outs = RunnableLambda(scale_in_place).batch([vectors(0), 1], config=cfg, return_exceptions=True)
    assert all(isinstance(o, rr.ReadOnlyInputError) for o in outs[:1]) and isinstance(outs[1], TypeError)


def test_shared_arrays_are_views_and_what_the_caller_gets_is_writable(cfg: dict[str, Any]) -> None:
    import numpy as np

    seen: list[bool] = []

    def reads(d: dict[str, Any]) -> float:
        seen.append(bool(d["big"].flags.writeable))
        return float(d["big"][:10].sum())

    data = vectors(0)
    out = RunnableParallel({"a": reads, "b": reads, "same": RunnablePassthrough()}).invoke(data, config=cfg)
    assert out["a"] == out["b"] == 10.0
    if backend_name(cfg) == "local":
        assert seen == [False, False]
        assert np.shares_memory(out["same"]["big"], data["big"])  # a view of the caller's array, not a copy
    assert out["same"]["big"].flags.writeable and data["big"].flags.writeable
    out["same"]["small"][0] = 5.0  # the caller may write into what it got back


__all__ = exported(globals())
