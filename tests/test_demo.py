"""The README's first command: ``rayrunnables demo`` starts its own local Ray and compares backends."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.timeout(240)
def test_demo_runs_in_process_and_on_a_ray_it_starts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rayrunnables.cli", "demo", "--docs", "6"],
        capture_output=True, text=True, timeout=220, check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "[local]" in out and "[ray]" in out
    assert "6 embeddings ran on" in out
    assert "Ray vs in-process" in out
