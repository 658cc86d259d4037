"""Scale benchmark: ``rayrunnables run`` over 100,000 and 1,000,000 generated ~1 KB documents.

    python benchmarks/bench_scale.py                          # 100k and 1M docs, Ray backend
    python benchmarks/bench_scale.py --sizes 20000 --quick     # smoke check
    python benchmarks/bench_scale.py --write-results           # also append the table to RESULTS.md

For each size it runs the command in a subprocess, exactly as a person would
(``python -m rayrunnables.cli run benchchain:chain --input docs.jsonl --output out.jsonl --backend ray``),
with a trivial chain (the length of one field), and measures:

- driver peak RSS: the kernel's high-water mark (``VmHWM`` in ``/proc/PID/status``) of the command's
  process, polled until it exits; also the peak of its anonymous (private heap) part, ``RssAnon``,
  which excludes pages of Ray's shared-memory object store that the driver maps;
- throughput: documents per second from the first output line to the end (Ray's start-up excluded),
  and end to end.

Targets (issue 5): the 1M run's peak within 1.5x of the 100k run's, and >= 5,000 docs/s. Input files
are generated under /tmp (``--data-dir``) and reused; nothing large is written into the repository.
Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS_MD = HERE / "RESULTS.md"
HEADING = "## Scale: rayrunnables run (Ray backend)"

CHAIN_MODULE = '''
from rayrunnables import RunnableLambda

def text_length(doc):
    return len(doc["text"])

chain = RunnableLambda(text_length, name="text_length")
'''


@dataclass
class Result:
    docs: int
    wall_s: float
    processing_s: float
    peak_rss_mb: float
    peak_anon_mb: float
    exit_code: int
    out_lines: int

    @property
    def rate(self) -> float:
        return self.docs / self.processing_s if self.processing_s > 0 else 0.0

    @property
    def rate_e2e(self) -> float:
        return self.docs / self.wall_s


def make_docs(path: Path, n: int, doc_bytes: int) -> None:
    """``n`` JSON lines of about ``doc_bytes`` bytes each; reused when already there."""
    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) == n:
                return
    filler = ("lorem ipsum dolor sit amet " * (doc_bytes // 27 + 1))[: max(0, doc_bytes - 40)]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        batch = []
        for i in range(n):
            batch.append(json.dumps({"id": i, "text": filler}))
            if len(batch) == 10_000:
                f.write("\n".join(batch) + "\n")
                batch.clear()
        if batch:
            f.write("\n".join(batch) + "\n")
    tmp.replace(path)


def _status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    fields[key] = int(value.split()[0])  # kB
    except (FileNotFoundError, ProcessLookupError):
        pass
    return fields


def run_once(n: int, data_dir: Path, args: argparse.Namespace) -> Result:
    docs = data_dir / f"docs_{n}.jsonl"
    make_docs(docs, n, args.doc_bytes)
    out = data_dir / f"out_{n}.jsonl"
    errs = data_dir / f"errors_{n}.jsonl"
    chain_dir = data_dir / "chain"
    chain_dir.mkdir(exist_ok=True)
    (chain_dir / "benchchain.py").write_text(CHAIN_MODULE)
    for path in (out, errs):
        path.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "rayrunnables.cli", "run", "benchchain:chain", "--input", str(docs),
           "--output", str(out), "--errors", str(errs), "--backend", args.backend, "--no-progress",
           *(["--unordered"] if args.unordered else [])]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    env.pop("RAYRUNNABLES_BACKEND", None)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=chain_dir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hwm = anon = 0
    first_output: float | None = None
    while proc.poll() is None:
        status = _status(proc.pid)
        hwm = max(hwm, status.get("VmHWM", 0))
        anon = max(anon, status.get("RssAnon", 0))
        if first_output is None and out.exists() and out.stat().st_size > 0:
            first_output = time.perf_counter()
        time.sleep(0.05)
    end = time.perf_counter()
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        print(stderr[-3000:], file=sys.stderr)
    with out.open("rb") as f:
        lines = sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b""))
    return Result(n, end - start, end - (first_output or start), hwm / 1024, anon / 1024, proc.returncode, lines)


def table(results: list[Result], args: argparse.Namespace) -> str:
    rows = [
        "| documents | exit | output lines | driver peak RSS (VmHWM) | driver peak RssAnon"
        " | docs/s (after start-up) | docs/s (end to end) | wall |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        rows.append(
            f"| {r.docs:,} | {r.exit_code} | {r.out_lines:,} | {r.peak_rss_mb:,.0f} MB | {r.peak_anon_mb:,.0f} MB"
            f" | {r.rate:,.0f} | {r.rate_e2e:,.0f} | {r.wall_s:,.1f} s |"
        )
    lines = ["\n".join(rows), ""]
    if len(results) >= 2:
        small, big = results[0], results[-1]
        ratio = big.peak_rss_mb / small.peak_rss_mb
        slowest = min(r.rate for r in results)
        lines.append(f"- peak RSS ratio {big.docs:,} / {small.docs:,} docs: {ratio:.2f}x (target <= 1.5x: "
                     f"{'yes' if ratio <= 1.5 else 'no'})")
        meets = "yes" if slowest >= 5000 else "no"
        lines.append(f"- slowest throughput after start-up: {slowest:,.0f} docs/s (target >= 5,000: {meets})")
    return "\n".join(lines)


METHOD = (
    "Method: one `rayrunnables run` subprocess per size, trivial chain `len(doc['text'])`, ~1 KB documents, "
    "in-order output. Peak RSS is the driver process's VmHWM (RssAnon: its private heap, without mapped "
    "object-store pages). docs/s after start-up counts from the first output line; end to end includes "
    "starting a local Ray (15-35 s on a 2-core machine), which dominates the 100k run."
)


def append_results(text: str, command: str) -> None:
    """Append (never rewrite: others may be editing the file) one dated section."""
    when = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = (f"\n{HEADING}\n\nMeasured {when} with `{command}`.\n\n"
             f"- Python {platform.python_version()}, {platform.platform()}; CPUs: {os.cpu_count()}\n\n{text}\n"
             f"{METHOD}\n")
    current = RESULTS_MD.read_text() if RESULTS_MD.exists() else "# Benchmark results\n"
    with RESULTS_MD.open("a") as f:
        if not current.endswith("\n"):
            f.write("\n")
        f.write(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated document counts")
    parser.add_argument("--doc-bytes", type=int, default=1000)
    parser.add_argument("--backend", default="ray", choices=["ray", "local"])
    parser.add_argument("--unordered", action="store_true")
    parser.add_argument("--data-dir", default="/tmp/rayrunnables_bench_scale")
    parser.add_argument("--write-results", action="store_true", help=f"append the table to {RESULTS_MD}")
    parser.add_argument("--quick", action="store_true", help="alias for --sizes 20000,100000")
    args = parser.parse_args()
    sizes = [20_000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for n in sizes:
        print(f"running {n:,} documents ...", file=sys.stderr, flush=True)
        results.append(run_once(n, data_dir, args))
        print(table(results[-1:], args).split("\n")[2], file=sys.stderr, flush=True)
    text = table(results, args)
    print(text)
    if args.write_results:
        append_results(text, "python " + " ".join(shlex.quote(a) for a in ["benchmarks/bench_scale.py", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
