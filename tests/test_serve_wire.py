"""The serving pieces that need no server: LangServe's wire format, the config a client may set, and the
command line's refusals (a non-loopback bind without a token)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from langchain_core.messages import AIMessageChunk, HumanMessage

from rayrunnables.cli import main
from rayrunnables.serve.command import is_loopback
from rayrunnables.serve.wire import RequestError, check_config, decode_value, dumps, sse


def test_langchain_objects_travel_as_langserve_writes_them() -> None:
    text = dumps({"m": [HumanMessage("hi")], "c": AIMessageChunk(content="a")})
    data = json.loads(text)
    assert data["m"][0]["type"] == "human" and data["c"]["type"] == "AIMessageChunk"
    back = decode_value(data)
    assert back["m"] == [HumanMessage("hi")] and back["c"] == AIMessageChunk(content="a")
    assert decode_value({"type": "human"}) == {"type": "human"}  # not a message after all: left as it is
    with pytest.raises(TypeError):
        dumps(object())
    assert dumps(object(), lenient=True).startswith('"<object')


def test_a_client_sets_only_its_own_config_keys() -> None:
    sent = {"tags": ["t"], "metadata": {}, "recursion_limit": 25, "configurable": {"k": 1}, "run_name": "r"}
    assert check_config(sent) == {"tags": ["t"], "configurable": {"k": 1}, "run_name": "r"}
    for bad in ({"backend": "local"}, {"cache": "/tmp"}, {"callbacks": []}):
        with pytest.raises(RequestError, match="not accepted") as err:
            check_config(bad)
        assert err.value.status == 422 and err.value.field == f"config.{next(iter(bad))}"
    with pytest.raises(RequestError, match="tags must be a list of strings"):
        check_config({"tags": [1]})
    with pytest.raises(RequestError, match="must be an object"):
        check_config(["tags"])


def test_server_sent_events_are_named_lines() -> None:
    assert sse("data", '{"a":1}') == b'event: data\r\ndata: {"a":1}\r\n\r\n'
    assert sse("end") == b"event: end\r\n\r\n"


def test_the_command_refuses_a_non_loopback_bind_without_a_token(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("example.org")
    runner = CliRunner()
    refused = runner.invoke(main, ["serve", "serve_chains:misc", "--host", "0.0.0.0"])
    assert refused.exit_code == 2 and "--auth-token-file" in refused.output
    loose = tmp_path / "token"
    loose.write_text("x" * 32)
    loose.chmod(0o644)
    refused = runner.invoke(main, ["serve", "serve_chains:misc", "--host", "0.0.0.0", "--auth-token-file", str(loose)])
    assert refused.exit_code == 2 and "chmod 600" in refused.output
    assert runner.invoke(main, ["serve", "serve_chains:misc", "--replicas", "0"]).exit_code == 2


def test_replicas_fixed_or_autoscaled_on_ongoing_requests() -> None:
    from rayrunnables.serve.deployment import deployment_options

    assert deployment_options(2)["num_replicas"] == 2
    auto = deployment_options("auto", max_ongoing_requests=8)["autoscaling_config"]
    assert auto.min_replicas == 1 and auto.max_replicas == 4 and auto.target_ongoing_requests == 2
    with pytest.raises(ValueError, match="at least 1"):
        deployment_options(0)


def test_the_proxy_queues_only_past_overload_and_looks_again_soon() -> None:
    """Serve's router gives a queued request to a full replica by polling, at most 2 pollers per replica,
    with a backoff that grew to 0.5 s and stayed there: 4 requests/s for a replica that answers in
    milliseconds. A replica takes many requests at once, and the router looks again within 50 ms."""
    from rayrunnables.serve.deployment import deployment_options

    opts = deployment_options(1)
    assert opts["max_ongoing_requests"] >= 200  # the benchmark's 200 clients fit in one replica
    assert opts["request_router_config"].max_backoff_s <= 0.05


def test_in_the_replica_a_computing_chain_runs_one_request_at_a_time() -> None:
    """With ``backend="local"`` the GIL runs one computing request at a time anyway: once the chain is
    known to compute, concurrent requests take turns (in order) instead of time-slicing each other."""
    import asyncio
    import threading

    import httpx

    import rayrunnables as rr
    from rayrunnables.serve import ServeOptions, build_api, schemas_for

    lock, running, most = threading.Lock(), [0], [0]

    def compute(n: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        total = sum(i * i for i in range(1_000_000))  # pure Python: it holds the GIL
        with lock:
            running[0] -= 1
        return n + total % 2

    chain = rr.RunnableLambda(compute)
    api = build_api(chain, schemas_for(chain, None, None), ServeOptions(backend="local"))

    async def post_all(count: int) -> list[int]:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as client:
            answers = await asyncio.gather(*(client.post("/invoke", json={"input": i}) for i in range(count)))
        assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
        return [a.json()["output"] for a in answers]

    for _ in range(3):  # its first calls teach this process that the step computes
        assert asyncio.run(post_all(1)) == [0]
    most[0] = 0
    assert asyncio.run(post_all(8)) == list(range(8))
    assert most[0] == 1
