"""``rayrunnables run``: JSON Lines in, records out, errors aside, killed and resumed exactly once.

Every test runs the command in a subprocess, as a person would, with a chain module written into
``tmp_path`` (the command imports MODULE from the current directory). All but one use the local
backend; one checks the Ray backend end to end (a Ray start in a subprocess costs ~15-25 s).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent

CHAINS = '''
import os, time
from rayrunnables import RunnableLambda

def check(doc):
    if doc.get("fail"):
        raise ValueError(f"cannot take item {doc['i']}")
    return doc

def measure(doc):
    return {"i": doc["i"], "len": len(doc.get("text", ""))}

chain = RunnableLambda(check, name="check") | RunnableLambda(measure, name="measure")

def slow(doc):
    log = os.environ.get("CALLS_LOG")
    if log:  # one whole line per call, so the test can tell which items each run sent to the chain
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.write(fd, f"{doc['i']}\\n".encode())
        os.close(fd)
    time.sleep(doc.get("sleep", 0.02))
    if doc["i"] % 10 == 3:
        raise RuntimeError(f"item {doc['i']} fails")
    return doc["i"] * 2

slow_chain = RunnableLambda(slow, name="slow")

def not_json(doc):
    if doc["i"] == 1:
        return {1, 2}
    if doc["i"] == 2:
        return float("nan")
    return doc["i"]
'''


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "chains.py").write_text(CHAINS)
    return tmp_path


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), out.get("PYTHONPATH", "")) if p)
    out.update(extra or {})
    return out


def cli(workdir: Path, *args: str, stdin: str | None = None, timeout: float = 120,
        extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rayrunnables.cli", "run", *args],
        cwd=workdir, input=stdin, capture_output=True, text=True, timeout=timeout, env=env(extra_env),
    )


def write_jsonl(path: Path, values: list[Any]) -> None:
    path.write_text("".join(json.dumps(v) + "\n" for v in values))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_malformed_line_and_failing_item_go_to_errors_and_the_rest_succeed(workdir: Path) -> None:
    lines = [json.dumps({"i": i, "text": "x" * i, "fail": i == 5}) for i in range(20)]
    lines[8] = '{"i": 8, "text": '  # malformed
    (workdir / "in.jsonl").write_text("\n".join(lines) + "\n")
    proc = cli(workdir, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl")
    assert proc.returncode == 1, proc.stderr
    assert "18 ok, 2 failed (1 malformed lines)" in proc.stderr
    out = records(workdir / "out.jsonl")
    assert [r["index"] for r in out] == [i for i in range(20) if i not in (5, 8)]  # input order
    assert all(r["output"] == {"i": r["index"], "len": r["index"]} for r in out)
    errors = {r["index"]: r for r in records(workdir / "err.jsonl")}
    assert set(errors) == {5, 8}
    assert set(errors[5]) == {"index", "id", "step", "error_type", "message", "traceback"}
    assert errors[5]["error_type"] == "ValueError" and "'check'" in errors[5]["step"]
    assert errors[5]["message"] == "cannot take item 5"
    assert "in check" in errors[5]["traceback"]  # the frame of the failing function
    assert errors[8]["error_type"] == "JSONDecodeError" and errors[8]["step"] == "input"
    assert "line 9" in errors[8]["message"]


def test_all_ok_exits_0_and_id_field_is_copied(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"doc_id": f"d{i}", "i": i, "text": "ab"} for i in range(30)])
    proc = cli(workdir, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--id-field", "doc_id",
               "--chunk-size", "4", "--max-in-flight", "3")
    assert proc.returncode == 0, proc.stderr
    out = records(workdir / "out.jsonl")
    assert out == [{"index": i, "id": f"d{i}", "output": {"i": i, "len": 2}} for i in range(30)]


def test_stdin_to_stdout(workdir: Path) -> None:
    data = "".join(json.dumps({"i": i}) + "\n" for i in range(10)) + "[oops\n"
    proc = cli(workdir, "chains:chain", "--input", "-", "--output", "-", stdin=data)
    assert proc.returncode == 1
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert out == [{"index": i, "output": {"i": i, "len": 0}} for i in range(10)]
    errors = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [(e["index"], e["step"], e["error_type"]) for e in errors] == [(10, "input", "JSONDecodeError")]


def test_unordered_is_complete(workdir: Path) -> None:
    docs = [{"i": i, "sleep": 0.03 if i % 5 == 0 else 0.0} for i in range(200)]
    write_jsonl(workdir / "in.jsonl", docs)
    proc = cli(workdir, "chains:slow_chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "e.jsonl",
               "--unordered", "--chunk-size", "1", "--max-in-flight", "8")
    assert proc.returncode == 1
    ok = [r["index"] for r in records(workdir / "out.jsonl")]
    failed = [r["index"] for r in records(workdir / "e.jsonl")]
    assert sorted(ok + failed) == list(range(200))
    assert set(failed) == {i for i in range(200) if i % 10 == 3}
    assert all(r["output"] == 2 * r["index"] for r in records(workdir / "out.jsonl"))


def test_outputs_that_are_not_json_become_error_records(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"i": i} for i in range(4)])
    proc = cli(workdir, "chains:not_json", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "e.jsonl")
    assert proc.returncode == 1
    assert [r["index"] for r in records(workdir / "out.jsonl")] == [0, 3]
    errors = records(workdir / "e.jsonl")
    assert [(e["index"], e["step"]) for e in errors] == [(1, "output"), (2, "output")]
    assert [e["error_type"] for e in errors] == ["TypeError", "ValueError"]


@pytest.mark.parametrize("unordered", [False, True], ids=["ordered", "unordered"])
def test_killed_run_resumes_with_every_item_exactly_once(workdir: Path, unordered: bool) -> None:
    n = 300
    write_jsonl(workdir / "in.jsonl", [{"i": i} for i in range(n)])
    args = ["chains:slow_chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl",
            "--chunk-size", "1", "--max-in-flight", "4", "--no-progress", *(["--unordered"] if unordered else [])]
    first_log, second_log = workdir / "calls1.log", workdir / "calls2.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rayrunnables.cli", "run", *args], cwd=workdir,
        env=env({"CALLS_LOG": str(first_log)}), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    out = workdir / "out.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 40):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = {r["index"] for r in records(out)} | {r["index"] for r in records(workdir / "err.jsonl")}
    assert 40 <= len(done_before) < n, "the run must be killed midway"
    with out.open("a") as f:  # what a kill during a write could leave: a partial last line
        f.write('{"index": 299, "outp')

    resumed = cli(workdir, *args, "--resume", extra_env={"CALLS_LOG": str(second_log)})
    assert resumed.returncode == 1, resumed.stderr  # items i % 10 == 3 fail
    assert f"{len(done_before):,} already done" in resumed.stderr
    ok = [r["index"] for r in records(out)]
    failed = [r["index"] for r in records(workdir / "err.jsonl")]
    assert sorted(ok + failed) == list(range(n))  # each item exactly once across both files
    assert set(failed) == {i for i in range(n) if i % 10 == 3}
    assert all(r["output"] == 2 * r["index"] for r in records(out))
    sent_again = {int(x) for x in second_log.read_text().split()}
    assert not sent_again & done_before  # items already recorded were never sent to the chain again
    if not unordered:
        assert ok == sorted(ok)


def test_bad_target_and_setup_errors_exit_2(workdir: Path) -> None:
    write_jsonl(workdir / "in.jsonl", [{"i": 0}])
    for target, message in [("chains", "MODULE:ATTR"), ("no_such_module:chain", "cannot import"),
                            ("chains:nope", "no attribute 'nope'")]:
        proc = cli(workdir, target, "--input", "in.jsonl", "--output", "out.jsonl")
        assert proc.returncode == 2, (target, proc.stderr)
        assert message in proc.stderr
    missing = cli(workdir, "chains:chain", "--input", "missing.jsonl", "--output", "out.jsonl")
    assert missing.returncode == 2 and "missing.jsonl" in missing.stderr
    no_resume = cli(workdir, "chains:chain", "--input", "in.jsonl", "--output", "-", "--resume")
    assert no_resume.returncode == 2 and "--resume" in no_resume.stderr


def test_ray_backend_end_to_end(workdir: Path) -> None:
    docs = [{"i": i, "text": "y" * 3, "fail": i == 7} for i in range(50)]
    write_jsonl(workdir / "in.jsonl", docs)
    proc = cli(workdir, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl",
               "--backend", "ray", "--no-progress", timeout=170)
    assert proc.returncode == 1, proc.stderr
    assert [r["index"] for r in records(workdir / "out.jsonl")] == [i for i in range(50) if i != 7]
    (error,) = records(workdir / "err.jsonl")
    assert error["index"] == 7 and error["error_type"] == "ValueError" and "'check'" in error["step"]
    assert "RemoteTraceback" in error["traceback"] and "in check" in error["traceback"]
