"""The built-in demo: a research agent's fan-out/fan-in and a CPU-heavy embedding step, in-process and on Ray.

The embedding is deliberately pure Python (a hashing embedder), so threads cannot run it in parallel
(the GIL) while Ray's worker processes can. The searches sleep, like HTTP calls: threads overlap them.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from typing import Any

from .runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

DIM = 64
TOPICS = ["ray scheduling", "object store", "actor pools", "chunked maps", "fault tolerance", "GIL"]


def documents(n: int = 48) -> list[str]:
    """A built-in corpus: ``n`` deterministic documents of ~600 characters."""
    words = "ray task actor object store chunk map batch worker driver node cluster embed vector".split()
    return [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(90)) + f" doc{i}" for i in range(n)]


def _where() -> str:
    return f"{socket.gethostname()}:pid {os.getpid()}"


def embed(text: str) -> dict[str, Any]:
    """A CPU-bound hashing embedder (~40 ms per document in pure Python: the GIL serialises it on threads)."""
    vector = [0.0] * DIM
    for _ in range(300):
        for token in text.split():
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            vector[digest[0] % DIM] += 1.0 if digest[1] % 2 else -1.0
    norm = sum(v * v for v in vector) ** 0.5 or 1.0
    return {"norm": round(norm, 3), "head": [round(v / norm, 3) for v in vector[:3]], "ran_on": _where()}


def _search(source: str) -> Any:
    def search(question: str) -> dict[str, Any]:
        time.sleep(0.3)  # an HTTP call
        return {"source": source, "hits": [f"{source}: {t}" for t in TOPICS if t.split()[0] in question.lower()]
                or [f"{source}: nothing on {question!r}"], "ran_on": _where()}

    search.__name__ = f"search_{source}"
    return RunnableLambda(search).with_options(io_bound=True)  # waits in a driver thread, holds no CPU


def synthesize(found: dict[str, Any]) -> dict[str, Any]:
    hits = [h for key in ("web", "papers", "notes") for h in found[key]["hits"]]
    return {"question": found["question"], "answer": f"{len(hits)} findings", "ran_on": _where(),
            "searches_ran_on": sorted({found[k]["ran_on"] for k in ("web", "papers", "notes")})}


def build_chain() -> RunnableParallel:
    research: Any = {
        "question": RunnablePassthrough(),
        "web": _search("web"),
        "papers": _search("papers"),
        "notes": _search("notes"),
    } | RunnableLambda(synthesize)
    return RunnableParallel({"research": RunnablePassthrough() | (lambda q: q["question"]) | research,
            "embeddings": RunnablePassthrough() | (lambda q: q["docs"]) | RunnableLambda(embed).map()})


def run_demo(address: str | None = None, n_docs: int = 48, echo: Any = print) -> dict[str, float]:
    chain = build_chain()
    payload = {"question": "How does Ray scheduling beat the GIL?", "docs": documents(n_docs)}
    echo(f"chain:\n{chain.explain('ray')}\n")
    timings: dict[str, float] = {}
    for backend in ("local", "ray"):
        if backend == "ray":
            from .backends.ray.backend import RayBackend

            started = time.perf_counter()
            ray_backend = RayBackend(address=address)
            ray_backend.ensure_started()
            echo(f"Ray started in {time.perf_counter() - started:.1f} s "
                 f"({ray_backend.parallelism()} CPUs; address {address or 'local, started by this program'})")
            choice: Any = ray_backend
            chain.invoke(payload, {"backend": choice})  # warm-up: start the worker processes, then time
            echo("(one warm-up run on Ray done: worker processes started)")
        else:
            choice = "local"
        started = time.perf_counter()
        out = chain.invoke(payload, {"backend": choice})
        timings[backend] = time.perf_counter() - started
        places = sorted({e["ran_on"] for e in out["embeddings"]})
        echo(f"[{backend}] {timings[backend]:.2f} s  answer: {out['research']['answer']}")
        echo(f"    searches ran on {out['research']['searches_ran_on']}")
        echo(f"    {len(out['embeddings'])} embeddings ran on {len(places)} process(es): {places}")
    echo(f"\nRay vs in-process: {timings['local'] / timings['ray']:.2f}x faster on this machine "
         f"({os.cpu_count()} cores)")
    return timings
