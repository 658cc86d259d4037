"""Embed a document collection: split documents into chunks, embed every chunk with a model loaded
once per actor, one matrix product per chunk of work.

    python examples/embed_documents.py                 # in-process, then on a local Ray
    python examples/embed_documents.py --docs 5000 --backend ray
    python examples/embed_documents.py --model sentence-transformers/all-MiniLM-L6-v2   # if installed

The default embedder is a deterministic hashing + random-projection model (no download): it hashes
word unigrams and bigrams into a sparse count vector and projects it with a fixed random matrix, so
similar texts get similar vectors. ``--model`` uses a real sentence-transformers model instead, when
that package and the model are available locally.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import time
from typing import Any

import numpy as np

from rayrunnables import RunnableActor, RunnableLambda

BUCKETS = 2**12


class HashingEmbedder:
    """Loaded once per actor: builds its projection matrix (the "model") in ``__init__``."""

    def __init__(self, dim: int = 256, seed: int = 7) -> None:
        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((BUCKETS, dim)).astype(np.float32) / np.sqrt(dim)

    def features(self, text: str) -> np.ndarray:
        counts = np.zeros(BUCKETS, dtype=np.float32)
        words = text.lower().split()
        for token in words + [f"{a} {b}" for a, b in itertools.pairwise(words)]:
            digest = hashlib.blake2b(token.encode(), digest_size=4).digest()
            counts[int.from_bytes(digest, "little") % BUCKETS] += 1.0
        return counts

    def batch(self, texts: list[str]) -> list[list[float]]:
        """The vectorized form: one (n x BUCKETS) @ (BUCKETS x dim) product for the whole chunk."""
        matrix = np.stack([self.features(t) for t in texts]) @ self.projection
        matrix /= np.linalg.norm(matrix, axis=1, keepdims=True) + 1e-9
        return matrix.round(5).tolist()


class SentenceTransformerEmbedder:
    """A real model, when sentence-transformers and the model files are installed locally."""

    def __init__(self, model: str) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model)

    def batch(self, texts: list[str]) -> list[list[float]]:
        return self.model.encode(texts, normalize_embeddings=True).tolist()


def split(doc: dict[str, Any], size: int = 400) -> list[dict[str, Any]]:
    """Cut a document into ~size-character chunks on word boundaries."""
    words, chunks, current = doc["text"].split(), [], []
    for word in words:
        current.append(word)
        if sum(len(w) + 1 for w in current) >= size:
            chunks.append(" ".join(current))
            current = []
    if current:
        chunks.append(" ".join(current))
    return [{"doc": doc["id"], "chunk": i, "text": c} for i, c in enumerate(chunks)]


def documents(n: int) -> list[dict[str, Any]]:
    vocabulary = ("ray actor task object store chunk embedding vector search document cluster "
                  "driver worker scheduler memory batch stream retry failure node").split()
    rng = np.random.default_rng(0)
    return [{"id": f"doc-{i}", "text": " ".join(rng.choice(vocabulary, size=180))} for i in range(n)]


def build(model: str | None, pool_size: int) -> Any:
    embedder = (RunnableActor(SentenceTransformerEmbedder, model, pool_size=pool_size) if model
                else RunnableActor(HashingEmbedder, pool_size=pool_size))
    return embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--backend", choices=["local", "ray", "both"], default="both")
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--model", default=None, help="a sentence-transformers model name (optional)")
    args = parser.parse_args()

    docs = documents(args.docs)
    chunks = [c for chunked in RunnableLambda(split).batch(docs) for c in chunked]
    texts = [c["text"] for c in chunks]
    embedder = build(args.model, args.pool_size)
    print(f"{len(docs)} documents -> {len(chunks)} chunks; embedder: {args.model or 'hashing projection'}")
    print(embedder.explain("ray"))
    results = {}
    for backend in (["local", "ray"] if args.backend == "both" else [args.backend]):
        start = time.perf_counter()
        vectors = embedder.batch(texts, {"backend": backend})
        seconds = time.perf_counter() - start
        results[backend] = vectors
        print(f"[{backend}] {len(vectors)} vectors of dim {len(vectors[0])} in {seconds:.2f} s "
              f"({len(vectors) / seconds:,.0f} chunks/s)")
    if len(results) == 2:
        same = np.allclose(np.array(results["local"]), np.array(results["ray"]), atol=1e-4)
        print(f"local and ray vectors identical: {same}")


if __name__ == "__main__":
    main()
