"""LLM calls at a provider's limits (issue 20): a document list through a real ``ChatOpenAI`` against a server
that holds requests *and* tokens per minute, langchain-core's ways side by side with ``with_rate_limit``.

    python benchmarks/bench_llm.py                   # 600 documents, 3 rounds: about 21 minutes on 2 cores
    python benchmarks/bench_llm.py --quick           # 150 documents, 1 round: about 3 minutes
    python benchmarks/bench_llm.py --only rr-local --only lc-limiter   # a few methods (no --write-results)
    python benchmarks/bench_llm.py --write-results   # also replace the section of benchmarks/RESULTS.md

The provider is ``rayrunnables.testing.openai_server.OpenAIServer`` in a child process (a provider is not in
the client's process, and its threads must not take the client's GIL), started afresh for every timed run so
its buckets start full. Every method gets the same documents and the same limits; the bound is what those
limits allow (see ``bound()`` and benchmarks/README.md). Methods are interleaved within a round, the order
rotated from round to round; medians are reported. Ray is started before any timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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

HEADING = "LLM calls at a provider's limits (issue 20)"
PLOT = HERE / "llm_limits.svg"

RPM, TPM = 2_400, 300_000  # 40 requests and 5,000 tokens a second, over 1-second windows
BURST_SECONDS = 1.0
LATENCY = 0.05  # seconds the server takes per admitted request
MAX_TOKENS = 16
WORDS = "alpha beta gamma delta epsilon river mountain cloud signal vector quantum harbor".split()
DATA_BATCH, DATA_CONCURRENCY = 50, 2
WARMUP_DOCS = 24
RAY_CPUS = 2
DONE_429_SHARE, DONE_RATIO = 0.02, 1.2  # the done-means: no failed item, 429s <= 2%, time <= 1.2x bound


def documents(n: int, seed: int = 7) -> list[str]:
    """Documents of 400 to 1,600 characters (65 to 260 words), as in tests/test_llm_limits.py."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(65, 260))) for _ in range(n)]


def cost_of(doc: str) -> int:
    """What the server charges for one request of ``doc``: its prompt tokens (the server's own count of the one
    user message ChatOpenAI sends) plus the ``max_tokens`` budget."""
    from rayrunnables.testing.openai_server import count_prompt_tokens

    return count_prompt_tokens({"messages": [{"role": "user", "content": doc}]}) + MAX_TOKENS


@dataclass(frozen=True)
class Bound:
    """The least wall time the limits allow for a list of documents (README: "The bound")."""

    seconds: float
    token_term: float
    request_term: float
    total_cost: int
    n: int

    @property
    def binding(self) -> str:
        return "tokens" if self.token_term >= self.request_term else "requests"


def bound(docs: list[str]) -> Bound:
    """Both buckets start full (``capacity`` = ``BURST_SECONDS`` of the limit) and refill at ``limit / 60`` per
    second; every document must be admitted once, its cost charged at admission; the last answer comes
    ``LATENCY`` after the last admission. So the batch takes at least
    ``max((C - token capacity) / (TPM / 60), (n - request capacity) / (RPM / 60)) + LATENCY``, C the documents'
    summed costs."""
    total = sum(cost_of(d) for d in docs)
    token_capacity = max(TPM * BURST_SECONDS / 60, 1.0)
    request_capacity = max(RPM * BURST_SECONDS / 60, 1.0)
    token_term = max(0.0, (total - token_capacity) / (TPM / 60))
    request_term = max(0.0, (len(docs) - request_capacity) / (RPM / 60))
    return Bound(max(token_term, request_term) + LATENCY, token_term, request_term, total, len(docs))


# ------------------------------------------------------------------------------------------------
# The provider, in a child process
# ------------------------------------------------------------------------------------------------


def _serve(conn: Any) -> None:
    """The child: one ``OpenAIServer`` at a time, started, reported on and closed on the parent's word."""
    from rayrunnables.testing.openai_server import OpenAIServer

    server = None
    while True:
        command, arg = conn.recv()
        if command == "start":
            if server is not None:
                server.close()
            server = OpenAIServer(**arg)
            conn.send(server.base_url)
        elif command == "report":
            assert server is not None
            conn.send((server.stats(), server.admissions))
        elif command == "stop":
            if server is not None:
                server.close()
            conn.send(None)
            return


class Provider:
    """The child process that hosts the server (spawned: the parent runs Ray)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve, args=(child,), daemon=True, name="openai-server")
        self._process.start()

    def _ask(self, command: str, arg: Any = None) -> Any:
        self._conn.send((command, arg))
        return self._conn.recv()

    def start(self, **settings: Any) -> str:
        """A fresh server (full buckets, zero counters, a new port); its base URL."""
        settings = {"requests_per_minute": RPM, "tokens_per_minute": TPM, "burst_seconds": BURST_SECONDS,
                    "latency": LATENCY, "max_seconds": 600, **settings}
        url: str = self._ask("start", settings)
        return url

    def report(self) -> tuple[Any, list[Any]]:
        stats, admissions = self._ask("report")
        return stats, admissions

    def close(self) -> None:
        try:
            self._ask("stop")
        finally:
            self._process.join(5)


# ------------------------------------------------------------------------------------------------
# Methods
# ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    wall: float
    outputs: list[Any]  # each item's text, or its exception
    counted: dict[str, int] | None  # UsageMetadataCallbackHandler's count, where a callback could be passed
    t0: float  # time.monotonic() when the timed call started (the server's admissions use the same clock)


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    family: str  # "langchain-core" or "rayrunnables": the done-means is judged on the rayrunnables rows
    backend: str
    run: Callable[[str, list[str]], Outcome]
    ours: bool = False


def _model(base_url: str, max_retries: int, rate_limiter: Any = None) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(base_url=base_url, api_key="test", model="test-model", max_retries=max_retries,
                      max_tokens=MAX_TOKENS, rate_limiter=rate_limiter)


def _prompt() -> Any:
    from langchain_core.prompts import ChatPromptTemplate

    return ChatPromptTemplate.from_messages([("human", "{doc}")])


def _counted(handler: Any) -> dict[str, int]:
    usage = handler.usage_metadata.get("test-model") or {}
    return {k: int(usage.get(k, 0)) for k in ("input_tokens", "output_tokens", "total_tokens")}


def langchain_batch(max_retries: int, requests_per_second: float | None = None) -> Callable[[str, list[str]], Outcome]:
    """langchain-core's ``.batch`` (its thread pool, its ``max_concurrency`` default), ChatOpenAI's own retries,
    and ``InMemoryRateLimiter(requests_per_second)`` when given (its other settings left at their defaults)."""

    def run(base_url: str, docs: list[str]) -> Outcome:
        from langchain_core.callbacks import UsageMetadataCallbackHandler
        from langchain_core.output_parsers import StrOutputParser
        from langchain_core.rate_limiters import InMemoryRateLimiter

        limiter = None if requests_per_second is None else InMemoryRateLimiter(requests_per_second=requests_per_second)
        chain = _prompt() | _model(base_url, max_retries, limiter) | StrOutputParser()
        handler = UsageMetadataCallbackHandler()
        inputs = [{"doc": d} for d in docs]
        t0 = time.monotonic()
        outputs = chain.batch(inputs, {"callbacks": [handler]}, return_exceptions=True)
        return Outcome(time.monotonic() - t0, outputs, _counted(handler), t0)

    return run


def _ours(base_url: str, limits: dict[str, float]) -> Any:
    from langchain_core.output_parsers import StrOutputParser

    from rayrunnables.interop.langchain import from_langchain

    # a new step each run: a new key, so a new pacer (nothing learned in an earlier run is kept)
    model = from_langchain(_model(base_url, max_retries=0)).with_rate_limit(**limits)
    return from_langchain(_prompt()) | model | from_langchain(StrOutputParser())


def ours_batch(backend: str, limits: dict[str, float], io_bound: bool = False) -> Callable[[str, list[str]], Outcome]:
    """``chain.batch`` on ``backend``; ``io_bound``: the whole chain ``with_options(io_bound=True)``."""

    def run(base_url: str, docs: list[str]) -> Outcome:
        from langchain_core.callbacks import UsageMetadataCallbackHandler

        chain = _ours(base_url, limits)
        if io_bound:
            chain = chain.with_options(io_bound=True)
        handler = UsageMetadataCallbackHandler()
        inputs = [{"doc": d} for d in docs]
        t0 = time.monotonic()
        outputs = chain.batch(inputs, {"backend": backend, "callbacks": [handler]}, return_exceptions=True)
        return Outcome(time.monotonic() - t0, outputs, _counted(handler), t0)

    return run


def ours_data(limits: dict[str, float]) -> Callable[[str, list[str]], Outcome]:
    def run(base_url: str, docs: list[str]) -> Outcome:
        import ray.data

        from rayrunnables.data import apply

        chain = _ours(base_url, limits)
        blocks = max(1, min(8, len(docs) // (2 * DATA_BATCH)))
        dataset = ray.data.from_items([{"doc": d, "i": i} for i, d in enumerate(docs)], override_num_blocks=blocks)
        t0 = time.monotonic()
        rows = apply(chain, dataset, batch_size=DATA_BATCH, concurrency=DATA_CONCURRENCY).take_all()
        wall = time.monotonic() - t0
        outputs: list[Any] = [None] * len(docs)
        for row in rows:
            error = row["error"]
            outputs[row["i"]] = RuntimeError(f"{error['error_type']}: {error['message']}") if error else row["output"]
        return Outcome(wall, outputs, None, t0)

    return run


def methods(docs: list[str]) -> list[Method]:
    costs = [cost_of(d) for d in docs]
    best = min(TPM / 60 / statistics.fmean(costs), RPM / 60)  # what a user works out by hand
    declared = {"requests_per_minute": RPM, "tokens_per_minute": TPM}
    too_high = {"requests_per_minute": RPM * 1.3, "tokens_per_minute": TPM * 1.3}
    lc, rr = "langchain-core", "rayrunnables"
    found = [
        Method("lc-plain", "`.batch`, no limiter, `ChatOpenAI(max_retries=0)`", lc, "threads",
               langchain_batch(0)),
        Method("lc-retries", "`.batch`, no limiter, `ChatOpenAI(max_retries=2)` (the default)", lc, "threads",
               langchain_batch(2)),
        Method("lc-limiter", f"`.batch`, `InMemoryRateLimiter(requests_per_second={best:.1f})` (the best R), "
               "`max_retries=2`", lc, "threads", langchain_batch(2, best)),
        Method("lc-limiter-low", f"the same, R = {0.85 * best:.1f} (0.85x)", lc, "threads",
               langchain_batch(2, 0.85 * best)),
        Method("lc-limiter-high", f"the same, R = {1.15 * best:.1f} (1.15x)", lc, "threads",
               langchain_batch(2, 1.15 * best)),
    ]
    for backend in ("local", "ray", "executor"):
        found.append(Method(f"rr-{backend}", "`with_rate_limit(RPM, TPM)` declared", rr, backend,
                            ours_batch(backend, declared), ours=True))
    found.append(Method("rr-data", "`with_rate_limit(RPM, TPM)` declared; "
                        f"`apply(chain, dataset, batch_size={DATA_BATCH}, concurrency={DATA_CONCURRENCY})`",
                        rr, "data engine", ours_data(declared), ours=True))
    found.append(Method("rr-ray-io", "declared; the whole chain `with_options(io_bound=True)`", rr, "ray",
                        ours_batch("ray", declared, io_bound=True), ours=True))
    for backend in ("local", "ray"):
        found.append(Method(f"rr-{backend}-high", "declared 30% too high (1.3x RPM, 1.3x TPM)", rr, backend,
                            ours_batch(backend, too_high), ours=True))
    for backend in ("local", "ray"):
        found.append(Method(f"rr-{backend}-learned", "nothing declared (learned)", rr, backend,
                            ours_batch(backend, {}), ours=True))
    return found


# ------------------------------------------------------------------------------------------------
# One timed run, and what it shows
# ------------------------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    ratio: float
    requests: int  # every request the server answered: admitted + 429
    rejected: int  # 429s
    failed: int  # items that raised, or came back wrong
    usage_equal: bool | None  # None: no callback could be passed
    first: float | None  # seconds from the call to the first admission
    tail: float | None  # seconds from the last admission to the call's end
    timeline: list[tuple[float, int]] = field(repr=False)  # (seconds since the call, cost) of each admission

    @property
    def share_429(self) -> float:
        return self.rejected / self.requests if self.requests else 0.0

    def pace(self) -> tuple[float, float] | None:
        """Over the span of the admissions (first to last): requests admitted per second, and the tokens admitted
        beyond the first bucketful per second as a share of ``TPM / 60`` (1.0: the token limit's full pace)."""
        if len(self.timeline) < 2:
            return None
        span = self.timeline[-1][0] - self.timeline[0][0]
        if span <= 0:
            return None
        tokens = max(0.0, sum(cost for _, cost in self.timeline) - max(TPM * BURST_SECONDS / 60, 1.0))
        return (len(self.timeline) - 1) / span, tokens / span / (TPM / 60)


def measure(provider: Provider, method: Method, docs: list[str], expected: list[str], limit: Bound) -> Run:
    base_url = provider.start()
    outcome = method.run(base_url, docs)
    stats, admissions = provider.report()
    failed = sum(1 for out, want in zip(outcome.outputs, expected, strict=True) if out != want)
    usage_equal = None
    if outcome.counted is not None:
        usage_equal = (outcome.counted["input_tokens"], outcome.counted["output_tokens"],
                       outcome.counted["total_tokens"]) == (stats.prompt_tokens, stats.completion_tokens,
                                                            stats.total_tokens)
    times = [a.time - outcome.t0 for a in admissions]
    end = outcome.wall
    return Run(
        wall=outcome.wall,
        ratio=outcome.wall / limit.seconds,
        requests=stats.requests_admitted + stats.rejected,
        rejected=stats.rejected,
        failed=failed,
        usage_equal=usage_equal,
        first=times[0] if times else None,
        tail=end - times[-1] if times else None,
        timeline=[(t, a.cost) for t, a in zip(times, admissions, strict=True)],
    )


def verdict(runs: list[Run]) -> tuple[bool, str]:
    """The issue's done-means on the medians: no failed item, 429s <= 2% of requests, time <= 1.2x the bound."""
    failing = sum(1 for r in runs if r.failed)
    share = statistics.median(r.share_429 for r in runs)
    ratio = statistics.median(r.ratio for r in runs)
    misses = []
    if failing:
        misses.append(f"failed items in {failing} of {len(runs)} runs")
    if share > DONE_429_SHARE:
        misses.append(f"429s {share:.1%}")
    if ratio > DONE_RATIO:
        misses.append(f"{ratio:.2f}x bound")
    return not misses, ", ".join(misses)


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def table(chosen: list[Method], results: dict[str, list[Run]]) -> list[str]:
    lines = [
        "| library | backend | method | time (median) | all runs | time / bound | 429s (% of requests) "
        "| failed items | server tokens = callback's | first admission | after last admission | admitted pace "
        "| done-means |",
        "|---|---|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for method in chosen:
        runs = results[method.key]
        rejected = statistics.median(r.rejected for r in runs)
        share = statistics.median(r.share_429 for r in runs)
        fails = [r.failed for r in runs]
        failed = statistics.median(fails)
        equal = {r.usage_equal for r in runs}
        usage = "n/a (no callback)" if equal == {None} else ("yes" if equal == {True} else "**no**")
        first, tail = _median([r.first for r in runs]), _median([r.tail for r in runs])
        paces = [p for p in (r.pace() for r in runs) if p is not None]
        pace = "—" if not paces else (f"{statistics.median(p[0] for p in paces):.1f} req/s, "
                                      f"{statistics.median(p[1] for p in paces):.0%} of TPM")
        ok, misses = verdict(runs)
        if method.ours:
            done = "yes" if ok else f"**no** ({misses})"
        else:
            done = "— (" + ("would meet it" if ok else misses) + ")"
        lines.append("| " + " | ".join([
            method.family, method.backend, method.label,
            f"{statistics.median(r.wall for r in runs):.2f} s",
            ", ".join(f"{r.wall:.1f}" for r in runs),
            f"{statistics.median(r.ratio for r in runs):.2f}x",
            f"{rejected:g} ({share:.1%})",
            f"{failed:g}" if len({r.failed for r in runs}) == 1 else f"{failed:g} ({', '.join(map(str, fails))})",
            usage,
            "—" if first is None else f"{first:.2f} s",
            "—" if tail is None else f"{tail:.2f} s",
            pace,
            done,
        ]) + " |")
    return lines


def reading(results: dict[str, list[Run]], limit: Bound, best: float) -> list[str]:
    """'How to read it': what the medians of this run show, in words (only about the methods that ran)."""

    def med(key: str, value: Callable[[Run], float | None]) -> float | None:
        return _median([value(r) for r in results[key]]) if key in results else None

    def pace(key: str, i: int) -> float | None:
        return med(key, lambda r: (r.pace() or (None, None))[i])

    lines = []
    if "lc-plain" in results and "lc-retries" in results:
        lines.append(
            f"- **No limiter.** langchain-core's `.batch` runs `min(32, CPUs + 4)` calls at a time and sends as fast "
            f"as answers come: with `max_retries=0`, {med('lc-plain', lambda r: r.failed):g} of {limit.n} items "
            f"fail on 429; with the client's default retries (2, honouring `retry-after`) "
            f"{med('lc-retries', lambda r: r.failed):g} still fail, after {med('lc-retries', lambda r: r.rejected):g} "
            "429s: each thread waits and retries on its own, and they collide again.")
    if "lc-limiter" in results:
        rate, share = pace("lc-limiter", 0), pace("lc-limiter", 1)
        higher = pace("lc-limiter-high", 0)
        lines.append(
            f"- **`InMemoryRateLimiter`.** At R = {best:.1f} requests/s (the best rate worked out by hand) it admitted "
            f"{rate:.1f} requests/s, {share:.0%} of the token limit's pace, without a 429. Its defaults "
            "(`check_every_n_seconds=0.1`, `max_bucket_size=1`) make a waiting thread sleep through tokens it could "
            "have used: the bucket holds one request, and a thread looks again only 0.1 s later"
            + (f"; 15% more R gave {higher:.1f} requests/s" if higher is not None else "")
            + ". It counts requests only, so R must come from the mean document's tokens: a list of long documents "
            "at the same R would pass the token limit.")
    ray_miss = "rr-ray" in results and not verdict(results["rr-ray"])[0]
    if ray_miss:
        rate = pace("rr-ray", 0)
        io = results.get("rr-ray-io")
        per_call = RAY_CPUS / rate * 1000
        io_text = "" if not io else (
            "The same chain with `with_options(io_bound=True)` runs its batch in driver threads: "
            f"{statistics.median(r.ratio for r in io):.2f}x the bound{' (target met)' if verdict(io)[0] else ''}, "
            "its pacer in the driver, where every call is made. ")
        lines.append(
            "- **Ray misses the time target, and the pacer is not why.** The calls never came fast enough to meet "
            f"the limits: {rate:.1f} requests/s, {pace('rr-ray', 1):.0%} of the token limit's pace. "
            "`chain.batch(..., ray)` sends chunks of items to Ray tasks (`RayBackend.chunk_runner`: only a chain "
            "that is `io_bound` as a whole, or whose every step is async, goes to driver threads; a chain that "
            "merely holds a rate-limited step does not), and a chunk task runs its items one after another "
            f"(`engine.inprocess.run_chunk`), so with {RAY_CPUS} CPUs {RAY_CPUS} calls are in flight, "
            f"~{per_call:.0f} ms each (the server's {LATENCY * 1000:.0f} ms, the client, the pacer actor's round "
            "trips): the throughput of that many threads, whatever the limits allow. " + io_text
            + "The executor backend already sends any chain holding a rate-limited step to threads "
            "(`ExecutorBackend.runner_for`); the Ray backend's `chunk_runner` does not. The first admission "
            f"{med('rr-ray', lambda r: r.first):.2f} s after the call waits for the pacer actor to start (a new "
            "step each run, so a new actor) and for the first chunk task.")
    if "rr-data" in results:
        lines.append(
            f"- **Data engine.** The first admission came {med('rr-data', lambda r: r.first):.2f} s after the call "
            "(Ray Data plans and starts its tasks; the pacer actor starts); then the two tasks' threads keep the "
            f"pace at {pace('rr-data', 1):.0%} of the token limit.")
    learned, declared = med("rr-local-learned", lambda r: r.wall), med("rr-local", lambda r: r.wall)
    if learned is not None and declared is not None:
        lines.append(
            "- **Nothing declared.** The slow start (4 requests/s, doubling every 0.5 s until the first 429, whose "
            f"`x-ratelimit-*` headers then name the limits) cost {learned - declared:.1f} s over the declared "
            "limits locally.")
    high = med("rr-local-high", lambda r: r.rejected)
    high_ray = med("rr-ray-high", lambda r: r.rejected)
    if high is not None:
        on_ray = "" if high_ray is None else f", on Ray {high_ray:g}"
        lines.append(
            f"- **Declared 30% too high.** Locally {high:g} 429 a run (median){on_ray}: the limits a 429's "
            "headers name replace the declared ones at once.")
    return ["How to read it:", "", *lines, ""] if lines else []


TIMELINES = ("lc-retries", "lc-limiter", "rr-local", "rr-ray", "rr-ray-io", "rr-data", "rr-local-learned")


def plot(chosen: list[Method], results: dict[str, list[Run]], limit: Bound, path: Path) -> None:
    """Left: time over the bound per method (bar: median; dots: each run). Right: tokens the server admitted over
    time in one run (the median one) of a few methods, against the most the token limit admits."""
    from svg_chart import PALETTE, Bars, Lines, write

    rows = [(m.key, [r.ratio for r in results[m.key]], "#4c78a8" if m.ours else "#f58518") for m in chosen]
    left = Bars("Wall time / bound (bar: median; dots: each run)", rows,
                [(1.0, "black", ""), (DONE_RATIO, "red", f"{DONE_RATIO}x: the target")],
                "orange: langchain-core; blue: rayrunnables")
    capacity, rate = max(TPM * BURST_SECONDS / 60, 1.0), TPM / 60
    x_max = max([limit.seconds, *(r.wall for runs in results.values() for r in runs)]) * 1.02
    y_max = limit.total_cost * 1.05
    reach = min(x_max, (y_max - capacity) / rate)
    series = [("most the token limit admits", [(0.0, capacity), (reach, capacity + rate * reach)], "black", "6,3"),
              ("all documents", [(0.0, limit.total_cost), (x_max, limit.total_cost)], "grey", "2,3")]
    for color, key in zip(PALETTE, [k for k in TIMELINES if k in results], strict=False):
        run = sorted(results[key], key=lambda r: r.wall)[len(results[key]) // 2]
        total, points = 0, [(0.0, 0.0)]
        for t, cost in run.timeline:
            points.append((t, total))
            total += cost
            points.append((t, total))
        points.append((run.wall, total))
        series.append((key, points, color, ""))
    right = Lines("Tokens admitted by the server over time (one run each)", series, x_max, y_max,
                  "seconds since the batch call", (1000, "k"))
    write(path, left, right)


def render(chosen: list[Method], results: dict[str, list[Run]], limit: Bound, env: list[str], command: str,
           rounds: int, ray_start: float, elapsed: float, best: float) -> list[str]:
    mean_cost = limit.total_cost / limit.n
    return [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}` (run took {elapsed:.0f} s).",
        "",
        *env,
        f"- load average at end (this run's own processes included): {_loadavg()}",
        f"- server: `OpenAIServer(requests_per_minute={RPM:,}, tokens_per_minute={TPM:,}, "
        f"burst_seconds={BURST_SECONDS:g}, latency={LATENCY})` in a child process, a fresh one per run; "
        f"client: langchain-openai `ChatOpenAI(max_tokens={MAX_TOKENS})`",
        f"- workload: {limit.n:,} documents of 400-1,600 characters, {mean_cost:.1f} tokens per request on average "
        f"(the server's count: prompt + max_tokens), {limit.total_cost:,} in all",
        f"- bound: {limit.seconds:.2f} s = max(token term {limit.token_term:.2f} s, request term "
        f"{limit.request_term:.2f} s) + {LATENCY} s latency ({limit.binding} bind); "
        f"the best `InMemoryRateLimiter` rate by hand: {TPM:,} / 60 / {mean_cost:.1f} = {best:.1f} requests/s",
        f"- Ray: `ray.init(address=\"local\", num_cpus={RAY_CPUS}, include_dashboard=False)` took {ray_start:.1f} s, "
        "before any timing (not in the times below)",
        "",
        *table(chosen, results),
        "",
        f"Method: {rounds} round(s), every method once per round, the order rotated from round to round, each run "
        "after the machine settled (`settle()`, at most 3 s) and against a fresh server (full buckets); medians "
        "over the rounds (the failed-item and 429 counts too; every run's failed count in brackets when they "
        f"differ). Before timing, every method ran once on {WARMUP_DOCS} documents (Ray's workers started). "
        "Time: the batch call alone (the chain built and, for the data engine, the dataset made before it). "
        "429s: every 429 the server answered, as a share of every request it answered. Failed items: items "
        "that raised or whose text differs from the server's deterministic reply. Server tokens = callback's: "
        "the server's prompt, completion and total token counts equal those of a `UsageMetadataCallbackHandler` "
        "passed in the call's config. First admission / after last admission: from the call to the server's "
        "first admission, and from its last admission to the call's end (the rest of the time is the "
        "admissions' span). The done-means (no failed item, 429s <= 2% of requests, time <= 1.2x the bound) "
        "is judged on the rayrunnables rows; on the langchain-core rows it is shown in brackets for reference.",
        "",
        *reading(results, limit, best),
        f"![time over bound and tokens admitted over time]({PLOT.name})",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="150 documents, 1 round (a smoke check)")
    parser.add_argument("--docs", type=int, default=None, help="documents per run (default 600; 150 with --quick)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 with --quick)")
    parser.add_argument("--only", action="append", default=[], metavar="KEY", help="run this method (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the methods and exit")
    parser.add_argument("--write-results", action="store_true", help=f"replace the section in {RESULTS_MD.name}")
    parser.add_argument("--plot", type=Path, metavar="FILE",
                        help=f"write the plot (SVG) there; --write-results writes it to {PLOT.name}")
    parser.add_argument("--raw", type=Path, metavar="FILE", help="also write every run (with its admissions) as JSON")
    args = parser.parse_args(argv)
    n_docs = args.docs or (150 if args.quick else 600)
    rounds = args.rounds or (1 if args.quick else 3)
    docs = documents(n_docs)
    all_methods = methods(docs)
    if args.list:
        for m in all_methods:
            print(f"{m.key:18} {m.family}, {m.backend}: {m.label}")
        return 0
    unknown = set(args.only) - {m.key for m in all_methods}
    if unknown:
        parser.error(f"unknown method(s) {sorted(unknown)}")
    if args.only and args.write_results:
        parser.error("--write-results needs every method; drop --only")
    chosen = [m for m in all_methods if not args.only or m.key in args.only]
    neutral_environment("RAY_ADDRESS")
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

    from rayrunnables.testing.openai_server import fake_reply

    started = time.monotonic()
    env = environment()  # before anything starts, so the load average is the machine's
    command = command_line(__file__)
    limit = bound(docs)
    best = min(TPM / 60 / (limit.total_cost / limit.n), RPM / 60)
    expected = [fake_reply(d, MAX_TOKENS) for d in docs]
    provider = Provider()  # before Ray: nothing forks a process that runs Ray
    import ray

    t = time.monotonic()
    ray.init(address="local", num_cpus=RAY_CPUS, include_dashboard=False, log_to_driver=False)
    ray_start = time.monotonic() - t
    print(f"ray.init took {ray_start:.1f} s; bound {limit.seconds:.2f} s ({limit.binding}); "
          f"best R {best:.1f}/s", file=sys.stderr, flush=True)
    results: dict[str, list[Run]] = {m.key: [] for m in chosen}
    try:
        warm_docs = documents(WARMUP_DOCS, seed=3)
        warm_expected = [fake_reply(d, MAX_TOKENS) for d in warm_docs]
        for m in chosen:  # warm-up: workers started, imports done, every method checked once
            outcome = m.run(provider.start(requests_per_minute=None, tokens_per_minute=None), warm_docs)
            wrong = sum(1 for out, want in zip(outcome.outputs, warm_expected, strict=True) if out != want)
            if wrong:
                raise AssertionError(f"{m.key}: {wrong} of {WARMUP_DOCS} warm-up outputs wrong")
        for round_ in range(rounds):
            turn = round_ % len(chosen)
            for m in chosen[turn:] + chosen[:turn]:
                settle(max_wait=3.0)
                time.sleep(0.5)
                run = measure(provider, m, docs, expected, limit)
                results[m.key].append(run)
                print(f"round {round_ + 1} {m.key:18} {run.wall:6.2f} s  {run.ratio:5.2f}x  429s {run.rejected:4d} "
                      f"({run.share_429:.1%})  failed {run.failed}  usage equal {run.usage_equal}  "
                      f"first {run.first if run.first is None else round(run.first, 2)}  "
                      f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
        provider.close()
    elapsed = time.monotonic() - started
    body = render(chosen, results, limit, env, command, rounds, ray_start, elapsed, best)
    print("\n".join(body))
    if args.raw:
        args.raw.write_text(json.dumps({k: [dataclasses.asdict(r) for r in runs] for k, runs in results.items()}))
    target = args.plot or (PLOT if args.write_results else None)
    if target is not None:
        plot(chosen, results, limit, target)
        print(f"(plot written to {target})", file=sys.stderr)
    if args.write_results:
        write_results(RESULTS_MD, HEADING, body)
        print(f"(written to {RESULTS_MD})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
