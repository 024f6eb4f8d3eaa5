"""Mining throughput on this machine with real embeddings: corpus encoding (passages/s), and top-k search
(queries/s, recall against exact search) with each index kind, for a 100k-passage corpus.

    python bench/mine.py [--n 100000] [--queries 2000] [--k 51]

The corpus: HPO term texts (name + definition) recombined into n distinct passages of realistic length
(definition of one term + name and definition of another). Encoding: packaged MiniLM, bf16 autocast where
the CPU has it, length-sorted batches of 32 (the mine stage's defaults). Queries: HPO synonyms.
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from embedtune.encode import encode
    from embedtune.precision import autocast
    from embedtune.hpo import build_queries, load_terms
    from embedtune.search import IndexConfig, Searcher, recall_against_exact
    from embedtune.model import Encoder, ModelConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--k", type=int, default=51)
    a = ap.parse_args()
    _, terms = load_terms()
    terms = [t for t in terms if t.definition]
    m = len(terms)
    passages = [f"{terms[i % m].name}. {terms[i % m].definition} {terms[(i * 7919 + 13) % m].definition}"
                if i >= m else f"{terms[i].name}. {terms[i].definition}" for i in range(a.n)]
    queries = [q["text"] for q in build_queries(terms)[0]][:a.queries]
    encoder = Encoder.load(ModelConfig())
    with autocast("auto"):
        encode(encoder, passages[:64], "passage")  # warm-up
        started = time.perf_counter()
        p_emb = encode(encoder, passages, "passage", 32, desc="encode corpus")
        enc_s = time.perf_counter() - started
        q_emb = encode(encoder, queries, "query", 32, desc="encode queries")
    rows, exact = [], None
    for kind in ("exact", "ivf", "hnsw"):
        started = time.perf_counter()
        searcher = Searcher(p_emb, IndexConfig(index=kind))
        build = time.perf_counter() - started
        searcher.search(q_emb[:8], a.k)  # warm-up
        started = time.perf_counter()
        found = searcher.search(q_emb, a.k)[1]
        rate = len(queries) / (time.perf_counter() - started)
        exact = found if exact is None else exact
        rows.append((searcher.describe(), build, rate, recall_against_exact(found, exact)))
    print(f"\n{a.n:,} passages, {len(queries):,} queries, top-{a.k}, {torch.get_num_threads()} threads\n")
    print("| step | build (s) | rate | recall vs exact |\n| --- | ---: | ---: | ---: |")
    print(f"| encode corpus (MiniLM, batch 32) | | {a.n / enc_s:,.0f} passages/s ({enc_s:.0f} s) | |")
    for name, build, rate, recall in rows:
        print(f"| search: {name} | {build:.1f} | {rate:,.0f} queries/s | {recall:.4f} |")


if __name__ == "__main__":
    main()
