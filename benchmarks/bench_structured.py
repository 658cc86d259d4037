"""Structured chains (issue 11): a dict of branches over real documents, and a fan-out of one big input.

    python benchmarks/bench_structured.py                   # full run (about 6 minutes on 2 cores)
    python benchmarks/bench_structured.py --quick           # 200 documents, one round (a smoke check)
    python benchmarks/bench_structured.py --write-results   # also replace the section of benchmarks/RESULTS.md

1. **Structured chain over real documents**: the first 1,000 ``.py`` files of the standard library (sorted
   paths, 2-60 KB) as ``{"path", "text"}`` dicts, through a dict of four branches: ``id`` (the path),
   ``stats`` (line and word counts), ``embedding`` (``split | embed.map() | mean``: ~40-line chunks, each a
   256-dim hashed-n-gram vector in pure Python + numpy, ~0.8 ms per chunk; then their mean) and
   ``keywords`` (the 10 most frequent identifiers). Compared in one run, methods interleaved per round: the
   plain loop (the reference), the same work as one flat ``RunnableLambda`` batched on Ray, the chain's
   ``batch`` on the local backend, on Ray and on a ``ProcessPoolExecutor`` (the executor backend, no Ray),
   hand-written Ray over chunks of documents, and
   langchain-core's ``batch`` of the same chain. Targets: local >= 0.95x the plain loop; Ray >= 0.9x the
   flat one-lambda form and >= 1.6x the plain loop.
2. **Fan-out of a big input**: ``{"matrix": 20,000,000 float64 (160 MB), "texts": 20,000 strings}`` into a
   dict of 3 branches that only read it, ``invoke`` on the local backend vs langchain-core: wall time and
   extra peak memory (tracemalloc, which numpy reports its buffers to). Targets: time <= 2x
   langchain-core's, extra peak memory <= 10% of the input's size.

See benchmarks/README.md for what each row measures and why.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import math
import multiprocessing
import re
import statistics
import sys
import sysconfig
import time
import tracemalloc
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

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

HEADING = "Structured chains (issue 11)"
NUM_CPUS = 2
RAY_INIT: dict[str, Any] = {"address": "local", "num_cpus": NUM_CPUS, "include_dashboard": False}
DIM = 256
CHUNK_LINES = 40
CHUNKS_PER_CPU = 4  # hand-written Ray: tasks per CPU
CHECK_DOCS = 24  # documents every method is checked (and Ray warmed up) on before any timing
BIG_FLOATS = 20_000_000
BIG_TEXTS = 20_000
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Options:
    docs: int  # documents in section 1
    rounds: int  # interleaved rounds in section 1
    fanout_rounds: int  # invoke calls per implementation in section 2

    @classmethod
    def of(cls, quick: bool) -> Options:
        return cls(200, 1, 3) if quick else cls(1_000, 5, 5)


# ------------------------------------------------------------------------------------------------
# Section 1: the documents and the user code (module level: Ray pickles __main__'s functions by value)
# ------------------------------------------------------------------------------------------------


def load_docs(n: int) -> list[dict[str, str]]:
    """The first ``n`` standard-library ``.py`` files (sorted paths, 2 KB-60 KB), read as text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    chosen = [p for p in paths if 2_048 <= p.stat().st_size <= 60_000][:n]
    if len(chosen) < n:
        raise SystemExit(f"only {len(chosen)} standard-library files of 2-60 KB under {root}; need {n}")
    return [{"path": str(p.relative_to(root)), "text": p.read_text(encoding="utf-8", errors="replace")}
            for p in chosen]


def doc_id(doc: dict[str, str]) -> str:
    return doc["path"]


def stats(doc: dict[str, str]) -> dict[str, float]:
    lines = doc["text"].splitlines()
    return {
        "lines": len(lines),
        "words": len(doc["text"].split()),
        "blank_lines": sum(1 for line in lines if not line.strip()),
        "comment_lines": sum(1 for line in lines if line.lstrip().startswith("#")),
        "avg_line_length": sum(map(len, lines)) / max(1, len(lines)),
        "max_line_length": max(map(len, lines), default=0),
    }


def split(doc: dict[str, str]) -> list[str]:
    lines = doc["text"].splitlines()
    return ["\n".join(lines[i : i + CHUNK_LINES]) for i in range(0, max(1, len(lines)), CHUNK_LINES)]


def embed(chunk: str) -> np.ndarray:
    """A 256-dim unit vector: signed hashed character 3- and 4-grams (pure Python), word unigrams and
    bigrams (crc32), then log-scaled and normalized with numpy. Deterministic in every process."""
    counts = [0.0] * DIM
    codes = [ord(c) for c in chunk]
    for i in range(len(codes) - 3):
        a, b, c, d = codes[i], codes[i + 1], codes[i + 2], codes[i + 3]
        h = ((a * 961 + b * 31 + c) * 2654435761) & 0xFFFFFFFF
        counts[h >> 24] += 1.0 if h & 1 else -1.0
        h = ((h ^ d) * 2246822519) & 0xFFFFFFFF
        counts[h >> 24] += 0.5 if h & 1 else -0.5
    words = WORD.findall(chunk)
    for a_word, b_word in itertools.pairwise(words):
        h = zlib.crc32(f"{a_word} {b_word}".encode())
        counts[h & 255] += 1.0 if h & 256 else -1.0
        h = zlib.crc32(a_word.encode())
        counts[h & 255] += 1.0 if h & 256 else -1.0
    vec = np.asarray(counts)
    vec = np.sign(vec) * np.log1p(np.abs(vec))
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm else vec


def mean(vectors: list[np.ndarray]) -> np.ndarray:
    return np.mean(np.stack(vectors), axis=0)


def keywords(doc: dict[str, str]) -> list[tuple[str, int]]:
    return Counter(WORD.findall(doc["text"])).most_common(10)


def process_document(doc: dict[str, str]) -> dict[str, Any]:
    """The whole dict by hand: what the plain loop, the flat one-lambda form and hand-written Ray run."""
    return {"id": doc_id(doc), "stats": stats(doc), "embedding": mean([embed(c) for c in split(doc)]),
            "keywords": keywords(doc)}


def process_many(docs: list[dict[str, str]]) -> list[dict[str, Any]]:
    return [process_document(doc) for doc in docs]


def build_chain(lib: Any) -> Any:
    """The same chain with rayrunnables or langchain_core.runnables (both have these two classes)."""
    return lib.RunnableParallel({
        "id": lib.RunnableLambda(lambda doc: doc["path"]),
        "stats": lib.RunnableLambda(lambda doc: stats(doc)),
        "embedding": lib.RunnableLambda(split) | lib.RunnableLambda(embed).map() | lib.RunnableLambda(mean),
        "keywords": lib.RunnableLambda(lambda doc: keywords(doc)),
    })


def check_docs(name: str, got: Any, expected: list[dict[str, Any]]) -> None:
    if not isinstance(got, list) or len(got) != len(expected):
        raise AssertionError(f"{name}: expected a list of {len(expected)} results, got {got!r:.200}")
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        same = (
            isinstance(g, dict) and set(g) == set(e) and g["id"] == e["id"] and g["stats"] == e["stats"]
            and [tuple(k) for k in g["keywords"]] == e["keywords"]
            and np.shape(g["embedding"]) == (DIM,) and np.allclose(g["embedding"], e["embedding"])
        )
        if not same:
            raise AssertionError(f"{name}: result {i} ({e['id']}) differs: {g!r:.300}")


@dataclass
class Row:
    implementation: str
    seconds: float
    best: float
    relative: str
    target: str = "—"
    meets: str = "—"


PLAIN, FLAT, LOCAL, RAY, EXECUTOR, HAND, LANGCHAIN = (
    "plain loop (`process_document` per document)",
    "flat one-lambda form: `RunnableLambda(process_document).batch(docs, ray)`",
    "rayrunnables `chain.batch(docs)` (local)",
    "rayrunnables `chain.batch(docs, ray)`",
    f"rayrunnables `chain.batch(docs, ProcessPoolExecutor({NUM_CPUS}))` (executor backend, no Ray)",
    f"hand-written Ray: `ray.remote` over {CHUNKS_PER_CPU} chunks of documents per CPU, `ray.get`",
    "langchain-core `chain.batch(docs)` (threads)",
)


def bench_documents(ray: Any, rr: Any, lc: Any, docs: list[dict[str, str]], rounds: int) -> list[Row]:
    with ProcessPoolExecutor(NUM_CPUS, mp_context=multiprocessing.get_context("spawn")) as pool:
        return _bench_documents(ray, rr, lc, docs, rounds, pool)


def _bench_documents(
    ray: Any, rr: Any, lc: Any, docs: list[dict[str, str]], rounds: int, pool: ProcessPoolExecutor
) -> list[Row]:
    ray_cfg = {"backend": "ray"}
    rr_chain, lc_chain, flat = build_chain(rr), build_chain(lc), rr.RunnableLambda(process_document)
    remote_many = ray.remote(process_many)
    n_tasks = CHUNKS_PER_CPU * NUM_CPUS

    def hand_ray(items: list[dict[str, str]]) -> list[dict[str, Any]]:
        size = -(-len(items) // n_tasks)
        parts = ray.get([remote_many.remote(items[i : i + size]) for i in range(0, len(items), size)])
        return [result for part in parts for result in part]

    methods: dict[str, Callable[[list[dict[str, str]]], Any]] = {
        PLAIN: process_many,
        FLAT: lambda items: flat.batch(items, ray_cfg),
        LOCAL: lambda items: rr_chain.batch(items),
        RAY: lambda items: rr_chain.batch(items, ray_cfg),
        EXECUTOR: lambda items: rr_chain.batch(items, {"backend": pool}),
        HAND: hand_ray,
        LANGCHAIN: lambda items: lc_chain.batch(items),
    }
    few = docs[:CHECK_DOCS]
    expected_few = process_many(few)
    for name, run in methods.items():  # correctness before any timing; also Ray's warm-up (workers, exports)
        check_docs(name, run(few), expected_few)
    expected = process_many(docs)  # untimed: what every timed output is checked against
    names = list(methods)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotated: no method always follows Ray
            settle()  # nothing of the previous method still running
            start = time.perf_counter()
            out = methods[name](docs)
            times[name].append(time.perf_counter() - start)
            check_docs(name, out, expected)  # outside the timing: the full output, every round
        print(f"  round {r + 1}/{rounds}: " + ", ".join(f"{t[-1]:.2f}" for t in times.values())
              + f" s (load {_loadavg()})", file=sys.stderr, flush=True)

    def paired(reference: str, name: str) -> float:
        """The median over rounds of reference time / method time, each ratio from one round: the VM's
        speed drifts between rounds, and both methods of a pair saw the same round."""
        return statistics.median(a / b for a, b in zip(times[reference], times[name], strict=True))

    block = local_vs_loop_in_blocks(methods[PLAIN], methods[LOCAL], docs)
    rows = []
    for name, samples in times.items():
        speed = paired(PLAIN, name)
        row = Row(name, statistics.median(samples), min(samples),
                  "1.00x (reference)" if name == PLAIN else f"{speed:.2f}x")
        if name == LOCAL:
            row.relative += f" ({block:.2f}x in alternating blocks of {BLOCK} documents)"
            row.target = ">= 0.95x plain loop"
            row.meets = "; ".join("yes" if ok else "**no**" for ok in (speed >= 0.95, block >= 0.95))
        elif name == RAY:
            vs_flat = paired(FLAT, name)
            row.relative += f" ({vs_flat:.2f}x the flat form)"
            row.target = ">= 0.9x flat form; >= 1.6x plain loop"
            row.meets = "; ".join("yes" if ok else "**no**" for ok in (vs_flat >= 0.9, speed >= 1.6))
        rows.append(row)
    return rows


BLOCK = 50


def local_vs_loop_in_blocks(loop: Callable[[Any], Any], local: Callable[[Any], Any], docs: list[Any]) -> float:
    """The plain loop over the local chain, timed in alternating blocks of ``BLOCK`` documents (each block
    by both, the order flipping), twice over every document: both see the same seconds of this VM,
    whose speed drifts by 10% within a round. Process CPU time: this process does all the work."""
    spent = {"loop": 0.0, "local": 0.0}
    for n, start in enumerate(range(0, 2 * len(docs), BLOCK)):
        part = (docs + docs)[start : start + BLOCK]
        pair = [("loop", loop), ("local", local)]
        for name, run in pair if n % 2 else pair[::-1]:
            began = time.process_time()
            run(part)
            spent[name] += time.process_time() - began
    return spent["loop"] / spent["local"]


# ------------------------------------------------------------------------------------------------
# Section 2: fan-out of one big input to 3 branches that only read it
# ------------------------------------------------------------------------------------------------


def big_input() -> dict[str, Any]:
    return {"matrix": np.random.default_rng(0).standard_normal(BIG_FLOATS),
            "texts": [f"text {i}: the quick brown fox jumps over the lazy dog" for i in range(BIG_TEXTS)]}


def input_bytes(value: dict[str, Any]) -> int:
    texts = value["texts"]
    return int(value["matrix"].nbytes) + sys.getsizeof(texts) + sum(sys.getsizeof(t) for t in texts)


def fanout_branches() -> dict[str, Callable[[dict[str, Any]], Any]]:
    return {"sum": lambda d: float(d["matrix"].sum()), "n": lambda d: len(d["texts"]),
            "first": lambda d: d["texts"][0]}


def extra_peak_bytes(run: Callable[[], Any]) -> int:
    """Peak of the memory traced during ``run()`` above what was traced at its start. The input was
    allocated before tracing began, so this is only what ``run`` adds: copies of it included (numpy
    reports its data buffers to tracemalloc; a ``copy.deepcopy`` of the array shows as its full size)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        run()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def bench_fanout(rr: Any, lc: Any, rounds: int) -> tuple[list[Row], int]:
    value = big_input()
    size = input_bytes(value)
    chains = {"rayrunnables `invoke` (local)": rr.RunnableParallel(fanout_branches()),
              "langchain-core `invoke`": lc.RunnableParallel(fanout_branches())}
    expected = {"sum": float(value["matrix"].sum()), "n": BIG_TEXTS, "first": value["texts"][0]}
    for name, chain in chains.items():  # correctness check, also the warm-up
        out = chain.invoke(value)
        if (set(out) != set(expected) or out["n"] != expected["n"] or out["first"] != expected["first"]
                or not math.isclose(out["sum"], expected["sum"], rel_tol=1e-9)):
            raise AssertionError(f"{name}: wrong output {out!r:.200}")
    times: dict[str, list[float]] = {name: [] for name in chains}
    for _ in range(rounds):
        for name, chain in chains.items():
            settle()
            start = time.perf_counter()
            chain.invoke(value)
            times[name].append(time.perf_counter() - start)
    peaks = {name: extra_peak_bytes(partial(chain.invoke, value)) for name, chain in chains.items()}
    ours, peer = chains
    med = {name: statistics.median(samples) for name, samples in times.items()}
    rows = []
    for name in chains:
        row = Row(name, med[name], min(times[name]), f"{med[name] / med[peer]:.2f}x langchain-core's time; "
                  f"extra peak {peaks[name] / 1e6:,.1f} MB ({peaks[name] / size:.1%} of the input)")
        if name == ours:
            row.target = "time <= 2x langchain-core; extra peak <= 10% of input"
            ok = (med[name] <= 2 * med[peer], peaks[name] <= 0.1 * size)
            row.meets = "; ".join("yes" if x else "**no**" for x in ok)
        rows.append(row)
    return rows, size


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def table(rows: list[Row], time_unit: str, scale: float, digits: int, relative: str) -> list[str]:
    lines = [f"| implementation | median ({time_unit}) | best ({time_unit}) | {relative} | target | meets target |",
             "|---|---:|---:|---|---|---|"]
    lines += [f"| {r.implementation} | {r.seconds * scale:.{digits}f} | {r.best * scale:.{digits}f} | {r.relative} "
              f"| {r.target} | {r.meets} |" for r in rows]
    return lines


def render(doc_rows: list[Row], fan_rows: list[Row], docs: list[dict[str, str]], n_chunks: int, size: int,
           opts: Options, command: str, env: list[str], seconds: float) -> list[str]:
    per_doc_ms = doc_rows[0].seconds / len(docs) * 1e3
    avg_chars = sum(len(d["text"]) for d in docs) / len(docs)
    return [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}` "
        f"(`ray.init(address=\"local\", num_cpus=2, include_dashboard=False)`; run took {seconds:.0f} s).",
        "",
        *env,
        f"- load average at end (this run's own processes included): {_loadavg()}",
        "",
        "### Structured chain over real documents",
        "",
        f"{len(docs):,} standard-library `.py` files (first by sorted path with 2-60 KB; {avg_chars:,.0f} "
        f"characters on average, {n_chunks:,} chunks of {CHUNK_LINES} lines); the plain loop took "
        f"{per_doc_ms:.1f} ms per document. Chain: `{{\"id\": λ, \"stats\": λ, \"embedding\": "
        "RunnableLambda(split) | RunnableLambda(embed).map() | RunnableLambda(mean), \"keywords\": λ}`.",
        "",
        *table(doc_rows, "s", 1.0, 2, "speed vs plain loop"),
        "",
        f"Method: {opts.rounds} round(s), the methods interleaved in each round (the order rotated from round to "
        "round), each started once the machine is idle again (`settle()`); times are medians (and best) over the "
        "rounds; speed = the median over rounds of the plain loop's time over the method's time in the same round "
        "(paired: this VM's speed drifts between rounds). The local row also gives the CPU time of the loop over "
        "the local chain's measured in alternating blocks of 50 documents, both over every document twice. "
        f"Before timing, every method ran on the first {CHECK_DOCS} documents (the Ray methods' warm-up) and was "
        "checked against the plain loop; every timed output is checked too (outside the timing; embeddings with "
        "`np.allclose`).",
        "",
        "### Fan-out of a big input",
        "",
        f"Input: `{{\"matrix\": {BIG_FLOATS:,} float64, \"texts\": {BIG_TEXTS:,} strings}}`, {size / 1e6:,.1f} MB; "
        "chain: a dict of 3 branches that only read it (`sum` of the matrix, `len` of the texts, the first text).",
        "",
        *table(fan_rows, "ms", 1e3, 1, "relative; extra peak memory"),
        "",
        f"Method: median (and best) of {opts.fanout_rounds} `invoke` calls per implementation, interleaved, each after "
        "`settle()`, after one checked warm-up call. Extra peak memory: one more call under `tracemalloc` (not "
        "timed), its peak traced memory above the traced memory at its start; the input was allocated before "
        "tracing started, so a copy of it (numpy reports its buffers to tracemalloc) shows as extra.",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="200 documents, one round (smoke check, noisier)")
    parser.add_argument(
        "--write-results", action="store_true",
        help=f"replace the '## {HEADING}' section of {RESULTS_MD.relative_to(HERE.parent)} (or append it)",
    )
    args = parser.parse_args(argv)
    opts = Options.of(args.quick)
    neutral_environment("RAY_ADDRESS")

    import langchain_core.runnables as lc
    import ray

    import rayrunnables as rr

    env = environment()  # before Ray starts, so the load average is the machine's, not ours
    command = command_line(__file__)
    started = time.perf_counter()
    docs = load_docs(opts.docs)
    n_chunks = sum(len(split(doc)) for doc in docs)
    ray.init(**RAY_INIT)
    try:
        print(f"running documents ({len(docs)} docs) ... (load {_loadavg()})", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        doc_rows = bench_documents(ray, rr, lc, docs, opts.rounds)
        print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    print(f"running fan-out ... (load {_loadavg()})", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    fan_rows, size = bench_fanout(rr, lc, opts.fanout_rounds)
    print(f"  done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    body = render(doc_rows, fan_rows, docs, n_chunks, size, opts, command, env, time.perf_counter() - started)
    print("\n".join(body))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, body)  # re-reads the file just before writing
        print(f"(written to {RESULTS_MD})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
