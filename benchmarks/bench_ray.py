"""Ray backend benchmarks (issue 3): rayrunnables on Ray side by side with its peers, in one run.

    python benchmarks/bench_ray.py                   # full run (about 3 minutes on 2 cores)
    python benchmarks/bench_ray.py --quick           # one round per method, fewer latency samples
    python benchmarks/bench_ray.py --write-results   # also replace the "## Ray backend" section of RESULTS.md

Ray is started once, by this script, with ``ray.init(address="local", num_cpus=2, include_dashboard=False)`` and the
settings of a local Ray that rayrunnables starts itself (``LOCAL_RAY_CONFIG``: idle task workers kept 60 s)
and shut down at the end; every number is taken after Ray is up and warm. Three workloads:

- **cpu**: 64 items of a ~50 ms pure-Python step (an arithmetic loop calibrated at start-up): a sequential
  loop, langchain-core ``RunnableLambda(f).batch`` (threads), ``ProcessPoolExecutor(2)``, hand-written Ray
  (one task per item, ``ray.get``) and rayrunnables on Ray (``batch``, ``.map().invoke``, and a ``.map()``
  inside a chain, which runs as a map task beside its list: one more hop for its outputs). Target:
  rayrunnables >= 1.8x the sequential loop (2 cores: the limit is 2.0x). On this VM two busy processes
  each run 5-20% slower than one alone (shared caches, a host that is not ours), so every row is also
  compared, round by round, with the warmed process pool: what two processes give here at that moment
  with the least machinery.
- **trivial**: ``RunnableLambda(x + 1).map()`` over 100,000 ints on Ray, µs per item end to end. Target:
  <= 20 µs/item; the same ``.map()`` inside a chain (a map task) for the cost of that hop. For scale:
  hand-written Ray with one task per item (on 2,000 items) and with 8 chunks.
- **latency**: a 3-step chain of 10 ms steps, ``invoke`` on Ray vs hand-written chained refs
  (``f3.remote(f2.remote(f1.remote(x)))``), median of interleaved calls. Target: within 20% of hand-written.

See benchmarks/README.md for what each row measures and why.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_core import (  # noqa: E402
    RESULTS_MD,
    _loadavg,
    command_line,
    environment,
    neutral_environment,
    settle,
    write_results,
)

from rayrunnables.backends.ray.backend import LOCAL_RAY_CONFIG  # noqa: E402

HEADING = "Ray backend"
# the settings of a local Ray that rayrunnables starts itself (idle task workers kept 60 s: ``LOCAL_RAY_CONFIG``)
RAY_INIT = {"address": "local", "num_cpus": 2, "include_dashboard": False, "_system_config": LOCAL_RAY_CONFIG}

CPU_ITEMS = 64
PROCESS_POOL = "`ProcessPoolExecutor(2).map`"
CPU_ITEM_S = 0.05
CPU_ROUNDS = 7
TRIVIAL_ITEMS = 100_000
PER_TASK_ITEMS = 2_000
STEP_S = 0.01
IN_CHAIN_CPU = "rayrunnables `(RunnableLambda(as_list) | RunnableLambda(f).map()).invoke(items, ray)`"
IN_CHAIN_TRIVIAL = "rayrunnables `(RunnableLambda(as_list) | RunnableLambda(inc).map()).invoke(items, ray)`"


# ------------------------------------------------------------------------------------------------
# The user code: module-level functions, so ProcessPoolExecutor can pickle them by reference
# ------------------------------------------------------------------------------------------------


def burn(loops: int) -> int:
    """Pure-Python arithmetic: holds the GIL for its whole run."""
    acc = 0
    for i in range(loops):
        acc = (acc + i * i) % 1_000_003
    return acc


def cpu_step(item: tuple[int, int]) -> int:
    """The ~50 ms CPU-bound item: ``(index, loops)`` -> a number that depends on both."""
    index, loops = item
    return index * 1_000_003 + burn(loops)


def calibrate(seconds: float) -> int:
    """Loop count for which ``burn`` takes ``seconds`` here: median of 7 runs of >= 0.1 s each (this VM's
    core speed drifts by tens of percent; the table reports the per-item time actually measured)."""
    loops = 20_000
    while _timed(burn, loops) < 0.1:
        loops *= 2
    took = statistics.median(_timed(burn, loops) for _ in range(7))
    return max(1, int(loops * seconds / took))


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def as_list(xs: list[Any]) -> list[Any]:
    """The step before a ``.map()`` inside a chain: it makes the list in a task, so the map runs as a map
    task (the one scheduler, beside the list) and its outputs take one more hop than the driver's ``.map()``."""
    return list(xs)


def inc(x: int) -> int:
    return x + 1


def inc_chunk(xs: list[int]) -> list[int]:
    return [x + 1 for x in xs]


def sleep_step(x: int) -> int:
    time.sleep(STEP_S)
    return x + 1


# ------------------------------------------------------------------------------------------------
# Rows
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    implementation: str
    result: str
    relative: str  # vs the workload's baseline (speedup, ratio), or ""
    target: str = ""
    meets: bool | None = None


def _check(name: str, got: Any, expected: Any) -> None:
    if got != expected:
        raise AssertionError(f"{name}: wrong output {got!r:.200} (expected {expected!r:.200})")


def bench_cpu(ray: Any, rr: Any, lc: Any, rounds: int, loops: int) -> list[Row]:
    """64 x ~50 ms CPU items: each method once per round (rounds interleaved), median of the rounds."""
    items = [(i, loops) for i in range(CPU_ITEMS)]
    expected = [cpu_step(item) for item in items[:2]]
    print(f"  calibrated: {loops:,} loops ~ {CPU_ITEM_S * 1e3:.0f} ms per item", file=sys.stderr)

    remote_step = ray.remote(cpu_step)
    rr_step = rr.RunnableLambda(cpu_step)
    rr_map = rr_step.map()
    rr_in_chain = rr.RunnableLambda(as_list) | rr_map  # the list made by a task: the map runs as a map task
    lc_step = lc.RunnableLambda(cpu_step)
    ray_cfg = {"backend": "ray"}
    # spawn, not fork: this process runs Ray's threads. Started and warmed before any timing.
    ppe = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"))
    warm = [(i, 1_000) for i in range(8)]
    for warm_up in (
        lambda: list(ppe.map(cpu_step, warm)),
        lambda: ray.get([remote_step.remote(x) for x in warm]),
        lambda: rr_step.batch(warm, ray_cfg),
        lambda: rr_map.invoke(warm, ray_cfg),
        lambda: rr_in_chain.invoke(warm, ray_cfg),
    ):
        warm_up()

    methods: dict[str, Callable[[], list[int]]] = {
        "sequential loop": lambda: [cpu_step(x) for x in items],
        "langchain-core `RunnableLambda(f).batch` (threads)": lambda: lc_step.batch(items),
        PROCESS_POOL: lambda: list(ppe.map(cpu_step, items)),
        "hand-written Ray: one task per item, `ray.get`": lambda: ray.get([remote_step.remote(x) for x in items]),
        "rayrunnables `RunnableLambda(f).batch(items, ray)`": lambda: rr_step.batch(items, ray_cfg),
        "rayrunnables `RunnableLambda(f).map().invoke(items, ray)`": lambda: rr_map.invoke(items, ray_cfg),
        IN_CHAIN_CPU: lambda: rr_in_chain.invoke(items, ray_cfg),
    }
    times: dict[str, list[float]] = {name: [] for name in methods}
    try:
        for _ in range(rounds):
            for name, run in methods.items():
                settle()  # nothing of the previous method still running
                start = time.perf_counter()
                out = run()
                times[name].append(time.perf_counter() - start)
                _check(name, out[:2], expected)
                if len(out) != CPU_ITEMS:
                    raise AssertionError(f"{name}: {len(out)} outputs for {CPU_ITEMS} items")
    finally:
        ppe.shutdown()

    # Medians, not bests: one core of this VM can run ~30% faster for a while, so a best-of speedup can
    # exceed the 2.0x that 2 cores allow; the median of interleaved rounds is the robust comparison.
    # "vs the process pool" compares each round with the warmed process pool's time in the same round:
    # what this machine gives two busy processes at that moment with the least machinery (no daemons,
    # one pipe per process). Two bare processes given half of the items each did worse than the pool
    # in 3 of 4 runs: the two vCPUs drift apart in speed, and only dynamic hand-out absorbs that.
    seq = statistics.median(times["sequential loop"])
    pool_times = times[PROCESS_POOL]
    workload = f"{CPU_ITEMS} items x {seq / CPU_ITEMS * 1e3:.0f} ms (measured) pure-Python CPU step"
    rows = []
    for name, samples in times.items():
        median = statistics.median(samples)
        speedup = seq / median
        ours = name.startswith("rayrunnables")
        spread = f" (best {min(samples):.2f})" if len(samples) > 1 else ""
        vs_pool = statistics.median(t / c for t, c in zip(samples, pool_times, strict=True))
        relative = f"{speedup:.2f}x" + (f"; {vs_pool:.2f}x the process pool's time" if name != PROCESS_POOL else "")
        rows.append(
            Row(workload, name, f"{median:.2f} s{spread}", relative,
                ">= 1.8x sequential" if ours else "", speedup >= 1.8 if ours else None)
        )
    return rows


def bench_trivial(ray: Any, rr: Any, rounds: int) -> list[Row]:
    """100,000 trivial items: rayrunnables ``.map()`` (and ``batch``) vs hand-written Ray."""
    items = list(range(TRIVIAL_ITEMS))
    expected = [x + 1 for x in items]
    ray_cfg = {"backend": "ray"}
    step = rr.RunnableLambda(inc)
    in_chain = rr.RunnableLambda(as_list) | step.map()
    remote_inc = ray.remote(inc)
    remote_chunk = ray.remote(inc_chunk)
    few = items[:PER_TASK_ITEMS]
    size = -(-TRIVIAL_ITEMS // 8)

    methods: dict[str, tuple[int, Callable[[], list[int]]]] = {
        "rayrunnables `RunnableLambda(inc).map().invoke(items, ray)`": (
            TRIVIAL_ITEMS, lambda: step.map().invoke(items, ray_cfg)),
        "rayrunnables `RunnableLambda(inc).batch(items, ray)`": (
            TRIVIAL_ITEMS, lambda: step.batch(items, ray_cfg)),
        IN_CHAIN_TRIVIAL: (TRIVIAL_ITEMS, lambda: in_chain.invoke(items, ray_cfg)),
        "hand-written Ray: 8 chunk tasks, `ray.get`": (
            TRIVIAL_ITEMS,
            lambda: [y for part in ray.get([remote_chunk.remote(items[i : i + size])
                                            for i in range(0, TRIVIAL_ITEMS, size)]) for y in part]),
        f"hand-written Ray: one task per item ({PER_TASK_ITEMS:,} items)": (
            PER_TASK_ITEMS, lambda: ray.get([remote_inc.remote(x) for x in few])),
    }
    per_item: dict[str, float] = {}
    for name, (n, run) in methods.items():
        _check(name, run(), expected[:n])  # the warm-up run, also the correctness check
        per_item[name] = min(_timed(run) for _ in range(rounds)) / n * 1e6
    rows = []
    map_name = next(iter(per_item))
    for name, us in per_item.items():
        ours = name == map_name
        rows.append(
            Row(f"{TRIVIAL_ITEMS:,} trivial items (x + 1)", name, f"{us:,.2f} µs/item",
                "" if ours else f"{us / per_item[map_name]:,.2f}x the `.map()` cost",
                "<= 20 µs/item" if ours else "", us <= 20.0 if ours else None)
        )
    return rows


def bench_latency(ray: Any, rr: Any, samples: int) -> list[Row]:
    """3-step chain of 10 ms steps: median ``invoke`` latency, rayrunnables vs hand-written chained refs."""
    ray_cfg = {"backend": "ray"}
    remote_step = ray.remote(sleep_step)
    fused = rr.RunnableLambda(sleep_step) | rr.RunnableLambda(sleep_step) | rr.RunnableLambda(sleep_step)
    # different options on the middle step: three tasks passing ObjectRefs, like the hand-written chain
    unfused = (rr.RunnableLambda(sleep_step) | rr.RunnableLambda(sleep_step).with_options(num_cpus=1)
               | rr.RunnableLambda(sleep_step))
    methods: dict[str, Callable[[], int]] = {
        "hand-written Ray: `f3.remote(f2.remote(f1.remote(x)))`, `ray.get`": (
            lambda: ray.get(remote_step.remote(remote_step.remote(remote_step.remote(0))))),
        "rayrunnables `invoke` (3 steps fused into 1 task)": lambda: fused.invoke(0, ray_cfg),
        "rayrunnables `invoke` (3 tasks: middle step `with_options(num_cpus=1)`)": lambda: unfused.invoke(0, ray_cfg),
    }
    for name, run in methods.items():
        for _ in range(3):
            _check(name, run(), 3)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(samples):  # interleaved, so a burst of machine load hits every method alike
        for name, run in methods.items():
            times[name].append(_timed(run))
    rows = []
    hand = statistics.median(next(iter(times.values())))
    for name, samples_s in times.items():
        med = statistics.median(samples_s)
        ours = name.startswith("rayrunnables")
        rows.append(
            Row(f"3-step chain of {STEP_S * 1e3:.0f} ms sleeps, `invoke`", name,
                f"{med * 1e3:.1f} ms (min {min(samples_s) * 1e3:.1f})",
                f"{med / hand:.2f}x hand-written", "<= 1.20x hand-written" if ours else "",
                med <= 1.2 * hand if ours else None)
        )
    return rows


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    lines = [
        "| workload | implementation | time | relative | target | meets target |",
        "|---|---|---:|---:|---|---|",
    ]
    for row in rows:
        meets = "—" if row.meets is None else ("yes" if row.meets else "**no**")
        cells = [row.workload, row.implementation, row.result, row.relative or "—", row.target or "—", meets]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(rows: list[Row], command: str, env: list[str], quick: bool, seconds: float) -> list[str]:
    cpu_rounds, samples = (1, 7) if quick else (CPU_ROUNDS, 21)
    method = (
        f"CPU items: median (and best) of {cpu_rounds} round(s), methods interleaved, each started once the "
        "machine is idle again, after a warm-up of every "
        "pool; relative = median vs the sequential loop's median, and the median over rounds of the "
        "time over the (warmed) process pool's time in the same round (1.00x = as fast as the stdlib's "
        "pool, which has no daemons and no object store). "
        f"Trivial items: best of {2 if quick else 4} calls after one warm-up call; "
        f"relative = cost vs rayrunnables `.map()`. Chain: median (and min) of {samples} calls per method, "
        "interleaved, after 3 warm-up calls; relative = median vs hand-written."
    )
    return [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}` "
        f"(`ray.init(address=\"local\", num_cpus=2, include_dashboard=False, _system_config=LOCAL_RAY_CONFIG)`, the "
        f"settings of a Ray that rayrunnables starts: idle task workers kept 60 s; run took {seconds:.0f} s).",
        "",
        *env,
        f"- load average at end (this run's own processes included): {_loadavg()}",
        "",
        *table(rows),
        "",
        f'"Meets target" refers to the rayrunnables rows only. Method: {method}',
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="one round per method, fewer latency samples")
    parser.add_argument(
        "--write-results", action="store_true",
        help=f"replace the '## {HEADING}' section of {RESULTS_MD.relative_to(HERE.parent)} (or append it)",
    )
    args = parser.parse_args(argv)
    neutral_environment("RAY_ADDRESS")

    import langchain_core.runnables as lc
    import ray

    import rayrunnables as rr

    env = environment()  # before Ray starts, so the load average is the machine's, not ours
    command = command_line(__file__)
    rounds = 1 if args.quick else CPU_ROUNDS
    started = time.perf_counter()
    loops = calibrate(CPU_ITEM_S)  # before Ray starts: its worker processes boot in the background
    ray.init(**RAY_INIT)
    try:
        rows: list[Row] = []
        for name, run in (
            ("cpu", lambda: bench_cpu(ray, rr, lc, rounds, loops)),
            ("trivial", lambda: bench_trivial(ray, rr, 2 if args.quick else 4)),
            ("latency", lambda: bench_latency(ray, rr, 7 if args.quick else 21)),
        ):
            print(f"running {name} ... (load {_loadavg()})", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            rows += run()
            print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    body = render(rows, command, env, args.quick, time.perf_counter() - started)
    print("\n".join(body))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, body)  # re-reads the file just before writing
        print(f"(written to {RESULTS_MD})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
