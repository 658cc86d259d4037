"""Conformance, part 4: a client's exception crosses processes whole.

pickle rebuilds an exception as ``cls(*exc.args)``, which fails for classes whose constructor takes
keyword-only arguments: openai's ``APIStatusError`` family, httpx's ``HTTPStatusError``, the shaped
``StatusError`` below. On every backend such an error arrives with its type, its attributes (status
code, body, the response's headers), its step path and its item index: on ``invoke``, ``stream``,
``batch`` (raised, and with ``return_exceptions=True``) and a ``.map()`` inside a chain. One that cannot
be rebuilt at all arrives as an ``UnportableError`` naming its type. Exceptions that pickle already keep
their own way of pickling.

The steps and the exception classes live at module level, so they pickle by reference.
"""

from __future__ import annotations

import builtins
import copy
import pickle
import threading
from collections.abc import Callable
from typing import Any
from uuid import UUID

import httpx
import openai
import pytest
from langchain_core.callbacks import BaseCallbackHandler

import rayrunnables
from rayrunnables import RunnableActor, RunnableLambda, UnportableError

from . import backend_name, exported

BAD = 3
BODY = {"error": {"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}}
URL = "http://127.0.0.1/v1/chat/completions"

# ---- exceptions shaped like a client's, and steps raising them --------------------------------------


class LiveResponse:
    """Shaped like an HTTP client's response that holds its live connection (a lock stands in for it):
    it cannot be pickled."""

    def __init__(self, status_code: int, headers: dict[str, str]) -> None:
        self.status_code = status_code
        self.headers = headers
        self.connection = threading.Lock()


class StatusError(Exception):
    """Shaped like openai's ``APIStatusError``: keyword-only constructor arguments, a response, a body."""

    def __init__(self, message: str, *, response: Any, body: dict[str, Any]) -> None:
        super().__init__(message)
        self.response = response
        self.status_code = response.status_code
        self.body = body


class Unportable(Exception):
    """Cannot be made without its keyword-only token, not even by ``cls.__new__``; refuses pickling."""

    def __new__(cls, message: str, *, token: str) -> Unportable:
        return super().__new__(cls, message)

    def __init__(self, message: str, *, token: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()

    def __reduce__(self) -> Any:
        raise TypeError("Unportable refuses to be pickled")


class OwnReduce(Exception):
    """Pickles already, its own way: it must keep that way."""

    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.code = code

    def __reduce__(self) -> Any:
        return (rebuild_own_reduce, (self.code,))


def rebuild_own_reduce(code: int) -> OwnReduce:
    exc = OwnReduce(code)
    exc.rebuilt_by_its_reduce = True  # type: ignore[attr-defined]
    return exc


def request() -> httpx.Request:
    return httpx.Request("POST", URL)


def response(status: int) -> httpx.Response:
    return httpx.Response(status, headers={"retry-after": "2"}, json=BODY, request=request())


def shaped_error() -> StatusError:
    return StatusError("rate limited", response=LiveResponse(429, {"retry-after": "2"}), body=BODY)


def openai_error() -> openai.RateLimitError:
    return openai.RateLimitError("rate limited", response=response(429), body=BODY)


def httpx_error() -> httpx.HTTPStatusError:
    return httpx.HTTPStatusError("server error", request=request(), response=response(503))


def raise_shaped(x: int) -> int:
    if x == BAD:
        raise shaped_error()
    return x * 10


def raise_openai(x: int) -> int:
    if x == BAD:
        raise openai_error()
    return x * 10


def raise_httpx(x: int) -> int:
    if x == BAD:
        raise httpx_error()
    return x * 10


def raise_unportable(x: int) -> int:
    if x == BAD:
        raise Unportable("the token is gone", token="secret")
    return x * 10


def raise_own_reduce(x: int) -> int:
    if x == BAD:
        raise OwnReduce(7)
    return x * 10


def ident(x: Any) -> Any:
    return x


def embed_all(items: list[int]) -> list[int]:
    """A vectorized step: one call for a whole chunk, failing as its client does."""
    if BAD in items:
        raise openai_error()
    return [x * 10 for x in items]


def ten_times(x: int) -> int:
    return x * 10


class ErrorLog(BaseCallbackHandler):
    """The errors the callbacks hear, by run name."""

    def __init__(self) -> None:
        self.errors: list[tuple[str | None, BaseException]] = []
        self.names: dict[UUID, str | None] = {}

    def on_chain_start(self, serialized: Any, inputs: Any, *, run_id: UUID, **kw: Any) -> None:
        self.names[run_id] = kw.get("name")

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kw: Any) -> None:
        self.errors.append((self.names.get(run_id), error))


class ClientModel:
    """A stateful step (a pool of actors on Ray) whose calls fail as its client does."""

    def __call__(self, x: int) -> int:
        return raise_openai(x)


# ---- what must arrive --------------------------------------------------------------------------------


def check_shaped(exc: BaseException) -> None:
    assert type(exc) is StatusError
    assert str(exc) == "rate limited"
    assert exc.status_code == 429 and exc.body == BODY
    assert exc.response.status_code == 429
    assert exc.response.headers["retry-after"] == "2"  # the live response, or its snapshot


def check_openai(exc: BaseException) -> None:
    assert type(exc) is openai.RateLimitError
    assert isinstance(exc, openai.APIStatusError)
    assert exc.message == "rate limited" and str(exc) == "rate limited"
    assert exc.status_code == 429 and exc.body == BODY
    assert exc.response.headers.get("retry-after") == "2"
    assert exc.response.json() == BODY  # its body was read: it comes along
    assert str(exc.request.url) == URL


def check_httpx(exc: BaseException) -> None:
    assert type(exc) is httpx.HTTPStatusError
    assert str(exc) == "server error"
    assert exc.response.status_code == 503
    assert exc.response.headers["Retry-After"] == "2"
    assert str(exc.request.url) == URL


KINDS: dict[str, tuple[Callable[[int], int], Callable[[BaseException], None]]] = {
    "shaped": (raise_shaped, check_shaped),
    "openai": (raise_openai, check_openai),
    "httpx": (raise_httpx, check_httpx),
}


@pytest.fixture(params=list(KINDS), ids=list(KINDS))
def kind(request: pytest.FixtureRequest) -> tuple[str, Callable[[int], int], Callable[[BaseException], None]]:
    name: str = request.param
    return (name, *KINDS[name])


def check_path(exc: BaseException, fn: Callable[..., Any], index: int | None) -> None:
    assert fn.__name__ in (rayrunnables.step_path_of(exc) or "")
    if index is not None:
        assert rayrunnables.item_index_of(exc) == index


# ---- every backend -----------------------------------------------------------------------------------


def test_invoke_raises_the_clients_error_whole(cfg: dict[str, Any], kind: Any) -> None:
    _, fn, check = kind
    step = RunnableLambda(ident) | RunnableLambda(fn)
    with pytest.raises(Exception) as info:
        step.invoke(BAD, config=cfg)
    check(info.value)
    assert "step 2" in (rayrunnables.step_path_of(info.value) or "")
    check_path(info.value, fn, None)


def test_stream_raises_the_clients_error_whole(cfg: dict[str, Any], kind: Any) -> None:
    _, fn, check = kind
    step = RunnableLambda(ident) | RunnableLambda(fn)
    with pytest.raises(Exception) as info:
        list(step.stream(BAD, config=cfg))
    check(info.value)
    check_path(info.value, fn, None)


def test_batch_raises_the_clients_error_whole(cfg: dict[str, Any], kind: Any) -> None:
    _, fn, check = kind
    with pytest.raises(Exception) as info:
        (RunnableLambda(ident) | fn).batch(list(range(6)), config=cfg)
    check(info.value)
    check_path(info.value, fn, BAD)


def test_batch_return_exceptions_keeps_the_clients_error_whole(cfg: dict[str, Any], kind: Any) -> None:
    _, fn, check = kind
    out = (RunnableLambda(ident) | fn).batch(list(range(6)), config=cfg, return_exceptions=True)
    assert [o for i, o in enumerate(out) if i != BAD] == [0, 10, 20, 40, 50]
    check(out[BAD])
    check_path(out[BAD], fn, BAD)


def test_map_in_a_chain_raises_the_clients_error_whole(cfg: dict[str, Any], kind: Any) -> None:
    _, fn, check = kind
    step = RunnableLambda(ident) | {"each": RunnableLambda(fn).map()}
    with pytest.raises(Exception) as info:
        step.invoke(list(range(6)), config=cfg)
    check(info.value)
    assert "parallel['each']" in (rayrunnables.step_path_of(info.value) or "")
    check_path(info.value, fn, BAD)


def test_a_vectorized_step_gives_each_item_its_own_whole_error(cfg: dict[str, Any]) -> None:
    out = RunnableLambda(embed_all, batched=True).batch([BAD, 4, 5], config=cfg, return_exceptions=True)
    assert len(out) == 3
    for index, exc in enumerate(out):
        check_openai(exc)
        check_path(exc, embed_all, index)
    assert len({id(exc) for exc in out}) == 3  # copies, each naming its own item


def test_a_stateful_steps_client_error_arrives_whole(cfg: dict[str, Any]) -> None:
    step = RunnableActor(ClientModel, pool_size=1)
    with pytest.raises(Exception) as info:
        step.invoke(BAD, config=cfg)
    check_openai(info.value)
    out = step.batch(list(range(6)), config=cfg, return_exceptions=True)
    assert [o for i, o in enumerate(out) if i != BAD] == [0, 10, 20, 40, 50]
    check_openai(out[BAD])
    assert rayrunnables.item_index_of(out[BAD]) == BAD
    with pytest.raises(Exception) as mapped:
        step.map().invoke(list(range(6)), config=cfg)
    check_openai(mapped.value)
    assert rayrunnables.item_index_of(mapped.value) == BAD


def test_run_events_carry_a_client_error_whole(cfg: dict[str, Any]) -> None:
    """A failure a fallback handled still reaches the callbacks, from whichever process it ran in."""
    step = RunnableLambda(raise_openai).with_fallbacks([RunnableLambda(ten_times)])
    log = ErrorLog()
    assert (RunnableLambda(ident) | step).batch(list(range(6)), config={**cfg, "callbacks": [log]}) == [
        0, 10, 20, 30, 40, 50
    ]
    [(name, error)] = log.errors
    assert name == "raise_openai"
    check_openai(error)
    log = ErrorLog()
    with pytest.raises(openai.RateLimitError):
        (RunnableLambda(ident) | raise_openai).invoke(BAD, config={**cfg, "callbacks": [log]})
    assert [name for name, _ in log.errors] == ["raise_openai", "RunnableSequence"]
    for _, error in log.errors:
        check_openai(error)


def crosses(cfg: dict[str, Any], call: str) -> bool | None:
    """Whether the step's error is pickled on its way back: on Ray always; with an executor for the items
    of a batch or a ``.map()`` (the executor backend runs the rest of a chain in this process); never on
    local. None for a backend of another name: where it runs a step is its own choice."""
    name = backend_name(cfg)
    if name not in ("local", "ray", "executor"):
        return None
    return name == "ray" or (name == "executor" and call != "invoke")


def test_an_error_that_cannot_be_rebuilt_is_named(cfg: dict[str, Any]) -> None:
    name = f"{Unportable.__module__}.{Unportable.__qualname__}"
    chain = RunnableLambda(ident) | raise_unportable
    with pytest.raises(Exception) as info:
        chain.invoke(BAD, config=cfg)
    out = chain.batch(list(range(6)), config=cfg, return_exceptions=True)
    with pytest.raises(Exception) as mapped:
        (RunnableLambda(ident) | RunnableLambda(raise_unportable).map()).invoke(list(range(6)), config=cfg)
    for call, exc, index in (("invoke", info.value, None), ("batch", out[BAD], BAD), ("map", mapped.value, BAD)):
        pickled = crosses(cfg, call)
        assert type(exc) in ((UnportableError, Unportable) if pickled is None else
                             (UnportableError if pickled else Unportable,))
        assert "the token is gone" in str(exc)
        check_path(exc, raise_unportable, index)
        if isinstance(exc, UnportableError):
            assert exc.original_type == name
            assert name in str(exc)


def test_an_error_that_pickles_keeps_its_own_way(cfg: dict[str, Any]) -> None:
    out = RunnableLambda(raise_own_reduce).batch(list(range(6)), config=cfg, return_exceptions=True)
    with pytest.raises(OwnReduce) as info:
        (RunnableLambda(ident) | raise_own_reduce).invoke(BAD, config=cfg)
    for call, exc in (("batch", out[BAD]), ("invoke", info.value)):
        assert type(exc) is OwnReduce and exc.code == 7
        # its own __reduce__ made it (and, as before, brought none of its attributes but its code)
        pickled = crosses(cfg, call)
        if pickled is not None:
            assert getattr(exc, "rebuilt_by_its_reduce", False) == pickled


# ---- the helper itself, in this process ----------------------------------------------------------------


def round_trip(exc: BaseException) -> Any:
    from rayrunnables.backends.portable import cloudpickle, portable

    return pickle.loads(cloudpickle.dumps(portable(exc)))


def test_portable_leaves_what_pickles_alone() -> None:
    from rayrunnables.backends.portable import portable

    for exc in (ValueError("plain"), OwnReduce(3), KeyError("k"), OSError(2, "gone")):
        assert portable(exc) is exc
        assert "__reduce_ex__" not in vars(exc)


def test_portable_errors_round_trip_and_copy() -> None:
    exc = rayrunnables.errors.attach_step(openai_error(), "step 2 'raise_openai'", 5)
    back = round_trip(exc)
    check_openai(back)
    assert rayrunnables.step_path_of(back) == "step 2 'raise_openai'" and rayrunnables.item_index_of(back) == 5
    assert getattr(back, "__notes__", None) == getattr(exc, "__notes__", None)
    check_openai(copy.copy(exc))
    check_httpx(round_trip(httpx_error()))


def test_a_response_that_cannot_be_pickled_travels_as_a_snapshot() -> None:
    from rayrunnables.backends.portable import ResponseSnapshot

    back = round_trip(shaped_error())
    check_shaped(back)
    assert isinstance(back.response, ResponseSnapshot)
    assert back.response.content is None  # never read in the worker: not read on its way out either


def test_nested_errors_travel_whole() -> None:
    group_type = getattr(builtins, "ExceptionGroup", None)
    if group_type is not None:  # Python >= 3.11
        back = round_trip(group_type("several", [openai_error(), ValueError("plain")]))
        assert type(back) is group_type
        check_openai(back.exceptions[0])
        assert type(back.exceptions[1]) is ValueError
    outer = ValueError("wrapped")
    outer.inner = httpx_error()  # type: ignore[attr-defined]
    check_httpx(round_trip(outer).inner)


def test_unportable_error_pickles_and_names_the_type() -> None:
    exc = rayrunnables.errors.attach_step(Unportable("nope", token="t"), "step 1", 2)
    sent = round_trip(exc)
    assert type(sent) is UnportableError and isinstance(sent, rayrunnables.RayRunnablesError)
    assert sent.original_type.endswith(".Unportable") and "nope" in str(sent)
    assert rayrunnables.step_path_of(sent) == "step 1" and rayrunnables.item_index_of(sent) == 2


__all__ = exported(globals(), fixtures=("kind",))
