"""The data engine on object storage: inputs, outputs and errors on an S3-compatible server (moto's server
mode, on 127.0.0.1, one per module), killed mid-run and resumed, each id exactly once; globs on URIs; and the
commit log's rules on a local folder.

A killed run is the command in a subprocess joined to the session Ray (``--address``), killed with SIGKILL
once ~40% of the items are committed; the resume runs in this process on the session Ray (``run_data``),
with the commit log's per-file reader made to fail here: the driver must never read what is done.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from cache_servers import s3_server

from rayrunnables import RunnableLambda

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parent.parent
TOTAL_FILES, PER_FILE = 4, 5000


def paced(doc: dict[str, Any]) -> int:
    """~0.3 ms a document: long enough to kill a run of 20,000 midway."""
    time.sleep(0.0003)
    if doc["i"] % 1000 == 5:
        raise ValueError(f"cannot take item {doc['i']}")
    return int(doc["i"]) * 2


paced_chain = RunnableLambda(paced, name="paced")


@pytest.fixture(scope="module")
def bucket() -> Iterator[tuple[str, str, pafs.FileSystem]]:
    """(``s3://KEY:SECRET@data``, ``?endpoint_override=...``, a filesystem on it) for one server per module."""
    with s3_server("data") as uri:
        head, query = uri.split("?", 1)
        fs, _ = pafs.FileSystem.from_uri(uri)
        yield head.rsplit("/", 1)[0], "?" + query, fs


def put(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_inputs(fs: pafs.FileSystem, prefix: str, kind: str) -> tuple[set[str], set[str]]:
    """4 files of 5,000 documents (JSON Lines with a malformed line each, or Parquet); (good ids, bad ids)."""
    good, bad = set(), set()
    for f in range(TOTAL_FILES):
        name = f"docs{f}.{kind}"
        rows = [{"doc_id": f"{f}-{i}", "i": i} for i in range(PER_FILE)]
        if kind == "parquet":
            sink = pa.BufferOutputStream()
            pq.write_table(pa.Table.from_pylist(rows), sink)
            put(fs, f"{prefix}/{name}", sink.getvalue().to_pybytes())
            ids = [f"{name}:{i + 1}" for i in range(PER_FILE)]  # no --id-field: FILE:LINE, FILE relative
        else:
            lines = [json.dumps(r) for r in rows]
            lines[17] = '{"doc_id": "broken", '
            put(fs, f"{prefix}/{name}", ("\n".join(lines) + "\n").encode())
            ids = [f"{f}-{i}" if i != 17 else f"{name}:18" for i in range(PER_FILE)]
        for i, item in enumerate(ids):
            (bad if i % 1000 == 5 or (kind != "parquet" and i == 17) else good).add(item)
    return good, bad


def committed(fs: pafs.FileSystem, out: str) -> int:
    """Items the markers under ``out`` hold (smallest attempt per piece), from their names."""
    from rayrunnables.shardlog import CommitLog

    return CommitLog(fs, out).scan().done


def shard_ids(fs: pafs.FileSystem, folder: str, prefix: str) -> Counter[str]:
    ids: Counter[str] = Counter()
    for info in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)):
        if not info.base_name.startswith(prefix):
            continue
        if info.base_name.endswith(".parquet"):
            with fs.open_input_file(info.path) as f:
                ids.update(pq.read_table(f).column("id").to_pylist())
        else:
            with fs.open_input_stream(info.path) as f:
                ids.update(json.loads(line)["id"] for line in f.read().splitlines())
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_folder_on_s3_killed_at_40_percent_and_resumed_is_exactly_once(
    bucket: tuple[str, str, pafs.FileSystem], ray_session: Any, tmp_path: Path, kind: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    base, query, fs = bucket
    good, bad = write_inputs(fs, f"data/{kind}/in", kind)
    out = f"{base}/{kind}/out{query}"
    errs = f"{base}/{kind}/errors{query}" if kind == "jsonl" else None  # Parquet: errors beside the outputs
    options = ["--id-field", "doc_id"] if kind == "jsonl" else ["--output-format", "parquet"]
    args = ["test_data_s3:paced_chain", "--input", f"{base}/{kind}/in/{query}", "--output", out,
            *(["--errors", errs] if errs else []), *options, "--chunk-size", "500", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    proc = subprocess.Popen([sys.executable, "-m", "rayrunnables.cli", "run", *args, "--address",
                             ray_session.get_runtime_context().gcs_address], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    total = len(good | bad)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and committed(fs, f"data/{kind}/out") < 0.4 * total and proc.poll() is None:
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    settled = -1  # Ray ends the dead driver's workers; a task running then may still finish
    while settled != (settled := len(fs.get_file_info(pafs.FileSelector(f"data/{kind}", recursive=True)))):
        time.sleep(3)
    before = committed(fs, f"data/{kind}/out")
    assert 0.3 * total <= before < total, f"the run must be killed midway ({before} of {total})"

    from rayrunnables.data_cli import run_data
    from rayrunnables.shardlog import CommitLog

    def not_in_the_driver(*_: Any) -> Any:
        raise AssertionError("the driver read a file's done items")

    monkeypatch.setattr(CommitLog, "file_state", not_in_the_driver)  # the workers have their own copy
    status = run_data(paced_chain, (f"{base}/{kind}/in/{query}",), out, errs, None,
                      "doc_id" if kind == "jsonl" else None, True, 500, kind, None, False, click.ClickException)
    assert status == 1  # some documents fail
    assert re.search(rf"{before:,} already done", capsys.readouterr().err)
    import ray.data

    # the run (4 files on 2 CPUs: one fused stage) turned Ray Data's reservation off for itself only
    assert ray.data.DataContext.get_current().op_resource_reservation_enabled
    outputs = shard_ids(fs, f"data/{kind}/out", "part-")
    errors = shard_ids(fs, f"data/{kind}/{'errors' if errs else 'out'}", "errors-")
    assert set(outputs) == good and max(outputs.values()) == 1  # every good id exactly once
    assert set(errors) == bad and max(errors.values()) == 1  # every error record exactly once


def test_a_glob_on_a_uri_reads_its_files_only_and_ids_are_relative(
    bucket: tuple[str, str, pafs.FileSystem], ray_session: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    base, query, fs = bucket
    for name in ("a1.jsonl", "a2.jsonl", "b.jsonl", "a9/z.jsonl"):
        put(fs, f"data/glob/in/{name}", b'{"i": 1}\n\n{"i": 2}\n')
    from rayrunnables.data_cli import run_data

    status = run_data(paced_chain, (f"{base}/glob/in/a*.jsonl{query}",), f"{base}/glob/out{query}", None, None,
                      None, False, None, "jsonl", None, False, click.ClickException)
    assert status == 0, capsys.readouterr().err
    # `*` stays in its folder; ids name a file relative to the glob's folder, lines counted from 1
    assert shard_ids(fs, "data/glob/out", "part-") == Counter(["a1.jsonl:1", "a1.jsonl:3", "a2.jsonl:1",
                                                               "a2.jsonl:3"])
    with pytest.raises(click.ClickException, match="no file matches"):
        run_data(paced_chain, (f"{base}/glob/in/z*.jsonl{query}",), f"{base}/glob/out2{query}", None, None,
                 None, False, None, "jsonl", None, False, click.ClickException)
    with pytest.raises(click.ClickException, match="one filesystem"):
        run_data(paced_chain, (str(tmp_path), f"{base}/glob/in/{query}"), f"{base}/glob/out2{query}", None, None,
                 None, False, None, "jsonl", None, False, click.ClickException)


# ---- the inputs' root and the commit log, without Ray ------------------------------------------------------------
def test_inputs_root_is_what_the_inputs_share(tmp_path: Path) -> None:
    from rayrunnables.datafiles import resolve_inputs

    (tmp_path / "docs" / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "b.jsonl", "sub/c.jsonl"):
        (tmp_path / "docs" / name).write_text("{}\n")
    folder = resolve_inputs([str(tmp_path / "docs")])
    assert folder.root == str(tmp_path / "docs") and folder.paths == [str(tmp_path / "docs")]
    assert folder.rel(str(tmp_path / "docs" / "sub" / "c.jsonl")) == "sub/c.jsonl"
    globbed = resolve_inputs([str(tmp_path / "docs" / "*.jsonl")])
    assert globbed.root == str(tmp_path / "docs") and len(globbed.paths) == 2
    files = resolve_inputs([str(tmp_path / "docs" / "a.jsonl"), str(tmp_path / "docs" / "sub" / "c.jsonl")])
    assert files.root == str(tmp_path / "docs")


def test_commit_log_trusts_one_attempt_per_piece_and_knows_a_finished_file(tmp_path: Path) -> None:
    from rayrunnables.shardlog import CommitLog

    log = CommitLog(pafs.LocalFileSystem(), str(tmp_path))
    log.commit("d.jsonl", "run-d-000-aa", "b2", "part-x", None, [0, 1, 2], ["i0", "i1", "i2"])
    log.commit("d.jsonl", "run-d-000-aa", "a1", "part-y", None, [0, 1, 2], ["i0", "i1", "i2"])  # a retry: wins
    log.commit("d.jsonl", "run-d-003-bb", "c3", None, "errors-z", [4], ["i4"])  # line 3 is blank
    scan = log.scan()
    assert scan.done == 4 and scan.trusted == {"run-d-000-aa.a1", "run-d-003-bb.c3"}
    assert [p.rsplit("/", 1)[1] for p in scan.superseded] == ["run-d-000-aa.b2.3.json"]
    state = log.file_state("d.jsonl", 50, with_ids=True)
    assert not state.complete and state.ids == {"i0", "i1", "i2", "i4"} and 4 in state.lines and 3 not in state.lines
    log.record_items("d.jsonl", 4, 50)
    assert log.file_state("d.jsonl", 50, with_ids=True).complete
    assert not log.file_state("d.jsonl", 51, with_ids=True).complete  # the file changed: read it again
    assert log.file_state("other.jsonl", 50, with_ids=True).count == 0
    # a read Ray runs again in the middle of a run yields what it first did: that run's own markers do not count
    assert log.file_state("d.jsonl", 50, with_ids=True, run_id="run").count == 0
    log.commit("e.jsonl", "run-e-000-cc", "d4", "part-w", None, [0, 1], None)  # committed without --id-field
    mixed = log.file_state("e.jsonl", None, with_ids=True)  # resumed with it: those lines are still done
    assert mixed.done(1, "any id") and not mixed.done(2, "any id") and not state.done(3, "i3")
    assert log.exists() and not CommitLog(pafs.LocalFileSystem(), str(tmp_path / "empty")).exists()
