"""Mining throughput on this machine: corpus encoding (passages/s) and exact top-k search (queries/s),
torch vs faiss, for a 100k-passage corpus.

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
    from embedtune.mine import exact_search
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
    rows = []
    for index in ("torch", "faiss"):
        try:
            exact_search(q_emb[:8], p_emb, a.k, index)
        except Exception as e:  # faiss missing: say so in the table
            rows.append((index, f"not run ({e})", ""))
            continue
        started = time.perf_counter()
        scores, ids = exact_search(q_emb, p_emb, a.k, index)
        rows.append((index, f"{len(queries) / (time.perf_counter() - started):,.0f}", (scores, ids)))
    agree = ""
    if all(isinstance(r[2], tuple) for r in rows):
        (s1, i1), (s2, i2) = rows[0][2], rows[1][2]
        same_set = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i1, i2)) / i1.numel()
        agree = (f"{same_set:.4f} of the ids (as sets per query; embeddings from bf16 autocast tie often, and "
                 f"ties may come in either order); largest score difference {float((s1 - s2).abs().max()):.1e}")
    print(f"\n{a.n:,} passages, {len(queries):,} queries, top-{a.k}, {torch.get_num_threads()} threads\n")
    print("| step | rate |\n| --- | ---: |")
    print(f"| encode corpus (MiniLM, batch 32) | {a.n / enc_s:,.0f} passages/s ({enc_s:.0f} s) |")
    for index, rate, _ in rows:
        print(f"| search, {index} (exact inner product) | {rate} queries/s |")
    if agree:
        print(f"\ntorch and faiss top-{a.k}: the same {agree}")


if __name__ == "__main__":
    main()
