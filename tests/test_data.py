"""The data engine: ``rayrunnables run`` over folders of files on Ray Data, and ``rayrunnables.data.apply``.

``apply`` runs on the suite's session Ray. The command runs in a subprocess, as a person runs it, as a
driver of the session's Ray (``--address``: no Ray start of its own, ~5 s instead of ~20-35 s): the issue's
4 files of 25,000 documents killed at ~40% and resumed, and Parquet in and out. Object storage is in
test_data_s3.py, the multi-node run and node loss in test_cluster.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data  # dependencies ([data], [test]): a broken install fails here, never skips

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent

CHAINS = '''
import time
from rayrunnables import RunnableLambda

def check(doc):
    if doc.get("fail"):
        raise ValueError(f"cannot take item {doc['i']}")
    return doc

def measure(doc):
    return {"i": doc["i"], "len": len(doc.get("text", ""))}

chain = RunnableLambda(check, name="check") | RunnableLambda(measure, name="measure")

def paced(doc):  # ~0.3 ms a document: long enough to kill a run of 100,000 midway
    time.sleep(0.0003)
    return check(doc)["i"] * 2

paced_chain = RunnableLambda(paced, name="paced")
'''


# ---- apply() on the session's Ray ----------------------------------------------------------------------------------
def fails_on_3(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["i"] % 7 == 3:
        raise ValueError(f"no {doc['i']}")
    return {"double": doc["i"] * 2}


class Sizer:
    """A stateful, vectorized step: each output says how big its call's batch was, and which instance ran it."""

    def __init__(self) -> None:
        import uuid

        self.name = uuid.uuid4().hex

    def batch(self, items: list[int]) -> list[dict[str, Any]]:
        return [{"x": x, "batch": len(items), "instance": self.name} for x in items]


def test_apply_puts_outputs_and_errors_in_columns(ray_session: Any) -> None:
    from rayrunnables import RunnableLambda
    from rayrunnables.data import apply

    ds = ray.data.from_items([{"i": i, "tag": f"t{i}"} for i in range(60)])
    chain = RunnableLambda(fails_on_3, name="fails_on_3")
    rows = sorted(apply(chain, ds, batch_size=16).take_all(), key=lambda r: r["i"])
    assert [r["i"] for r in rows] == list(range(60))
    for row in rows:
        assert row["tag"] == f"t{row['i']}"  # the row's own columns are kept
        if row["i"] % 7 == 3:
            assert row["output"] is None
            assert row["error"]["error_type"] == "ValueError" and row["error"]["message"] == f"no {row['i']}"
            assert "'fails_on_3'" in row["error"]["step"] and "in fails_on_3" in row["error"]["traceback"]
        else:
            assert row["output"] == {"double": row["i"] * 2} and row["error"] is None


def test_apply_input_column_raise_and_separate_error_dataset(ray_session: Any) -> None:
    from rayrunnables import RunnableLambda
    from rayrunnables.data import apply

    ds = ray.data.from_items([{"i": i} for i in range(20)])
    doubled = apply(RunnableLambda(lambda x: x * 2), ds, input_column="i", output_column="doubled")
    assert sorted(r["doubled"] for r in doubled.take_all()) == [2 * i for i in range(20)]

    with pytest.raises(Exception, match="no 3"):
        apply(RunnableLambda(fails_on_3), ds, errors="raise").take_all()

    ok, failed = apply(RunnableLambda(fails_on_3), ds, errors="dataset")
    assert sorted(r["i"] for r in ok.take_all()) == [i for i in range(20) if i % 7 != 3]
    assert "error" not in ok.schema().names
    assert sorted((r["i"], r["error"]["error_type"]) for r in failed.take_all()) == [(3, "ValueError"),
                                                                                      (10, "ValueError"),
                                                                                      (17, "ValueError")]
    with pytest.raises(ValueError, match="errors must be one of"):
        apply(RunnableLambda(fails_on_3), ds, errors="ignore")


def test_apply_runs_actor_steps_in_a_pool_and_gives_vectorized_steps_the_whole_batch(ray_session: Any) -> None:
    from rayrunnables import RunnableActor
    from rayrunnables.data import apply

    ds = ray.data.range(200)  # one column, "id"
    rows = apply(RunnableActor(Sizer, pool_size=2), ds, input_column="id", batch_size=50).take_all()
    outputs = [r["output"] for r in rows]
    assert sorted(o["x"] for o in outputs) == list(range(200))
    assert {o["batch"] for o in outputs} == {50}  # one call per batch
    assert 1 <= len({o["instance"] for o in outputs}) <= 2  # built once per pool actor, at most pool_size


# ---- the command, in a subprocess ----------------------------------------------------------------------------------
@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chains.py").write_text(CHAINS)
    return tmp_path


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    return out


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "rayrunnables.cli", "run", *args]


@pytest.fixture
def address(ray_session: Any) -> str:
    """The session Ray's address: the command joins it as a driver instead of starting a Ray of its own."""
    return str(ray_session.get_runtime_context().gcs_address)


def cli(workdir: Path, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command(*args), cwd=workdir, capture_output=True, text=True, timeout=timeout, env=env())


def write_corpus(folder: Path, files: int, per_file: int) -> tuple[set[str], set[str]]:
    """JSON Lines files with malformed lines, blank lines and failing documents; returns (good ids, bad ids),
    a malformed line's id being FILE:LINE."""
    folder.mkdir()
    good, bad = set(), set()
    for f in range(files):
        path = folder / f"docs{f}.jsonl"
        lines = []
        for i in range(per_file):
            if i % 5000 == 17:
                lines.append('{"doc_id": "broken", "i": ')
                bad.add(f"{path.name}:{i + 1}")  # FILE relative to the input root
            elif i % 7000 == 11:
                lines.append("")  # blank: not an item
            else:
                doc_id = f"{f}-{i}"
                lines.append(json.dumps({"doc_id": doc_id, "i": i, "fail": i % 1000 == 5}))
                (bad if i % 1000 == 5 else good).add(doc_id)
        path.write_text("\n".join(lines) + "\n")
    return good, bad


def shard_records(folder: Path, prefix: str) -> list[dict[str, Any]]:
    out = []
    for path in sorted(folder.glob(f"{prefix}-*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines())
    return out


def check_exactly_once(out: Path, errs: Path, good: set[str], bad: set[str]) -> list[dict[str, Any]]:
    outputs, errors = shard_records(out, "part"), shard_records(errs, "errors")
    ids = Counter(r["id"] for r in outputs)
    assert set(ids) == good and max(ids.values()) == 1  # every good id exactly once across the shards
    error_ids = Counter(r["id"] for r in errors)
    assert set(error_ids) == bad and max(error_ids.values()) == 1
    return outputs


@pytest.mark.slow
def test_folder_killed_at_40_percent_and_resumed_is_exactly_once(workdir: Path, address: str) -> None:
    good, bad = write_corpus(workdir / "docs", files=4, per_file=25_000)
    out, errs = workdir / "out", workdir / "errs"
    args = ["chains:paced_chain", "--input", "docs", "--output", "out", "--errors", "errs", "--id-field", "doc_id",
            "--chunk-size", "2500", "--no-progress", "--address", address]  # 40 batches
    proc = subprocess.Popen(command(*args), cwd=workdir, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and len(list(out.glob("part-*"))) < 16 and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    settled = -1  # Ray ends the dead driver's workers; tasks running then may still finish
    while settled != (settled := len(list(out.rglob("*")) + list(errs.glob("*")))):
        time.sleep(3)
    done_before = len(shard_records(out, "part")) + len(shard_records(errs, "errors"))
    assert 0.3 * len(good | bad) <= done_before < len(good | bad), "the run must be killed midway"
    (out / ".part-left-by-a-kill.jsonl.tmp-0000").write_text('{"index": 1, "id": "0-1", "outp')
    # a shard whose writer died before its marker: not part of the output, deleted on resume
    (out / "part-19990101000000-000000-docs0-000000000-0000000000000000.0000.jsonl").write_text(
        '{"index": 0, "id": "0-0", "output": 0}\n')

    resumed = cli(workdir, *args, "--resume")
    assert resumed.returncode == 1, resumed.stderr[-3000:]  # some documents fail
    found = re.search(r"([\d,]+) already done", resumed.stderr)
    assert found, resumed.stderr[-3000:]
    already = int(found.group(1).replace(",", ""))
    assert 0.3 * len(good | bad) <= already <= done_before  # shards written but never committed are not done
    outputs = check_exactly_once(out, errs, good, bad)
    assert all(r["output"] == 2 * r["index"] for r in outputs)  # index: the line in its file
    assert not list(out.glob(".*")), "temporary files are cleaned up on resume"
    errors = {r["id"]: r for r in shard_records(errs, "errors")}
    assert set(errors["0-5"]) == {"index", "id", "step", "error_type", "message", "traceback"}
    assert errors["0-5"]["error_type"] == "ValueError" and "'paced'" in errors["0-5"]["step"]
    broken = errors["docs0.jsonl:18"]
    assert broken["index"] == 17 and broken["step"] == "input" and broken["error_type"] == "JSONDecodeError"


@pytest.mark.slow
def test_parquet_in_and_out(workdir: Path, address: str) -> None:
    (workdir / "pq").mkdir()
    for f in range(2):
        rows = [{"i": i, "text": "ab" * (i % 3), "fail": i % 50 == 7} for i in range(300)]
        pq.write_table(pa.Table.from_pylist(rows), workdir / "pq" / f"part{f}.parquet")
    proc = cli(workdir, "chains:chain", "--input", "pq/*.parquet", "--output", "out", "--output-format", "parquet",
               "--no-progress", "--chunk-size", "100", "--address", address)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "588 ok, 12 failed" in proc.stderr
    table = pq.read_table(sorted((workdir / "out").glob("part-*.parquet")))
    assert table.column_names == ["index", "id", "output"]
    rows = table.to_pylist()
    expected = {f"part{f}.parquet:{i + 1}": {"i": i, "len": 2 * (i % 3)}  # relative to the glob's folder
                for f in range(2) for i in range(300) if i % 50 != 7}
    assert {r["id"]: r["output"] for r in rows} == expected and len(rows) == len(expected)
    errors = shard_records(workdir / "out", "errors")  # errors default to the output folder, as JSON Lines
    assert sorted(e["index"] for e in errors) == sorted([i for i in range(300) if i % 50 == 7] * 2)


@pytest.mark.slow
def test_usage_errors_exit_2_before_ray_starts(workdir: Path) -> None:
    write_corpus(workdir / "docs", files=1, per_file=10)
    (workdir / "out").mkdir()
    (workdir / "out" / "part-x.jsonl").write_text("")
    cases = [
        (["--input", "docs", "--output", "out"], "already holds shards"),
        (["--input", "docs", "--output", "out", "--resume"], "no commit log"),  # shards of an older version: kept
        (["--input", "docs/docs0.jsonl", "--input", "docs/docs0.jsonl", "--engine", "driver", "--output", "o.jsonl"],
         "driver engine reads one file"),
        (["--input", "nothing-here/*.jsonl", "--output", "o2"], "no file matches"),
        (["--input", "docs", "--output", "-"], "not - (standard input/output)"),
        (["--input", "docs", "--output", "o3", "--backend", "local"], "--backend is for the driver engine"),
    ]
    for args, message in cases:
        proc = cli(workdir, "chains:chain", *args, timeout=60)
        assert proc.returncode == 2, (args, proc.stderr[-2000:])
        assert message in proc.stderr, (args, proc.stderr[-2000:])


def _prep(x: int) -> int:
    if x % 7 == 3:
        raise ValueError(f"no {x}")
    return x + 1


_VEC_CALLS: list[int] = []


def _vec(xs: list[int]) -> list[int]:
    _VEC_CALLS.append(len(xs))
    return [x * 10 for x in xs]


def test_a_vectorized_step_inside_a_sequence_gets_the_whole_batch() -> None:
    """The data engine runs such a sequence a step at a time over the batch: same outputs and errors
    (with their full step paths) as the chain's own batch, and one call of the vectorized step."""
    from rayrunnables import RunnableLambda
    from rayrunnables.data import run_values
    from rayrunnables.errors import step_path_of

    chain = (RunnableLambda(_prep, name="prep") | RunnableLambda(_vec, name="vec", batched=True)
             | RunnableLambda(lambda x: {"out": x}, name="post"))
    values = list(range(40))
    _VEC_CALLS.clear()
    got = run_values(chain, values)
    assert _VEC_CALLS == [40 - len([v for v in values if v % 7 == 3])]  # one call, every surviving item
    expected = chain.batch(values, return_exceptions=True)
    for g, e in zip(got, expected, strict=True):
        if isinstance(e, Exception):
            assert isinstance(g, ValueError) and step_path_of(g) == step_path_of(e) == "step 1 > lambda 'prep'"
        else:
            assert g == e


def test_a_small_run_gets_about_4_batches_per_cpu(tmp_path: Path, ray_session: Any) -> None:
    """Without --chunk-size: 10,000 rows per batch, or fewer so that a small run keeps every CPU busy."""
    import pyarrow.fs as pafs

    from rayrunnables.data_cli import default_batch
    from rayrunnables.datafiles import ChainFiles, resolve_inputs
    from rayrunnables.shardlog import CommitLog

    assert default_batch(20_000, 2) == 2_500  # 8 files of 2,500 documents on 2 CPUs: 8 batches, not 2
    assert default_batch(100_000_000, 64) == 10_000 and default_batch(None, 2) == 10_000
    assert default_batch(50, 8) == 100
    write_corpus(tmp_path / "docs", files=2, per_file=3000)
    source = ChainFiles(resolve_inputs([str(tmp_path / "docs")]), CommitLog(pafs.LocalFileSystem(), str(tmp_path)))
    estimate = source.estimate_rows()
    assert estimate is not None and 5_000 < estimate < 7_000


def test_a_block_bigger_than_the_batch_runs_and_commits_in_batches(tmp_path: Path) -> None:
    """Where the read and the chain are one Ray Data stage, a block can be a whole file: the job still calls the
    chain with ``--chunk-size`` items at a time and commits each batch as its own shard and marker, so a kill
    loses at most the batches in flight and a vectorized step never gets a whole file at once."""
    from rayrunnables import RunnableLambda
    from rayrunnables.datafiles import ShardJob, Shards, _lines_table
    from rayrunnables.shardlog import CommitLog

    sizes: list[int] = []

    def double_all(docs: list[dict[str, Any]]) -> list[int]:
        sizes.append(len(docs))
        return [2 * d["i"] for d in docs]

    chain = RunnableLambda(double_all, batched=True)
    out = Shards(str(tmp_path / "out"))
    out.make()
    lines = [json.dumps({"i": i}).encode() for i in range(25)]
    job = ShardJob(chain, None, out, out, "jsonl", "run1", batch_rows=10)
    counts = job(_lines_table("docs.jsonl", list(range(25)), lines))
    assert (counts["ok"], counts["failed"], counts["malformed"]) == ([25], [0], [0])
    assert sorted(sizes) == [5, 10, 10]
    assert len(out.files(("part-",))) == 3
    scan = CommitLog(out.fs, out.root).scan()
    assert scan.done == 25 and len(scan.trusted) == 3
    outputs = shard_records(tmp_path / "out", "part")
    assert sorted(r["output"] for r in outputs) == [2 * i for i in range(25)]
