"""Tokens counted: ``rayrunnables run`` prints the totals its model calls reported, ``--usage`` puts each
item's own into its record, and the progress shows tokens per second.

The oracle is the provider: an ``OpenAIServer`` on 127.0.0.1 counts every token it served, and the
command's totals (and the sum of the records' usage) must equal its counts exactly, on the local backend,
on Ray, and on the data engine. The chain is real LangChain: ``ChatOpenAI`` built in each worker
(``lazy_langchain_step``), two models side by side, an item that makes no model call, one that fails
before its calls and one that fails after them.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rayrunnables import RunnableLambda
from rayrunnables.progress import Progress
from rayrunnables.testing.openai_server import OpenAIServer
from rayrunnables.usage import FIELDS, ItemUsageCounter, UsageCounter, call_usage, format_usage

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent

CHAINS = '''
import os

from rayrunnables import RunnableBranch, RunnableLambda, RunnableParallel
from rayrunnables.interop.langchain import lazy_langchain_step

BASE = os.environ["TEST_OPENAI_BASE_URL"]


def model(name):
    def build():
        from langchain_openai import ChatOpenAI

        return ChatOpenAI(base_url=BASE, api_key="test", model=name, max_retries=0, max_tokens=16)

    return lazy_langchain_step(build, name=name)


def check(doc):
    if doc.get("fail"):
        raise ValueError(f"cannot take item {doc['i']}")
    return doc["text"]


def content(message):
    return message.content


def after(answers):
    if answers["short"].startswith("boom"):  # the server answers with the prompt's words reversed
        raise RuntimeError("the answer was boom")
    return answers


ask = {"short": model("model-a") | RunnableLambda(content), "long": model("model-b") | RunnableLambda(content)}
chain = RunnableLambda(check, name="check") | RunnableBranch(
    (lambda text: text == "", RunnableLambda(lambda text: {"short": "", "long": ""}, name="no_call")),
    RunnableParallel(ask) | RunnableLambda(after, name="after"),
)
plain = RunnableLambda(check, name="check")
'''

N_DOCS = 20
NO_CALL, FAILS_BEFORE, FAILS_AFTER, MALFORMED = 0, 7, 11, N_DOCS  # line numbers (0-based)


def documents() -> list[str]:
    docs = [{"i": i, "text": " ".join(["word"] * (i % 5 + 1) + [f"w{i}"] * (i % 3))} for i in range(N_DOCS)]
    docs[NO_CALL]["text"] = ""
    docs[FAILS_BEFORE]["fail"] = True
    docs[FAILS_AFTER]["text"] = "x boom"
    return [json.dumps(d) for d in docs] + ['{"i": 20, "text": ']


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer(latency=0.01, max_seconds=300) as running:
        yield running


@pytest.fixture
def workdir(tmp_path: Path, server: OpenAIServer) -> Path:
    (tmp_path / "chains.py").write_text(CHAINS)
    (tmp_path / "in.jsonl").write_text("\n".join(documents()) + "\n")
    server.reset()
    return tmp_path


def cli(workdir: Path, server: OpenAIServer, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TEST_OPENAI_BASE_URL=server.base_url)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "rayrunnables.cli", "run", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


def records(*paths: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in paths for line in path.read_text().splitlines()]


def served(server: OpenAIServer) -> dict[str, int]:
    stats = server.stats()
    return {"input_tokens": stats.prompt_tokens, "output_tokens": stats.completion_tokens,
            "total_tokens": stats.total_tokens}


def totals_line(usage: dict[str, int]) -> str:
    return f"tokens: {usage['input_tokens']:,} in, {usage['output_tokens']:,} out, {usage['total_tokens']:,} total ("


def check_records(found: list[dict[str, Any]], server: OpenAIServer) -> None:
    """Every item once; each record's usage, summed, is what the server served; items without calls: zeros."""
    by_index = {r["index"]: r for r in found}
    assert sorted(by_index) == list(range(N_DOCS + 1)) and len(found) == N_DOCS + 1
    assert all(set(r["usage"]) == set(FIELDS) for r in found)
    assert {f: sum(r["usage"][f] for r in found) for f in FIELDS} == served(server)
    for index in (NO_CALL, FAILS_BEFORE, MALFORMED):
        assert by_index[index]["usage"] == dict.fromkeys(FIELDS, 0)
    assert by_index[FAILS_BEFORE]["error_type"] == "ValueError" and "'check'" in by_index[FAILS_BEFORE]["step"]
    assert by_index[MALFORMED]["error_type"] == "JSONDecodeError" and by_index[MALFORMED]["step"] == "input"
    # failed after its two model calls: its tokens were spent, and its error record says so
    assert by_index[FAILS_AFTER]["error_type"] == "RuntimeError" and by_index[FAILS_AFTER]["usage"]["output_tokens"] > 0
    for index, record in by_index.items():
        if index not in (NO_CALL, FAILS_BEFORE, FAILS_AFTER, MALFORMED):
            assert record["usage"]["input_tokens"] > 0 and "output" in record
            usage = record["usage"]
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


# ---- the command -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_local_totals_and_records_equal_what_the_server_served(workdir: Path, server: OpenAIServer) -> None:
    proc = cli(workdir, server, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl",
               "--errors", "err.jsonl", "--usage", "--unordered")
    assert proc.returncode == 1, proc.stderr
    assert "18 ok, 3 failed (1 malformed lines)" in proc.stderr
    assert server.stats().requests_admitted == 2 * (N_DOCS - 2)  # two models per item that reaches them
    assert totals_line(served(server)) in proc.stderr
    assert "model-a: " in proc.stderr and "model-b: " in proc.stderr
    assert "tokens/s" in proc.stderr  # the progress (plain lines: stderr is not a terminal)
    check_records(records(workdir / "out.jsonl", workdir / "err.jsonl"), server)


@pytest.mark.slow
def test_totals_without_usage_records_and_none_without_model_calls(workdir: Path, server: OpenAIServer) -> None:
    proc = cli(workdir, server, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl")
    assert proc.returncode == 1, proc.stderr
    assert totals_line(served(server)) in proc.stderr
    assert not any("usage" in r for r in records(workdir / "out.jsonl", workdir / "err.jsonl"))
    # a chain without LangChain steps records no run events: nothing counted, nothing printed
    plain = cli(workdir, server, "chains:plain", "--input", "in.jsonl", "--output", "plain.jsonl",
                "--errors", "plain-err.jsonl")
    assert plain.returncode == 1, plain.stderr
    assert "tokens" not in plain.stderr
    # --usage on it: every record carries zeros
    zeros = cli(workdir, server, "chains:plain", "--input", "in.jsonl", "--output", "zeros.jsonl",
                "--errors", "zeros-err.jsonl", "--usage", "--no-progress")
    assert "tokens" not in zeros.stderr
    found = records(workdir / "zeros.jsonl", workdir / "zeros-err.jsonl")
    assert len(found) == N_DOCS + 1 and all(r["usage"] == dict.fromkeys(FIELDS, 0) for r in found)


def session_address() -> str:
    """The session's Ray, which the commands attach to rather than start their own (its workers never saw
    the command's environment: what they count travels back with the records)."""
    import ray

    return str(ray.get_runtime_context().gcs_address)


@pytest.mark.slow
def test_ray_backend_counts_every_worker_call(workdir: Path, server: OpenAIServer, ray_session: Any) -> None:
    proc = cli(workdir, server, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl",
               "--errors", "err.jsonl", "--usage", "--backend", "ray", "--no-progress", "--chunk-size", "3",
               "--address", session_address())
    assert proc.returncode == 1, proc.stderr
    assert totals_line(served(server)) in proc.stderr
    check_records(records(workdir / "out.jsonl", workdir / "err.jsonl"), server)


@pytest.mark.slow
def test_data_engine_counts_in_the_workers(workdir: Path, server: OpenAIServer, ray_session: Any) -> None:
    proc = cli(workdir, server, "chains:chain", "--input", "in.jsonl", "--engine", "data", "--output", "out",
               "--usage", "--no-progress", "--chunk-size", "8", "--address", session_address())
    assert proc.returncode == 1, proc.stderr
    assert totals_line(served(server)) in proc.stderr
    check_records(records(*sorted((workdir / "out").glob("*.jsonl"))), server)


# ---- the counter -------------------------------------------------------------------------------------------------
def test_the_counter_counts_what_langchains_handler_counts(server: OpenAIServer) -> None:
    """Same numbers as ``UsageMetadataCallbackHandler``, per model, with items told apart."""
    from langchain_core.callbacks import UsageMetadataCallbackHandler
    from langchain_core.outputs import LLMResult
    from langchain_openai import ChatOpenAI

    from rayrunnables.engine.inprocess import PerItem
    from rayrunnables.interop.langchain import from_langchain

    server.reset()
    llm = ChatOpenAI(base_url=server.base_url, api_key="test", model="m", max_retries=0, max_tokens=16)
    chain = from_langchain(llm) | RunnableLambda(lambda m: m.content)
    theirs, ours, items = UsageMetadataCallbackHandler(), UsageCounter(), ItemUsageCounter()
    keys = [f"item {i}" for i in range(4)]
    for key in keys:
        items.expect(key)
    texts = ["a", "b c", "d e f", "g h i j"]
    values = [PerItem.nested(text, key) for text, key in zip(texts, keys, strict=True)]
    list(chain.imap(values, {"callbacks": [theirs, ours, items]}))
    expected = served(server)
    assert {name: {f: usage[f] for f in FIELDS} for name, usage in theirs.usage_metadata.items()} == {"m": expected}
    assert ours.by_model == items.by_model == {"m": expected}
    per_item = [items.take(key) for key in keys]
    assert [u["input_tokens"] for u in per_item] == sorted(u["input_tokens"] for u in per_item)  # longer prompts
    assert {f: sum(u[f] for u in per_item) for f in FIELDS} == expected
    assert items.take("never expected") == dict.fromkeys(FIELDS, 0)
    assert not items._item_of  # only runs in flight are held
    # nothing reported: nothing counted; a completion model's llm_output is read
    assert call_usage(LLMResult(generations=[[]])) is None
    assert call_usage(LLMResult(generations=[], llm_output={"token_usage": {"prompt_tokens": 3, "completion_tokens": 2},
                                                            "model_name": "old"})) == (
        "old", {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5})


def test_totals_line_and_progress_rate() -> None:
    assert format_usage({}) is None
    line = format_usage({"b": {"input_tokens": 1000, "output_tokens": 20, "total_tokens": 1020},
                         "a": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}})
    assert line == ("tokens: 1,001 in, 22 out, 1,023 total (a: 1 in, 2 out, 3 total; b: 1,000 in, 20 out, "
                    "1,020 total)")
    progress = Progress(total=10, use_tqdm=False, enabled=False)
    assert "tokens/s" not in progress.summary()
    progress.set_tokens(500)
    assert "tokens/s" in progress.summary()
    pytest.importorskip("tqdm")
    with Progress(total=10, stream=io.StringIO(), use_tqdm=True) as bar:
        bar.update(1, errors=1)
        assert bar._bar is not None and bar._bar.postfix == "errors=1"
        bar.set_tokens(1200)
        assert bar._bar.postfix.startswith("errors=1, tokens/s=")
