"""``rayrunnables run --timeout`` and ``--max-failures`` (exit code 3, then ``--resume`` completes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parent.parent

CHAINS = '''
import os, time
from rayrunnables import RunnableLambda

def step(doc):
    time.sleep(doc.get("sleep", 0))
    if doc["i"] % 10 == 3 and not os.environ.get("FIXED"):
        raise RuntimeError(f"item {doc['i']} fails")
    return doc["i"] * 2

chain = RunnableLambda(step, name="step")
'''


def cli(workdir: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra_env or {})
    return subprocess.run([sys.executable, "-m", "rayrunnables.cli", "run", *args, "--no-progress"], cwd=workdir,
                          capture_output=True, text=True, timeout=150, env=env)


def records(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_timeout_makes_timeout_error_records(tmp_path: Path) -> None:
    (tmp_path / "chains.py").write_text(CHAINS)
    docs = [{"i": i, "sleep": 120 if i == 4 else 0} for i in range(8)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    proc = cli(tmp_path, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl",
               "--timeout", "1.5", extra_env={"FIXED": "1"})
    assert proc.returncode == 1, proc.stderr
    errors = records(tmp_path / "err.jsonl")
    assert [(e["index"], e["error_type"]) for e in errors] == [(4, "TimeoutError")]
    assert sorted(r["index"] for r in records(tmp_path / "out.jsonl")) == [0, 1, 2, 3, 5, 6, 7]


def test_timeout_must_be_positive(tmp_path: Path) -> None:
    (tmp_path / "chains.py").write_text(CHAINS)
    (tmp_path / "in.jsonl").write_text('{"i": 1}\n')
    proc = cli(tmp_path, "chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--timeout", "0")
    assert proc.returncode == 2


def test_failure_budget_exits_3_and_resume_completes(tmp_path: Path) -> None:
    (tmp_path / "chains.py").write_text(CHAINS)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"i": i, "sleep": 0.01}) + "\n" for i in range(100)))
    args = ["chains:chain", "--input", "in.jsonl", "--output", "out.jsonl", "--errors", "err.jsonl"]
    proc = cli(tmp_path, *args, "--max-failures", "2")
    assert proc.returncode == 3, proc.stderr
    assert "failure budget exceeded" in proc.stderr
    first = records(tmp_path / "out.jsonl") + records(tmp_path / "err.jsonl")
    indices = [r["index"] for r in first]
    assert len(indices) == len(set(indices)) < 100  # stopped part-way, nothing recorded twice
    assert len(records(tmp_path / "err.jsonl")) <= 3
    proc = cli(tmp_path, *args, "--resume")
    assert proc.returncode == 1, proc.stderr  # some items fail: recorded, the run completes
    out, err = records(tmp_path / "out.jsonl"), records(tmp_path / "err.jsonl")
    indices = sorted(r["index"] for r in out + err)
    assert indices == list(range(100))  # every item exactly once across both files
    assert sorted(r["index"] for r in err) == [i for i in range(100) if i % 10 == 3]
