"""A CPU-heavy chain over a folder (issue 23): the data engine, hand-written Ray Data, the driver engine on Ray and
a plain loop in one process, on the same documents, in one run.

    python benchmarks/bench_cpu_chain.py                      # 8 files of 2,500 documents, ~1.7 ms each, 3 rounds
    python benchmarks/bench_cpu_chain.py --rounds 1 --per-file 1000   # quicker
    python benchmarks/bench_cpu_chain.py --write-results      # also replace its section of RESULTS.md

The chain is pure Python arithmetic, calibrated here to ~1.7 ms a document. One local Ray of ``--cpus`` CPUs is
started first (by this script) and every Ray method joins it as a driver (``--address``), so Ray's start-up
is excluded from every wall (the connect, ~1-3 s, is not). Each method is a subprocess, as a person runs it:

- plain loop: read the files, ``json.loads``, the function, write JSON Lines; one process;
- data engine: ``rayrunnables run cpuchain:chain --input docs/ --output out/`` (shards, ids, errors aside);
- hand-written Ray Data: ``read_json(docs).map(fn).write_json(out)``, the function per row;
- driver engine on Ray: ``rayrunnables run ... --input all.jsonl --backend ray`` (the same documents as one file).

Methods are interleaved round by round; the table has each one's median wall. Linux only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import load, write_section

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Data engine: a CPU-heavy chain on 2 cores (issue 23)"
TARGET_MS = 1.7
WHY = (
    "Where the data engine's lead comes from (8 files on 2 CPUs; `ray.timeline()` and the driver's own "
    "timestamps): with at least twice as many files as CPUs the read and the chain are one Ray Data stage (no "
    "document crosses the object store); Ray Data's per-operator resource reservation, which dispatched the "
    "next task only when one ended (the second CPU idle ~2 s at the start, ~0.1 s after every task), is off "
    "for that stage, whose outputs are counts only, with at most 2 tasks per CPU queued instead; the job's "
    "worker processes are started, and import what a batch needs, while the driver plans; and the command "
    "shuts Ray down as soon as the run ends. Hand-written Ray Data keeps Ray Data's defaults."
)

CHAIN = '''
from rayrunnables import RunnableLambda

LOOPS = {loops}

def work(doc):
    x = 0
    for i in range(LOOPS):
        x += i * i
    return {{"i": doc["i"], "x": x % 97}}

chain = RunnableLambda(work, name="work")
'''

PLAIN = '''
import json, os, sys
from cpuchain import work
folder, out = sys.argv[1], sys.argv[2]
with open(out, "w") as w:
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name)) as f:
            for n, line in enumerate(f):
                w.write(json.dumps({"index": n, "output": work(json.loads(line))}) + "\\n")
'''

RAY_DATA = '''
import sys
import ray, ray.data
from cpuchain import work
ray.init(address=sys.argv[3], log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
ray.data.read_json(sys.argv[1]).map(lambda row: {"output": work(row)}).write_json(sys.argv[2])
'''


def calibrate() -> int:
    """Loops of the chain's arithmetic that take ~1.7 ms here (best of 5)."""
    def once(loops: int) -> float:
        start = time.perf_counter()
        x = 0
        for i in range(loops):
            x += i * i
        return time.perf_counter() - start

    per_loop = min(once(200_000) for _ in range(5)) / 200_000
    return int(TARGET_MS / 1000 / per_loop)


def make(work: Path, files: int, per_file: int, loops: int) -> None:
    (work / "cpuchain.py").write_text(CHAIN.format(loops=loops))
    (work / "plain.py").write_text(PLAIN)
    (work / "raydata.py").write_text(RAY_DATA)
    (work / "docs").mkdir()
    with (work / "all.jsonl").open("w") as whole:
        for f in range(files):
            text = "".join(json.dumps({"i": f * per_file + i, "text": "lorem ipsum " * 8}) + "\n"
                           for i in range(per_file))
            (work / "docs" / f"part{f}.jsonl").write_text(text)
            whole.write(text)


def timed(cmd: list[str], work: Path) -> tuple[float, int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(work), str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAYRUNNABLES_BACKEND", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stderr[-1500:]


def methods(work: Path, address: str) -> dict[str, list[str]]:
    py, run = sys.executable, [sys.executable, "-m", "rayrunnables.cli", "run", "cpuchain:chain", "--no-progress"]
    return {
        "plain loop, one process": [py, "plain.py", "docs", "out_plain.jsonl"],
        "data engine": [*run, "--input", "docs", "--output", "out_data", "--address", address],
        "hand-written Ray Data": [py, "raydata.py", str(work / "docs"), str(work / "out_raydata"), address],
        "driver engine, --backend ray": [*run, "--input", "all.jsonl", "--output", "out_driver.jsonl",
                                         "--backend", "ray", "--address", address],
    }


def clear(work: Path) -> None:
    for name in ("out_plain.jsonl", "out_driver.jsonl", "out_data", "out_raydata"):
        path = work / name
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--per-file", type=int, default=2500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--pause", type=float, default=3.0)
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--quick", action="store_true", help="1 round of 8 files of 500 documents")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.per_file = 1, 500
    loops = calibrate()
    work = Path(tempfile.mkdtemp(prefix="rr_cpu_chain_"))
    import ray

    # this process starts the local Ray (its processes are its children, stopped by ray.shutdown) and the methods
    # join it as drivers
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    try:
        make(work, args.files, args.per_file, loops)
        walls: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for label, cmd in methods(work, address).items():
                clear(work)
                time.sleep(args.pause)
                print(f"round {r + 1}: {label} ... (load {load()})", file=sys.stderr, flush=True)
                wall, code, tail = timed(cmd, work)
                if code != 0:
                    raise SystemExit(f"{label} failed ({code}):\n{tail}")
                walls.setdefault(label, []).append(wall)
                print(f"  {wall:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    docs = args.files * args.per_file
    plain = statistics.median(walls["plain loop, one process"])
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_cpu_chain.py", *sys.argv[1:]])
    lines = [HEADING, "", f"Measured {when} with `{command}`.", "",
             f"- Python {platform.python_version()}, {platform.platform()}; CPUs: {os.cpu_count()}; Ray of "
             f"{args.cpus} CPUs started once (start-up excluded; each Ray method's connect included); load average "
             f"at the end: {load()} (1/5/15 min); the machine was shared with other work.",
             f"- {args.files} files of {args.per_file:,} documents ({docs:,}); the chain: pure Python arithmetic, "
             f"{loops:,} loops (~{TARGET_MS} ms a document); {args.rounds} rounds, methods interleaved, medians.", "",
             "| method | median wall | docs/s | vs the plain loop | walls |", "|---|---:|---:|---:|---|"]
    for label, values in walls.items():
        median = statistics.median(values)
        lines.append(f"| {label} | {median:.1f} s | {docs / median:,.0f} | {plain / median:.2f}x | "
                     + ", ".join(f"{v:.1f}" for v in values) + " |")
    lines += ["", WHY]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write_results:
        import bench_data

        bench_data.HEADING = HEADING
        write_section(text)


if __name__ == "__main__":
    main()
