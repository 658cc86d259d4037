"""Streaming (issue 13): how soon the first chunk arrives, in-process, on Ray, and with langchain-core.

    python benchmarks/bench_streaming.py                   # about 1 minute on 2 cores
    python benchmarks/bench_streaming.py --write-results   # also replace the section of benchmarks/RESULTS.md

The chain: a lambda, then a generator that yields 10 chunks 0.2 s apart (a model's tokens). Timed from the
call to the first chunk and to the last, median of interleaved rounds after one warm-up stream each. On
Ray the chain runs in a worker as a generator task; its chunks come back as they are produced.
Target: Ray's first chunk within 0.3 s of the in-process first chunk.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import RESULTS_MD, command_line, environment, neutral_environment, settle, write_results  # noqa: E402

HEADING = "Streaming (issue 13)"
CHUNKS, GAP_S = 10, 0.2


def prepare(text: str) -> str:
    return text.strip()


def tokens(text: str) -> Iterator[str]:
    for i in range(CHUNKS):
        time.sleep(GAP_S)
        yield f"{text}{i} "


def timed(stream: Callable[[], Iterator[Any]]) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    for _ in stream():
        if first is None:
            first = time.perf_counter() - start
    assert first is not None
    return first, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write-results", action="store_true")
    args = parser.parse_args(argv)
    neutral_environment("RAY_ADDRESS")

    import ray
    from langchain_core.runnables import RunnableLambda as LCLambda

    import rayrunnables as rr

    env = environment()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        ours = rr.RunnableLambda(prepare) | rr.RunnableLambda(tokens)
        theirs = LCLambda(prepare) | LCLambda(tokens)
        methods: dict[str, Callable[[], Iterator[Any]]] = {
            "rayrunnables, local backend": lambda: ours.stream(" t", {"backend": "local"}),
            "rayrunnables, Ray backend (the chain in a worker)": lambda: ours.stream(" t", {"backend": "ray"}),
            "langchain-core": lambda: theirs.stream(" t"),
        }
        expected = list(theirs.stream(" t"))
        for name, stream in methods.items():  # warm-up, and the same chunks from each
            assert list(stream()) == expected, name
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
        for _ in range(args.rounds):
            for name, stream in methods.items():
                settle()
                times[name].append(timed(stream))
    finally:
        ray.shutdown()

    first = {name: statistics.median(t[0] for t in samples) for name, samples in times.items()}
    total = {name: statistics.median(t[1] for t in samples) for name, samples in times.items()}
    local, on_ray = first["rayrunnables, local backend"], first["rayrunnables, Ray backend (the chain in a worker)"]
    lines = [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command_line(__file__)}`.",
        "",
        *env,
        "",
        "| implementation | first chunk (s) | all 10 chunks (s) |",
        "|---|---:|---:|",
        *(f"| {name} | {first[name]:.3f} | {total[name]:.3f} |" for name in methods),
        "",
        f"Ray's first chunk comes {on_ray - local:+.3f} s after the in-process first chunk (target: within 0.3 s): "
        f"**{'met' if on_ray - local <= 0.3 else 'not met'}**. Chain: a lambda, then a generator yielding "
        f"{CHUNKS} chunks {GAP_S} s apart; median of {args.rounds} interleaved rounds after a warm-up stream each.",
        "",
    ]
    print("\n".join(lines))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
