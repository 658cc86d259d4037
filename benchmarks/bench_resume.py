"""Resume benchmark (issue 23): the memory of ``rayrunnables run --resume`` on the data engine does not grow with
the number of documents already done.

    python benchmarks/bench_resume.py                       # 2M documents; resume with 100k, then 1M, done
    python benchmarks/bench_resume.py --docs 400000 --done 20000,200000   # smaller, quicker
    python benchmarks/bench_resume.py --write-results       # also replace its section of RESULTS.md

The input is 8 JSON Lines files of small documents (``{"id": N, "t": "x"}``). For each count done, the
state to resume is made by a real run: the command over the same 8 files cut to their first lines (same
names, so the same ids), into a fresh output folder. Then the command resumes over the whole files into that
folder, as a person runs it (a subprocess starting its own local Ray, ``--id-field id``, so every partly done
file's ids are loaded by the worker that reads it: the costly case). Measured while it runs, from ``/proc``:
the driver's peak RSS (``VmHWM``) and the largest Ray worker's (every ``ray::`` process under the driver).
Target: with 1M of 2M done, both within 1.2x of the run with 100k done. Linux only.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import load, write_section
from bench_scale import _status

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Data engine: resume without the driver holding the ids (issue 23)"
FILES = 8
CHAIN = '''
from rayrunnables import RunnableLambda

chain = RunnableLambda(lambda doc: len(doc["t"]), name="length")
'''


@dataclass
class Result:
    done: int
    total: int
    wall_s: float
    driver_mb: float
    worker_mb: float
    exit_code: int
    stderr_tail: str


def make_files(folder: Path, total: int, upto: int) -> Path:
    """The 8 files with their first ``upto`` documents in all (reused when there)."""
    marker = folder / ".complete"
    if marker.exists():
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    per_file, keep = total // FILES, upto // FILES
    for f in range(FILES):
        lines = [json.dumps({"id": f * per_file + i, "t": "x"}) for i in range(keep)]
        (folder / f"part{f}.jsonl").write_text("\n".join(lines) + "\n")
    marker.write_text("")
    return folder


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"ray::")
    except OSError:
        return False


def run(args: list[str], cwd: Path) -> tuple[int, float, float, float, str]:
    """The command; its exit code, wall, the driver's peak RSS and the largest worker's (MB)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAYRUNNABLES_BACKEND", None)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rayrunnables.cli", "run", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    driver = worker = 0
    peaks: dict[int, int] = {}
    polls = 0
    while proc.poll() is None:
        driver = max(driver, _status(proc.pid).get("VmHWM", 0))
        if polls % 4 == 0:  # the process tree changes slowly: list it every 4th poll
            workers = [p for p in descendants(proc.pid) if is_worker(p)]
        for pid in workers:
            peaks[pid] = max(peaks.get(pid, 0), _status(pid).get("VmHWM", 0))
        polls += 1
        time.sleep(0.05)
    wall = time.perf_counter() - start
    worker = max(peaks.values(), default=0)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    return proc.returncode, wall, driver / 1024, worker / 1024, stderr[-600:]


def measure(total: int, done: int, data_dir: Path) -> Result:
    full = make_files(data_dir / f"all_{total}", total, total)
    part = make_files(data_dir / f"first_{done}_of_{total}", total, done)
    out = data_dir / f"out_{done}"
    shutil.rmtree(out, ignore_errors=True)
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(exist_ok=True)
    (chain_dir / "resumechain.py").write_text(CHAIN)
    common = ["resumechain:chain", "--output", str(out), "--id-field", "id", "--no-progress"]
    print(f"making the state: {done:,} done ... (load {load()})", file=sys.stderr, flush=True)
    code, wall, _, _, tail = run([*common, "--input", str(part)], chain_dir)
    if code != 0:
        raise SystemExit(f"the run that makes the state failed ({code}):\n{tail}")
    time.sleep(5)
    print(f"resuming {total:,} with {done:,} done ... (load {load()})", file=sys.stderr, flush=True)
    code, wall, driver, worker, tail = run([*common, "--input", str(full), "--resume"], chain_dir)
    print(f"  driver {driver:,.0f} MB, largest worker {worker:,.0f} MB, {wall:.1f} s; {tail.strip()[-200:]}",
          file=sys.stderr)
    return Result(done, total, wall, driver, worker, code, tail)


def section(results: list[Result], command: str) -> str:
    import ray

    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [HEADING, "", f"Measured {when} with `{command}`.", "",
             f"- Python {platform.python_version()}, {platform.platform()}; ray {ray.__version__}; "
             f"CPUs: {os.cpu_count()}; load average at the end: {load()} (1/5/15 min); the machine was shared "
             "with other work.",
             f"- {FILES} JSON Lines files of small documents; the state to resume made by a real run over the same "
             "files cut to their first lines; the resume runs with `--id-field id` (each partly done file's ids "
             "are read by the worker that reads the file).", "",
             "| documents | done before | exit | driver peak RSS (VmHWM) | largest worker's peak RSS | wall |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.total:,} | {r.done:,} | {r.exit_code} | {r.driver_mb:,.0f} MB | {r.worker_mb:,.0f} MB"
                     f" | {r.wall_s:,.1f} s |")
    if len(results) >= 2:
        small, big = results[0], results[-1]
        d, w = big.driver_mb / small.driver_mb, big.worker_mb / small.worker_mb
        ok = "yes" if max(d, w) <= 1.2 else "no"
        lines += ["", f"- {big.done:,} done against {small.done:,} done: driver {d:.2f}x, largest worker {w:.2f}x "
                  f"(target <= 1.2x: {ok}). Before this change (the driver gathered every done id and each worker "
                  "fetched a copy) the issue measured 1.71x and 1.73x with 1M done against 100k."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=2_000_000)
    parser.add_argument("--done", default="100000,1000000", help="comma-separated counts done before resuming")
    parser.add_argument("--data-dir", default="/tmp/rayrunnables_bench_resume")
    parser.add_argument("--write-results", action="store_true")
    parser.add_argument("--quick", action="store_true", help="200k documents, 10k and 100k done")
    args = parser.parse_args()
    if args.quick:
        args.docs, args.done = 200_000, "10000,100000"
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    results = [measure(args.docs, int(n), data_dir) for n in args.done.split(",")]
    text = section(results, "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_resume.py",
                                                                         *sys.argv[1:]]))
    print(text)
    if args.write_results:
        import bench_data

        bench_data.HEADING = HEADING  # write_section replaces the section under this heading
        write_section(text)


if __name__ == "__main__":
    main()
