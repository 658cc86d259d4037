"""Data engine benchmark: ``rayrunnables run`` over a folder of 8 JSON Lines files on Ray Data, against the
driver engine on the same documents, and over a local cluster of 1, 2 and 3 nodes.

    python benchmarks/bench_data.py                              # 100k and 1M documents, then 1/2/3 nodes
    python benchmarks/bench_data.py --quick                      # 20k and 100k, scaling on 100k: a smoke check
    python benchmarks/bench_data.py --write-results              # also replace its section of RESULTS.md

Every run is the command in a subprocess, as a person runs it, with a trivial chain (the length of one
field) over ~1 KB documents. For each run: the driver process's peak RSS (``VmHWM``) and peak private
heap (``RssAnon``, without mapped object-store pages), polled from ``/proc`` until it exits; documents per
second from the first output (the first shard, or the first line) to the end, and end to end (Ray's
start-up included). Targets (issue 16): the data engine's 1M peak within 1.2x of its 100k peak, and
docs/s at least the driver engine's. Scaling: ``cluster/local_cluster.py``, a head with 0 CPUs and
1-CPU worker nodes added one at a time (token auth on). Inputs are generated under /tmp (``--data-dir``)
and reused; nothing large goes into the repository. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the driver-engine benchmark's trivial chain, and its reader of a process's peak memory (/proc)
from bench_scale import CHAIN_MODULE, _status

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
HEADING = "## Data engine: folders of files on Ray Data (issue 16)"
FILES = 8



@dataclass
class Result:
    label: str
    docs: int
    wall_s: float
    processing_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    exit_code: int
    outputs: int

    @property
    def rate(self) -> float:
        return self.docs / self.processing_s if self.processing_s > 0 else 0.0

    @property
    def rate_e2e(self) -> float:
        return self.docs / self.wall_s


def make_corpus(data_dir: Path, n: int, doc_bytes: int) -> tuple[Path, Path]:
    """``n`` documents as a folder of ``FILES`` files and as one file (same documents); reused when there."""
    folder, single = data_dir / f"docs_{n}", data_dir / f"docs_{n}.jsonl"
    marker = folder / ".complete"
    if marker.exists() and single.exists():
        return folder, single
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    filler = ("lorem ipsum dolor sit amet " * (doc_bytes // 27 + 1))[: max(0, doc_bytes - 40)]
    per_file = -(-n // FILES)
    with single.open("w") as whole:
        for f in range(FILES):
            lines = [json.dumps({"id": i, "text": filler}) for i in range(f * per_file, min(n, (f + 1) * per_file))]
            text = "\n".join(lines) + "\n"
            (folder / f"part{f}.jsonl").write_text(text)
            whole.write(text)
    marker.write_text("")
    return folder, single


def _has_output(out: Path) -> bool:
    if out.is_dir():
        return any(p.name.startswith("part-") for p in out.iterdir())
    return out.exists() and out.stat().st_size > 0


def _count_outputs(out: Path) -> int:
    files = sorted(p for p in out.iterdir() if p.name.startswith("part-")) if out.is_dir() else [out]
    total = 0
    for path in files:
        with path.open("rb") as f:
            total += sum(block.count(b"\n") for block in iter(lambda f=f: f.read(1 << 20), b""))
    return total


def run_once(label: str, n: int, source: Path, extra: list[str], data_dir: Path,
             env_extra: dict[str, str] | None = None) -> Result:
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(exist_ok=True)
    (chain_dir / "benchchain.py").write_text(CHAIN_MODULE)
    out, errs = data_dir / "out", data_dir / "errors"
    for path in (out, errs):
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "rayrunnables.cli", "run", "benchchain:chain", "--input", str(source),
           "--output", str(out), "--errors", str(errs), "--no-progress", *extra]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAYRUNNABLES_BACKEND", None)
    env.update(env_extra or {})
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=chain_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = anon = 0
    first: float | None = None
    while proc.poll() is None:
        status = _status(proc.pid)
        hwm, anon = max(hwm, status.get("VmHWM", 0)), max(anon, status.get("RssAnon", 0))
        if first is None and _has_output(out):
            first = time.perf_counter()
        time.sleep(0.05)
    end = time.perf_counter()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
    return Result(label, n, end - start, end - (first or start), hwm / 1024, anon / 1024, proc.returncode,
                  _count_outputs(out))


def settle(seconds: float) -> None:
    time.sleep(seconds)


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def engines(sizes: list[int], data_dir: Path, doc_bytes: int, pause: float) -> list[Result]:
    """Per size: the data engine on the folder, then the driver engine (Ray backend, local backend) on one file."""
    results = []
    for n in sizes:
        folder, single = make_corpus(data_dir, n, doc_bytes)
        runs: list[tuple[str, Path, list[str]]] = [("data engine, 8 files", folder, [])]
        if n == max(sizes):
            runs += [("driver engine, --backend ray, 1 file", single, ["--backend", "ray"]),
                     ("driver engine, --backend local, 1 file", single, ["--backend", "local"])]
        for label, source, extra in runs:
            print(f"{label}: {n:,} documents ... (load {load()})", file=sys.stderr, flush=True)
            results.append(run_once(label, n, source, extra, data_dir))
            print(f"  {results[-1].rate:,.0f} docs/s, {results[-1].peak_rss_mb:,.0f} MB", file=sys.stderr)
            settle(pause)
    return results


def scaling(n: int, data_dir: Path, doc_bytes: int, max_nodes: int, pause: float) -> list[tuple[int, Result]]:
    spec = importlib.util.spec_from_file_location("local_cluster", REPO / "cluster" / "local_cluster.py")
    assert spec is not None and spec.loader is not None
    local_cluster: Any = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(local_cluster)
    folder, _ = make_corpus(data_dir, n, doc_bytes)
    state_dir = tempfile.mkdtemp(prefix="rrc-data-", dir="/tmp")
    rows = []
    try:
        state = local_cluster.start(workers=1, cpus=1, head_cpus=0, state_dir=state_dir, dashboard=False)
        env = local_cluster.client_env(state)
        for nodes in range(1, max_nodes + 1):
            if nodes > 1:
                local_cluster.add_node(state_dir, cpus=1)
            settle(pause)
            print(f"scaling: {nodes} worker node(s), {n:,} documents ... (load {load()})", file=sys.stderr)
            result = run_once(f"{nodes} node(s)", n, folder, [], data_dir, env_extra=env)
            rows.append((nodes, result))
            print(f"  {result.rate:,.0f} docs/s", file=sys.stderr)
    finally:
        if Path(state_dir, "state.json").exists():
            local_cluster.stop(state_dir)
        shutil.rmtree(state_dir, ignore_errors=True)
    return rows


def section(results: list[Result], rows: list[tuple[int, Result]], command: str, args: argparse.Namespace) -> str:
    import ray

    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [HEADING, "", f"Measured {when} with `{command}`.", "",
             f"- Python {platform.python_version()}, {platform.platform()}; ray {ray.__version__}; "
             f"CPUs: {os.cpu_count()}; load average at the end: {load()} (1/5/15 min)",
             f"- ~{args.doc_bytes} B documents, trivial chain `len(doc['text'])`; the data engine reads a folder "
             f"of {FILES} files, the driver engine the same documents as one file.", "",
             "| run | documents | exit | outputs | driver peak RSS (VmHWM) | driver peak RssAnon"
             " | docs/s (after first output) | docs/s (end to end) | wall |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r.label} | {r.docs:,} | {r.exit_code} | {r.outputs:,} | {r.peak_rss_mb:,.0f} MB"
                     f" | {r.peak_anon_mb:,.0f} MB | {r.rate:,.0f} | {r.rate_e2e:,.0f} | {r.wall_s:,.1f} s |")
    data = [r for r in results if r.label.startswith("data")]
    driver = [r for r in results if r.label.startswith("driver")]
    lines.append("")
    if len(data) >= 2:
        ratio = data[-1].peak_rss_mb / data[0].peak_rss_mb
        anon = data[-1].peak_anon_mb / data[0].peak_anon_mb
        lines.append(f"- data engine peak RSS {data[-1].docs:,} / {data[0].docs:,} documents: {ratio:.2f}x "
                     f"(RssAnon {anon:.2f}x); target <= 1.2x: {'yes' if ratio <= 1.2 else 'no'}")
    if driver:
        best, ours = max(driver, key=lambda r: r.rate), data[-1]
        lines.append(f"- data engine {ours.rate:,.0f} docs/s against the faster driver engine run "
                     f"({best.label}) {best.rate:,.0f} docs/s: {ours.rate / best.rate:.2f}x; end to end "
                     f"{ours.rate_e2e:,.0f} against {best.rate_e2e:,.0f} ({ours.rate_e2e / best.rate_e2e:.2f}x)")
    if rows:
        base = rows[0][1].rate
        lines += ["", f"Scaling: the data engine over {rows[0][1].docs:,} documents ({FILES} files) on "
                  "`cluster/local_cluster.py`, a head with 0 CPUs and 1-CPU worker nodes added one at a time.", "",
                  "| worker nodes | docs/s (after first output) | speedup | docs/s (end to end) | wall | exit |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for nodes, r in rows:
            lines.append(f"| {nodes} | {r.rate:,.0f} | {r.rate / base:.2f}x | {r.rate_e2e:,.0f} | {r.wall_s:.1f} s"
                         f" | {r.exit_code} |")
    lines += ["", READING]
    return "\n".join(lines) + "\n"


READING = """How to read it. **Memory:** the data engine's driver holds no document, so its peak does not grow with
the count; it is Ray's client plus Ray Data's executor (~230 MB), more than the driver engine with the
local backend and about the same as the driver engine on Ray. **Throughput:** on a 2-core machine the
data engine can match the driver engine on Ray, but not the driver engine with the local backend: a
trivial chain in one process, with nothing crossing a process boundary, is faster than anything two cores
can do with the reads, the chain and the writes split over Ray Data workers while the driver's executor,
the raylet and the GCS share the same two cores. Rates move by 10-20% between runs of the script here.
**Scaling:** the 1/2/3-node rows are `ray start` processes on the same two cores: they show that the work
spreads (the cluster test checks outputs from several nodes) and that adding nodes breaks nothing, not a
speedup. The point of the data engine is the machine count; a many-core or multi-machine run is what
would show it."""


def write_section(text: str) -> None:
    """Replace this script's section of RESULTS.md (or append it); the other sections are kept."""
    current = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    start = current.find(HEADING)
    if start < 0:
        current = current.rstrip("\n") + "\n\n" + text
    else:
        end = current.find("\n## ", start + len(HEADING))
        current = current[:start] + text + ("" if end < 0 else current[end:])
    RESULTS_MD.write_text(current)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated document counts")
    parser.add_argument("--scaling-docs", type=int, default=200_000, help="documents for the 1/2/3-node rows")
    parser.add_argument("--max-nodes", type=int, default=3)
    parser.add_argument("--doc-bytes", type=int, default=1000)
    parser.add_argument("--pause", type=float, default=5.0, help="seconds to settle between runs")
    parser.add_argument("--data-dir", default="/tmp/rayrunnables_bench_data")
    parser.add_argument("--no-scaling", action="store_true")
    parser.add_argument("--write-results", action="store_true", help=f"replace this section of {RESULTS_MD}")
    parser.add_argument("--quick", action="store_true", help="sizes 20k,100k; scaling on 100k")
    args = parser.parse_args()
    sizes = [20_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    scaling_docs = 100_000 if args.quick else args.scaling_docs
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    results = engines(sizes, data_dir, args.doc_bytes, args.pause)
    rows = [] if args.no_scaling else scaling(scaling_docs, data_dir, args.doc_bytes, args.max_nodes, args.pause)
    text = section(results, rows, "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_data.py",
                                                                               *sys.argv[1:]]), args)
    print(text)
    if args.write_results:
        write_section(text)


if __name__ == "__main__":
    main()
