"""Embedding workload (issue 4): a stateful numpy embedder over 10,000 documents, side by side in one run.

    python benchmarks/bench_embed.py                   # full run (about 4.5 minutes on 2 cores)
    python benchmarks/bench_embed.py --quick           # 2,000 documents (a smoke check)
    python benchmarks/bench_embed.py --write-results   # also replace the section of benchmarks/RESULTS.md

The model is ``HashingEmbedder``: a deterministic hashing-trick featuriser (pure Python: lower-casing,
tokenising, crc32 of every word, word bigram and character trigram, ~0.6 ms per ~1,000-character document)
followed by one matrix product with a fixed random projection (+1/0/-1 entries, so every method gets
bit-identical vectors whatever its chunking). Building it takes ~50 ms (the projection, then a sleep to
50 ms), like loading a small model. Compared, on the same documents:

- sequential: one instance, ``__call__`` per document in a loop; and one ``batch(all documents)`` call;
- langchain-core: ``RunnableLambda(instance).batch(docs)`` (threads, the instance built once);
- for reference, the stdlib by hand: ``ProcessPoolExecutor(2)`` with a model per process, 64-document chunks;
- Ray Data: ``from_items(docs).map_batches(Embedder, compute=ActorPoolStrategy(size=2), batch_size=...)``;
- rayrunnables: ``RunnableActor(HashingEmbedder, pool_size=2).batch(docs, {"backend": "ray"})``; the
  class has a ``batch(self, texts)`` method, so each chunk is one call (one matrix product).

Every time is end to end: building the model(s) or actor pool, moving the documents, computing, and
having every vector back in the driver. Outputs are checked to be equal across methods. Targets:
rayrunnables at least as fast as Ray Data in the same run, and >= 1.8x the sequential loop (2 cores).
"""

from __future__ import annotations

import os

# One BLAS thread everywhere: "sequential" means one core, and Ray's workers get one thread anyway.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import datetime as _dt  # noqa: E402
import itertools  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import zlib  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

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

HEADING = "Embedding workload (issue 4)"
RAY_INIT = {"address": "local", "num_cpus": 2, "include_dashboard": False}
DOCS = 10_000
DOC_CHARS = 1_000
POOL = 2
RAY_DATA_BATCH = 250
CHUNK = 64  # documents per call in the ProcessPoolExecutor reference (rayrunnables sizes its own chunks)

# ------------------------------------------------------------------------------------------------
# Documents and the model
# ------------------------------------------------------------------------------------------------


def make_docs(n: int, chars: int = DOC_CHARS, seed: int = 0) -> list[str]:
    """``n`` documents of about ``chars`` characters: words from a 5,000-word made-up vocabulary drawn
    with Zipf frequencies (as in real text), the same for a given seed."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2, 1.9, 1.5, 1, 0.8,
               0.2, 0.2, 0.1, 0.1]
    vocab = ["".join(rng.choices(letters, weights, k=rng.randint(2, 10))) for _ in range(5_000)]
    cum = list(itertools.accumulate(1 / rank for rank in range(1, len(vocab) + 1)))
    docs = []
    for _ in range(n):
        text = " ".join(rng.choices(vocab, cum_weights=cum, k=chars // 4))
        docs.append(text[: text.rfind(" ", 0, chars)])
    return docs


_TOKEN = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """A deterministic stand-in for a small embedding model: hashing-trick features, one projection."""

    def __init__(self, dim: int = 128, features: int = 1 << 12, seed: int = 0, load_s: float = 0.05) -> None:
        start = time.perf_counter()
        self.features = features
        rng = np.random.default_rng(seed)
        # entries in {-1, 0, +1}: integer counts times these sum exactly in float32 (in any order), so
        # a chunk's one matrix product and a per-document product give bit-identical vectors
        self.projection = rng.integers(-1, 2, size=(features, dim)).astype(np.float32)
        rest = load_s - (time.perf_counter() - start)
        if rest > 0:
            time.sleep(rest)  # the rest of a ~50 ms "model load"

    def featurize(self, text: str) -> dict[int, int]:
        """Bucket -> count over words, word bigrams and character trigrams (pure Python, ~0.6 ms/doc)."""
        mask, crc = self.features - 1, zlib.crc32
        counts: dict[int, int] = {}
        get = counts.get
        prev = "^"
        for word in _TOKEN.findall(text.lower()):
            for feature in (word, prev + " " + word):
                h = crc(feature.encode()) & mask
                counts[h] = get(h, 0) + 1
            padded = "<" + word + ">"
            for i in range(len(padded) - 2):
                h = crc(padded[i : i + 3].encode()) & mask
                counts[h] = get(h, 0) + 1
            prev = word
        return counts

    def batch(self, texts: list[str]) -> list[np.ndarray]:
        """Featurise each text, then one matrix product for the whole chunk; L2-normalised rows."""
        counts = np.zeros((len(texts), self.features), dtype=np.float32)
        for row, text in enumerate(texts):
            feats = self.featurize(text)
            counts[row, list(feats)] = list(feats.values())
        vectors = counts @ self.projection
        norms = np.sqrt(np.einsum("ij,ij->i", vectors.astype(np.float64), vectors.astype(np.float64)))
        return list((vectors / np.maximum(norms, 1e-12)[:, None]).astype(np.float32))

    def __call__(self, text: str) -> np.ndarray:
        return self.batch([text])[0]


class RayDataEmbedder(HashingEmbedder):
    """The same model in Ray Data's shape: ``__call__`` takes and returns a batch (a dict of columns)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:  # type: ignore[override]
        return {"id": batch["id"], "embedding": np.stack(self.batch(list(batch["text"])))}


# ------------------------------------------------------------------------------------------------
# The methods compared
# ------------------------------------------------------------------------------------------------


def sequential_loop(docs: list[str]) -> list[np.ndarray]:
    model = HashingEmbedder()
    return [model(doc) for doc in docs]


def sequential_vectorized(docs: list[str]) -> list[np.ndarray]:
    return HashingEmbedder().batch(docs)


def langchain_batch(docs: list[str]) -> list[np.ndarray]:
    import langchain_core.runnables as lc

    return lc.RunnableLambda(HashingEmbedder()).batch(docs)


_PROCESS_MODEL: list[HashingEmbedder] = []


def _load_in_process() -> None:
    _PROCESS_MODEL.append(HashingEmbedder())


def _embed_chunk(texts: list[str]) -> list[np.ndarray]:
    return _PROCESS_MODEL[0].batch(texts)


def _chunks(docs: list[str]) -> list[list[str]]:
    return [docs[i : i + CHUNK] for i in range(0, len(docs), CHUNK)]


def process_pool(docs: list[str]) -> list[np.ndarray]:
    """Reference: the stdlib, by hand: a model per process (initializer), chunks of ``CHUNK`` documents."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")  # this process runs Ray's threads: no fork
    with ProcessPoolExecutor(POOL, mp_context=ctx, initializer=_load_in_process) as pool:
        return [vector for part in pool.map(_embed_chunk, _chunks(docs)) for vector in part]


_CEILING_POOL: list[Any] = []


def machine_ceiling(docs: list[str]) -> list[np.ndarray]:
    """What two busy processes give on this machine with the least machinery: the reference process pool,
    but started (models loaded) before the timing, so only the compute and the pipes are timed."""
    if not _CEILING_POOL:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(POOL, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_load_in_process)
        list(pool.map(_embed_chunk, [docs[:2]] * POOL))
        _CEILING_POOL.append(pool)
    return [vector for part in _CEILING_POOL[0].map(_embed_chunk, _chunks(docs)) for vector in part]


class _Empty:
    def ready(self) -> int:
        return os.getpid()


def ray_actor_start(docs: list[str]) -> list[np.ndarray] | None:
    """Ray's fixed cost alone: two actors of an empty class, from creation until both answer."""
    import ray

    actors = [ray.remote(_Empty).remote() for _ in range(POOL)]
    ray.get([actor.ready.remote() for actor in actors])
    for actor in actors:
        ray.kill(actor)
    return None


def ray_data(docs: list[str]) -> list[np.ndarray]:
    import ray

    rows = [{"id": i, "text": doc} for i, doc in enumerate(docs)]
    ds = ray.data.from_items(rows).map_batches(
        RayDataEmbedder, compute=ray.data.ActorPoolStrategy(size=POOL), batch_size=RAY_DATA_BATCH
    )
    out = [None] * len(docs)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, vector in zip(batch["id"], batch["embedding"], strict=True):
            out[i] = vector
    return out  # type: ignore[return-value]


def rayrunnables_actor(docs: list[str]) -> list[np.ndarray]:
    import rayrunnables as rr

    step = rr.RunnableActor(HashingEmbedder, pool_size=POOL)  # a new step: a new pool, built in this call
    try:
        return step.batch(docs, {"backend": "ray"})
    finally:
        _FRESH.append(step)


_FRESH: list[Any] = []


def close_fresh_pools() -> None:
    """Stop the actors of the steps built by ``rayrunnables_actor`` (outside any timing), as Ray Data stops
    its own after each execution."""
    from rayrunnables.backends import get_backend

    backend = get_backend("ray")
    while _FRESH:
        backend.release(_FRESH.pop())  # type: ignore[attr-defined]


_KEPT: list[Any] = []


def rayrunnables_actor_kept(docs: list[str]) -> list[np.ndarray]:
    """The same step object called again: its actor pool (models loaded) is already up."""
    import rayrunnables as rr

    if not _KEPT:
        _KEPT.append(rr.RunnableActor(HashingEmbedder, pool_size=POOL))
    return _KEPT[0].batch(docs, {"backend": "ray"})


@dataclass
class Row:
    implementation: str
    seconds: float
    docs: int
    relative: float
    target: str = ""
    meets: str = "—"  # e.g. "yes", "**no**", or one verdict per target


def check_equal(name: str, got: list[np.ndarray], expected: list[np.ndarray]) -> None:
    if len(got) != len(expected):
        raise AssertionError(f"{name}: {len(got)} vectors for {len(expected)} documents")
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        if not np.array_equal(a, b):
            raise AssertionError(f"{name}: vector {i} differs from the sequential loop's (max |diff| "
                                 f"{float(np.max(np.abs(np.asarray(a) - b))):.3g})")


def featurize_ms(model: HashingEmbedder, sample: list[str]) -> float:
    """Milliseconds per document of the pure-Python featuriser here (best of 3 passes over ``sample``)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for doc in sample:
            model.featurize(doc)
        best = min(best, time.perf_counter() - start)
    return best / len(sample) * 1e3


CEILING = (f"machine ceiling: the same `ProcessPoolExecutor({POOL})`, started and models loaded before the timing, "
           f"{CHUNK}-document chunks")
START = f"Ray's fixed cost alone: {POOL} actors of an empty class, created until both answer"


def run_all(docs: list[str], rounds: int) -> tuple[list[Row], str]:
    import ray

    methods: dict[str, Callable[[list[str]], list[np.ndarray] | None]] = {
        "sequential: one instance, `__call__` per document": sequential_loop,
        "sequential: one instance, one `batch(all documents)` (reference)": sequential_vectorized,
        "langchain-core `RunnableLambda(instance).batch(docs)` (threads)": langchain_batch,
        f"reference: `ProcessPoolExecutor({POOL})` (spawn), model per process, {CHUNK}-document chunks": (
            process_pool),
        CEILING: machine_ceiling,
        START: ray_actor_start,
        f"Ray Data `from_items(docs).map_batches(Embedder, compute=ActorPoolStrategy(size={POOL}), "
        f"batch_size={RAY_DATA_BATCH})`": (
            ray_data),
        f"rayrunnables `RunnableActor(Embedder, pool_size={POOL}).batch(docs, ray)`": rayrunnables_actor,
        "rayrunnables, same step called again (pool already up; not comparable to Ray Data's row)": (
            rayrunnables_actor_kept),
    }
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    warm = docs[:200]  # worker processes, imports and Ray Data's executor warmed before any timing
    for name, run in methods.items():
        if "Ray" in name or "rayrunnables" in name or "ProcessPool" in name or name == CEILING:
            run(warm)
    close_fresh_pools()
    expected: list[np.ndarray] | None = None
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):  # rounds interleave the methods, so load bursts hit all of them alike
        for name, run in methods.items():
            print(f"  {name} ...", file=sys.stderr, flush=True)
            settle()  # the previous method's processes and actors have stopped, not only returned
            start = time.perf_counter()
            out = run(docs)
            took = time.perf_counter() - start
            close_fresh_pools()
            if out is not None:
                if expected is None:
                    expected = out
                check_equal(name, out, expected)
            times[name].append(took)
    for pool in _CEILING_POOL:
        pool.shutdown()
    _CEILING_POOL.clear()
    # medians: this VM's core speed drifts by tens of percent for seconds at a time, and a best-of picks
    # each method's luckiest moment (two processes' best can even beat 2x the sequential loop's best)
    best = {name: statistics.median(samples) for name, samples in times.items()}
    seq = next(iter(best.values()))
    # The cold target's arithmetic: no scheduler does better than the machine's ceiling for the
    # compute plus Ray's fixed cost of starting the actor processes (CPU-bound here: it takes both cores).
    bound_s = best[CEILING] + best[START]
    bound = (f"Bound for a cold actor pool in this run: ceiling {best[CEILING]:.2f} s + actor start "
             f"{best[START]:.2f} s = {bound_s:.2f} s, i.e. at most {seq / bound_s:.2f}x the sequential loop "
             "for any scheduler that starts Ray actors inside the timed call.")
    ray_data_s = next(s for n, s in best.items() if n.startswith("Ray Data"))
    rows = []
    for name, seconds in best.items():
        row = Row(name, seconds, len(docs), seq / seconds)
        if name.startswith("rayrunnables `"):  # the target row: its pool is built inside the timed call
            row.target = "<= Ray Data's time; >= 1.8x sequential"
            row.meets = f"{_verdict(seconds <= ray_data_s)}; {_verdict(seq / seconds >= 1.8)}"
        elif name.startswith("rayrunnables"):
            row.target = ">= 1.8x sequential (pool already up)"
            row.meets = _verdict(seq / seconds >= 1.8)
        rows.append(row)
    return rows, bound


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


# ------------------------------------------------------------------------------------------------
# Report
# ------------------------------------------------------------------------------------------------


def render(rows: list[Row], bound: str, docs: list[str], per_doc_ms: float, command: str, env: list[str],
           rounds: int, seconds: float) -> list[str]:
    lines = [
        f"## {HEADING}",
        "",
        f"Measured {_dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} with `{command}` "
        f"(`ray.init(address=\"local\", num_cpus=2, include_dashboard=False)`; run took {seconds:.0f} s).",
        "",
        *env,
        f"- load average at end (this run's own processes included): {_loadavg()}",
        f"- workload: {len(docs):,} documents, {sum(map(len, docs)) / len(docs):,.0f} characters on average; "
        f"`HashingEmbedder`: ~50 ms to build, {per_doc_ms:.2f} ms per document featurised here before the run; "
        "OMP/OpenBLAS threads = 1",
        "",
        "| implementation | time | docs/s | speedup vs sequential loop | target | meets target |",
        "|---|---:|---:|---:|---|---|",
    ]
    for row in rows:
        rate, relative = f"{row.docs / row.seconds:,.0f}", f"{row.relative:.2f}x"
        if row.implementation == START:  # a fixed cost, not a way to embed the documents
            rate = relative = "—"
        lines.append(f"| {row.implementation} | {row.seconds:.2f} s | {rate} | {relative} | "
                     f"{row.target or '—'} | {row.meets} |")
    lines += [
        "",
        bound,
        "",
        f'"Meets target" refers to the first rayrunnables row. Method: median of {rounds} round(s), the methods '
        "interleaved in each round, each started once the machine is idle again (the previous method's teardown "
        "done), after one warm-up call of each parallel method on 200 documents; every time "
        "is end to end (model or actor pool built inside the timed call, every vector back in the driver; "
        "the last row alone reuses the pool its step built in the warm-up; the ceiling row's processes are "
        "started before it, and the actor-start row computes nothing), and every method's vectors are "
        "checked equal to the sequential loop's.",
        "",
    ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2,000 documents, one round (a smoke check)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per method; the median is reported (default 3)")
    parser.add_argument(
        "--write-results", action="store_true",
        help=f"replace the '## {HEADING}' section of {RESULTS_MD.relative_to(HERE.parent)} (or append it)",
    )
    args = parser.parse_args(argv)
    neutral_environment("RAY_ADDRESS")

    import ray
    import ray.data  # before timing: pandas and pyarrow take seconds to load

    env = environment()
    command = command_line(__file__)
    rounds = 1 if args.quick else args.rounds
    started = time.perf_counter()
    docs = make_docs(2_000 if args.quick else DOCS)
    per_doc_ms = featurize_ms(HashingEmbedder(), docs[:200])
    ray.init(**RAY_INIT)
    try:
        print(f"running embed ... (load {_loadavg()})", file=sys.stderr, flush=True)
        rows, bound = run_all(docs, rounds)
    finally:
        ray.shutdown()
    body = render(rows, bound, docs, per_doc_ms, command, env, rounds, time.perf_counter() - started)
    print("\n".join(body))
    if args.write_results:
        write_results(RESULTS_MD, HEADING, body)  # re-reads the file just before writing
        print(f"(written to {RESULTS_MD})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
