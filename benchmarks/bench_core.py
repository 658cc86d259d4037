"""Core benchmarks: rayrunnables (local backend) side by side with langchain-core, in one run.

    python benchmarks/bench_core.py                   # full run (~1 minute on 2 cores)
    python benchmarks/bench_core.py --quick           # fewer rounds, for a smoke check
    python benchmarks/bench_core.py --only chain_invoke --only map_identity
    python benchmarks/bench_core.py --write-results   # also replace the section in benchmarks/RESULTS.md

Adding a workload: write a function ``(opts: Options) -> Row`` and decorate it with
``@workload(name, section=...)``; it lands in ``WORKLOADS`` and its section's table. A section fixes
the table's columns (one per implementation compared) and which column the target applies to.
See benchmarks/README.md for what each row measures and why.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE / "RESULTS.md"

# ------------------------------------------------------------------------------------------------
# Registry: sections (one table each) and workloads (one row each)
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    key: str
    heading: str  # the "## ..." heading used in RESULTS.md
    columns: tuple[str, ...]  # implementations compared, in table order
    target_column: str  # the column the target and "meets target" refer to
    backend: str | None = None  # rayrunnables backend pinned (rayrunnables.use) while its workloads run
    enabled: Callable[[argparse.Namespace], bool] = lambda args: True


RR_LOCAL = "rayrunnables (local)"
LANGCHAIN = "langchain-core"

SECTIONS: dict[str, Section] = {
    "core": Section(
        key="core",
        heading="Core (local backend) vs langchain-core",
        columns=(RR_LOCAL, LANGCHAIN),
        target_column=RR_LOCAL,
        backend="local",
    ),
}


@dataclass
class Measurement:
    value: float  # in `unit`
    unit: str  # e.g. "µs/call", "µs/item", "s"
    digits: int = 1

    def __str__(self) -> str:
        return f"{self.value:,.{self.digits}f} {self.unit}"


@dataclass
class Row:
    workload: str  # the text in the first column
    results: dict[str, Measurement | str]  # column -> measurement (or a note such as "n/a")
    target: str  # human-readable target, e.g. "<= 10 µs/call"
    meets: bool | None  # None when there is no target


@dataclass
class Options:
    quick: bool

    @property
    def rounds(self) -> int:
        return 3 if self.quick else 5

    @property
    def min_round_s(self) -> float:
        """Each timed round of a micro-benchmark lasts at least this long."""
        return 0.05 if self.quick else 0.2


@dataclass(frozen=True)
class Workload:
    name: str
    section: str
    func: Callable[[Options], Row]
    doc: str = ""


WORKLOADS: list[Workload] = []


def workload(name: str, section: str = "core") -> Callable[[Callable[[Options], Row]], Callable[[Options], Row]]:
    """Register ``func`` as a benchmark row of ``section``; rows appear in registration order."""
    if section not in SECTIONS:
        raise ValueError(f"unknown section {section!r}; known: {sorted(SECTIONS)}")

    def register(func: Callable[[Options], Row]) -> Callable[[Options], Row]:
        if any(w.name == name for w in WORKLOADS):
            raise ValueError(f"workload {name!r} registered twice")
        WORKLOADS.append(Workload(name, section, func, (func.__doc__ or "").strip().splitlines()[0]))
        return func

    return register


# ------------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------------


def best_seconds_per_call(fn: Callable[[], Any], opts: Options) -> float:
    """timeit-style: calibrate a loop count so one round lasts >= min_round_s, run ``rounds`` rounds
    with the garbage collector off (as ``timeit`` does), return the best round's seconds per call."""
    fn()  # warm-up (imports, caches, thread pool start)
    number = 1
    while True:
        elapsed = _timed_loop(fn, number)
        if elapsed >= opts.min_round_s:
            break
        number = max(number * 2, int(number * opts.min_round_s / max(elapsed, 1e-9) * 1.1))
    best = elapsed / number
    for _ in range(opts.rounds - 1):
        best = min(best, _timed_loop(fn, number) / number)
    return best


def best_seconds_once(fn: Callable[[], Any], rounds: int, warmup: Callable[[], Any] | None = None) -> float:
    """Best wall time of ``rounds`` single calls of a long-running ``fn`` (gc off, as timeit)."""
    (warmup or fn)()
    return min(_timed_loop(fn, 1) for _ in range(rounds))


def _timed_loop(fn: Callable[[], Any], number: int) -> float:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _check_same(name: str, rr: Any, lc: Any) -> None:
    if rr != lc:
        raise AssertionError(f"{name}: outputs differ: rayrunnables={rr!r:.200} langchain-core={lc!r:.200}")


# ------------------------------------------------------------------------------------------------
# Core workloads (local backend vs langchain-core)
# ------------------------------------------------------------------------------------------------


def _libs() -> tuple[Any, Any]:
    import langchain_core.runnables as lc

    import rayrunnables as rr

    return rr, lc


@workload("chain_invoke")
def chain_invoke(opts: Options) -> Row:
    """3-step chain of trivial lambdas (x+1 | x*2 | x-3), `.invoke(5)`: per-call overhead."""
    rr, lc = _libs()
    rr_chain = (
        rr.RunnableLambda(lambda x: x + 1) | rr.RunnableLambda(lambda x: x * 2) | rr.RunnableLambda(lambda x: x - 3)
    )
    lc_chain = (
        lc.RunnableLambda(lambda x: x + 1) | lc.RunnableLambda(lambda x: x * 2) | lc.RunnableLambda(lambda x: x - 3)
    )
    _check_same("chain_invoke", rr_chain.invoke(5), lc_chain.invoke(5))
    rr_us = best_seconds_per_call(lambda: rr_chain.invoke(5), opts) * 1e6
    lc_us = best_seconds_per_call(lambda: lc_chain.invoke(5), opts) * 1e6
    return Row(
        "3-step chain `invoke` (x+1 \\| x*2 \\| x-3)",
        {RR_LOCAL: Measurement(rr_us, "µs/call"), LANGCHAIN: Measurement(lc_us, "µs/call")},
        "<= 10 µs/call",
        rr_us <= 10.0,
    )


@workload("chain_invoke_handler")
def chain_invoke_handler(opts: Options) -> Row:
    """The same 3-step chain with a no-op LangChain callback handler: 4 runs (the sequence and its 3 steps)
    reported per call; the cost per run is the call's time over 4, for both libraries."""
    rr, lc = _libs()
    from langchain_core.callbacks import BaseCallbackHandler

    handler = BaseCallbackHandler()  # every callback a no-op: what remains is the cost of reporting runs
    rr_chain = (
        rr.RunnableLambda(lambda x: x + 1) | rr.RunnableLambda(lambda x: x * 2) | rr.RunnableLambda(lambda x: x - 3)
    )
    lc_chain = (
        lc.RunnableLambda(lambda x: x + 1) | lc.RunnableLambda(lambda x: x * 2) | lc.RunnableLambda(lambda x: x - 3)
    )
    config = {"callbacks": [handler]}
    _check_same("chain_invoke_handler", rr_chain.invoke(5, config), lc_chain.invoke(5, config))
    rr_us = best_seconds_per_call(lambda: rr_chain.invoke(5, config), opts) * 1e6 / 4
    lc_us = best_seconds_per_call(lambda: lc_chain.invoke(5, config), opts) * 1e6 / 4
    return Row(
        "3-step chain `invoke` with a no-op callback handler, per run (4 runs per call)",
        {RR_LOCAL: Measurement(rr_us, "µs/run"), LANGCHAIN: Measurement(lc_us, "µs/run")},
        "<= langchain-core's",
        rr_us <= lc_us,
    )


HANDLER_MAP_ITEMS = 2_000
MAP_ITEMS = 10_000


def _map_row(key: str, n_items: int, config: dict[str, Any] | None, title: str, target: str,
             meets: Callable[[float, float], bool], opts: Options) -> Row:
    """Identity `.map()` over ``n_items`` ints in both libraries, best of full calls, µs per item."""
    rr, lc = _libs()
    items = list(range(n_items))
    rr_map = rr.RunnableLambda(lambda x: x).map()
    lc_map = lc.RunnableLambda(lambda x: x).map()
    _check_same(key, rr_map.invoke(items, config), lc_map.invoke(items, config))
    rounds = 1 if opts.quick else opts.rounds
    # The first full call above is the warm-up; later rounds reuse the same thread pools.
    rr_s = best_seconds_once(lambda: rr_map.invoke(items, config), rounds, warmup=lambda: None)
    lc_s = best_seconds_once(lambda: lc_map.invoke(items, config), rounds, warmup=lambda: None)
    rr_us, lc_us = rr_s / n_items * 1e6, lc_s / n_items * 1e6
    return Row(
        title,
        {RR_LOCAL: Measurement(rr_us, "µs/item", 2), LANGCHAIN: Measurement(lc_us, "µs/item", 2)},
        target,
        meets(rr_us, lc_us),
    )


@workload("map_handler")
def map_handler(opts: Options) -> Row:
    """Identity `.map()` with a no-op callback handler: one run per item (and one for the map)."""
    from langchain_core.callbacks import BaseCallbackHandler

    return _map_row(
        "map_handler", HANDLER_MAP_ITEMS, {"callbacks": [BaseCallbackHandler()]},
        f"identity `.map()` over {HANDLER_MAP_ITEMS:,} items with a no-op callback handler", "<= langchain-core's",
        lambda rr_us, lc_us: rr_us <= lc_us, opts,
    )


@workload("map_identity")
def map_identity(opts: Options) -> Row:
    """Identity `.map()` over 10,000 ints, `.invoke(list)`: per-item overhead of map/batch."""
    return _map_row(
        "map_identity", MAP_ITEMS, None, f"identity `.map()` over {MAP_ITEMS:,} items", "<= 10 µs/item",
        lambda rr_us, lc_us: rr_us <= 10.0, opts,
    )


SLEEP_S = 0.2
BRANCHES = 5


def _dict_row(name: str, branches: dict[str, Any], opts: Options, warmups: int, title: str, limit: float,
              target: str) -> Row:
    """One dict of ``branches`` in both libraries: checked alike (the warm-ups), then timed, wall seconds."""
    rr, lc = _libs()
    rr_par = rr.RunnableParallel({key: rr.RunnableLambda(f) for key, f in branches.items()})
    lc_par = lc.RunnableParallel({key: lc.RunnableLambda(f) for key, f in branches.items()})
    for _ in range(warmups):
        _check_same(name, rr_par.invoke(1), lc_par.invoke(1))
    rounds = 3 if opts.quick else opts.rounds
    rr_s = best_seconds_once(lambda: rr_par.invoke(1), rounds, warmup=lambda: None)
    lc_s = best_seconds_once(lambda: lc_par.invoke(1), rounds, warmup=lambda: None)
    return Row(title, {RR_LOCAL: Measurement(rr_s, "s", 3), LANGCHAIN: Measurement(lc_s, "s", 3)}, target,
               rr_s <= limit)


@workload("parallel_sleep")
def parallel_sleep(opts: Options) -> Row:
    """5-branch dict/RunnableParallel of 0.2 s `time.sleep` lambdas: do branches really overlap?"""

    def nap(x: Any) -> Any:
        time.sleep(SLEEP_S)
        return x

    return _dict_row("parallel_sleep", {f"b{i}": nap for i in range(BRANCHES)}, opts, 1,
                     f"{BRANCHES}-branch `RunnableParallel` of {SLEEP_S} s sleeps", SLEEP_S * 1.1,
                     f"<= {SLEEP_S * 1.1:.2f} s (0.2 s + 10%)")


MIXED_S = 0.3


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:  # CPU time: it computes for ``seconds`` however loaded the machine is
        pass


@workload("sleep_and_compute")
def sleep_and_compute(opts: Options) -> Row:
    """A dict of one 0.3 s sleep and 0.3 s of CPU: the computing branch runs while the other waits."""

    def wait(x: Any) -> Any:
        time.sleep(MIXED_S)
        return x

    def compute(x: Any) -> Any:
        _spin(MIXED_S)
        return x

    # three warm-ups: rayrunnables learns which branch waits and which computes
    return _dict_row("sleep_and_compute", {"io": wait, "cpu": compute}, opts, 3,
                     f"dict of a {MIXED_S} s sleep and {MIXED_S} s of CPU", 0.4, "<= 0.4 s")


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def environment() -> list[str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)  # no import: ray is never imported by the core section
        except metadata.PackageNotFoundError:
            return "not installed"

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count() or 0
    return [
        f"- Python {platform.python_version()} ({platform.python_implementation()}), {platform.platform()}",
        f"- rayrunnables {version('rayrunnables')}, langchain-core {version('langchain-core')}, ray {version('ray')}",
        f"- CPUs: {os.cpu_count()} logical, {usable} usable by this process; processor: {_cpu_model()}",
        f"- rayrunnables source: {_git_head()}; load average at start: {_loadavg()}",
    ]


def _git_head() -> str:
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE.parent, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rayrunnables"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown commit"
    return f"commit {head}" + (" + uncommitted changes in rayrunnables/" if dirty else "")


def neutral_environment(*extra: str) -> None:
    """Drop the variables that would make one side of a comparison trace, or run somewhere else."""
    for var in ("LANGCHAIN_TRACING_V2", "LANGSMITH_TRACING", "RAYRUNNABLES_BACKEND", *extra):
        if os.environ.get(var):
            print(f"note: ignoring {var}={os.environ[var]!r} for a fair comparison", file=sys.stderr)
            os.environ.pop(var)


def command_line(script: str) -> str:
    """The command that reproduces this run, for the results' header."""
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(script), *sys.argv[1:]])


def _cpu_busy(window: float) -> float | None:
    """Share of all cores busy over ``window`` seconds (Linux /proc/stat), or None where unknown."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = sample()
        time.sleep(window)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def settle(busy_below: float = 0.15, max_wait: float = 10.0, window: float = 0.25) -> float:
    """Wait until the machine is nearly idle (or ``max_wait`` passed); return the seconds waited.

    Called before every timed method in the Ray benchmarks: stopping a Ray Data execution or an actor pool
    keeps both cores busy for a second or more after the call returns, and the next method must not pay
    for the previous one's teardown."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_wait:
        busy = _cpu_busy(window)
        if busy is None:
            time.sleep(1.0)
            break
        if busy < busy_below:
            break
    return time.perf_counter() - start


def _loadavg() -> str:
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1/5/15 min)"
    except OSError:
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def table(section: Section, rows: list[Row]) -> list[str]:
    header = ["workload", *section.columns, "target", "meets target"]
    rule = ["---", *["---:"] * len(section.columns), "---", "---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(rule) + "|"]
    for row in rows:
        cells = [row.workload, *(str(row.results.get(c, "n/a")) for c in section.columns), row.target]
        cells.append("—" if row.meets is None else ("yes" if row.meets else "**no**"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render_section(section: Section, rows: list[Row], command: str, quick: bool, env: list[str]) -> list[str]:
    rounds, round_s, map_rounds, par_rounds = (3, 0.05, 1, 3) if quick else (5, 0.2, 5, 5)
    method = (
        f"invoke: best of {rounds} timeit-style rounds (gc off, each round >= {round_s} s); "
        f"map: best of {map_rounds} full 10,000-item call(s); parallel: best of {par_rounds} calls; "
        "all after one warm-up call."
    )
    return [
        f"## {section.heading}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}`.",
        "",
        *env,
        "",
        *table(section, rows),
        "",
        f'Target and "meets target" refer to the **{section.target_column}** column. Method: {method}',
        "",
    ]


def write_results(path: Path, heading: str, body: list[str]) -> None:
    """Replace the ``## heading`` section of ``path`` (up to the next ``## ``) or append it."""
    text = path.read_text() if path.exists() else "# Benchmark results\n\nWritten by the scripts in this folder.\n\n"
    block = "\n".join(body).rstrip() + "\n\n"
    pattern = re.compile(rf"^## {re.escape(heading)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: block, text, count=1) if pattern.search(text) else text.rstrip() + "\n\n" + block
    path.write_text(text.rstrip() + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer/shorter rounds (smoke check, noisier numbers)")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        default=[],
        help="run only this workload (repeatable); one of: " + ", ".join(w.name for w in WORKLOADS),
    )
    parser.add_argument("--list", action="store_true", help="list the registered workloads and exit")
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"replace each section's table in {RESULTS_MD.relative_to(HERE.parent)}",
    )
    args = parser.parse_args(argv)

    if args.list:
        for w in WORKLOADS:
            print(f"{w.name:20} [{w.section}] {w.doc}")
        return 0
    unknown = set(args.only) - {w.name for w in WORKLOADS}
    if unknown:
        parser.error(f"unknown workload(s) {sorted(unknown)}; known: {[w.name for w in WORKLOADS]}")
    if args.only and args.write_results:
        parser.error("--write-results needs every row of a section; drop --only")
    neutral_environment()

    import rayrunnables

    opts = Options(quick=args.quick)
    env = environment()  # before the run, so the load average is the machine's, not ours
    command = command_line(__file__)
    for section in SECTIONS.values():
        if not section.enabled(args):
            continue
        chosen = [w for w in WORKLOADS if w.section == section.key and (not args.only or w.name in args.only)]
        if not chosen:
            if not args.only:
                print(f"## {section.heading}\n\n(no workloads registered for section {section.key!r} yet)\n")
            continue
        rows: list[Row] = []
        pinned = rayrunnables.use(section.backend) if section.backend else contextlib.nullcontext()
        with pinned:
            for w in chosen:
                print(f"running {w.name} ...", file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                rows.append(w.func(opts))
                print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        body = render_section(section, rows, command, args.quick, env)
        print("\n".join(body))
        if args.write_results:
            write_results(RESULTS_MD, section.heading, body)
            print(f"(written to {RESULTS_MD})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
