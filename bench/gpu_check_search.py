"""The GPU check of mining's exact search (issue 17), as one script for a CUDA machine:

    python bench/gpu_check_search.py            # there (about a minute)
    python bench/gpu_check_search.py --smoke    # here, on CPU: tiny sizes, every code path

`search.exact_topk` scores every corpus block against every query on the GPU when there is one. This
measures its queries/s over float16 shards as the embedding cache holds them (bench/scale.py's
embedding-like vectors, 384-d, every 10th passage held out), and checks on a sample that the GPU returns the CPU's rows.
faiss-gpu is not measured: its wheel and CUDA libraries do not fit the 64 MiB a device call carries.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench")]


def main() -> None:
    from gpu_check import table
    from scale import embedding_like_vectors

    import embedtune.search as search
    from embedtune.embedding_cache import CorpusVectors, EmbeddingCache
    from embedtune.search import exact_topk

    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args()
    sizes, queries_n, k = ([20_000], 500, 50) if a.smoke else ([1_000_000, 4_000_000], 20_000, 50)
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}; torch {torch.__version__}")
    rows = []
    for n in sizes:
        passages, queries = embedding_like_vectors(n, queries_n)
        with tempfile.TemporaryDirectory() as work:
            cache = EmbeddingCache(Path(work), "synthetic")
            for start in range(0, n, 65_536):
                cache.add(np.arange(start, min(start + 65_536, n), dtype=np.uint64) + np.uint64(1),
                          passages[start:start + 65_536])
            del passages
            cache = EmbeddingCache(Path(work), "synthetic")
            vectors = CorpusVectors(cache, cache.find(np.arange(1, n + 1, dtype=np.uint64)))
            allowed = np.ones(n, dtype=bool)
            allowed[::10] = False
            for block in (16_384, 262_144):
                search.SEARCH_BLOCK = block
                exact_topk(queries[:64], vectors, k, allowed)  # warm-up (CUDA context, kernels)
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                started = time.time()
                scores, found = exact_topk(queries, vectors, k, allowed)
                seconds = time.time() - started
                rows.append((f"{n:,}", f"{block:,}", f"{queries_n:,}", f"{queries_n / seconds:,.0f}", f"{seconds:.1f}"))
            sample = np.arange(0, queries_n, max(1, queries_n // 200))
            device = search._device
            search._device = lambda: torch.device("cpu")
            cpu_scores, cpu_found = exact_topk(queries[sample], vectors, k, allowed)
            search._device = device
            same = float((found[sample] == cpu_found).float().mean())
            diff = float((scores[sample] - cpu_scores).abs().max())
            print(f"{n:,} passages: rows equal to the CPU's on {len(sample)} queries: {same:.4f}; largest score "
                  f"difference {diff:.1e}; held-out rows returned: {int((~allowed[found.numpy()]).sum())}")
    print("\nexact search (search.exact_topk), top-50, 384-d float16 shards, every 10th passage held out\n")
    print(table(["passages", "block rows", "queries", "queries/s", "seconds"], rows))


if __name__ == "__main__":
    main()
