"""candidates.py: mining after a corpus change answers a query it has seen from its kept candidates plus a search
of the new passages only, and that equals a full search; a query whose kept candidates lost a passage (removed,
changed, held out) is searched in full, and nothing gone comes back."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embedtune.candidates import CandidateSearch, CandidateWriter, Kept, candidates_fingerprint
from embedtune.store import save_npy
from embedtune.search import IndexConfig, Searcher

DEPTH = 6


def corpus(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    vectors = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
    digests = np.random.default_rng(seed).integers(1, 2**63, size=n, dtype=np.int64).astype(np.uint64)
    return vectors, digests


def mined(vectors, contents, allowed, kept, queries, query_vectors):
    search = CandidateSearch(Searcher(vectors, IndexConfig(index="exact"), allowed), vectors, contents, allowed, kept)
    return search, search.search(queries, query_vectors, DEPTH)


def keep(tmp_path, search, queries, found) -> Kept:
    writer = CandidateWriter(tmp_path / "kept", "", len(queries), DEPTH, search.contents)
    writer.put(0, *found)
    writer.close()
    save_npy(queries, tmp_path / "kept" / "queries.npy")
    save_npy(search.searched, tmp_path / "kept" / "searched.npy")
    manifest = {"candidates": {"fingerprint": "f", "folder": "kept"}}
    assert Kept.load(tmp_path, manifest, "other") is None  # another model or search: nothing reused
    return Kept.load(tmp_path, manifest, "f")


def test_an_update_equals_a_full_search_and_searches_only_what_changed(tmp_path):
    vectors, contents = corpus(300, seed=0)
    query_vectors = F.normalize(torch.randn(80, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    queries = np.arange(1, 81, dtype=np.uint64) * 7919
    first, found = mined(vectors, contents, None, None, queries, query_vectors)
    assert first.counts["queries_searched_in_full"] == 80
    kept = keep(tmp_path, first, queries, found)

    # the corpus changes: 4 passages removed, 3 changed (new text, new vector), 40 added; 10 now held out
    removed, changed = [5, 17, 42, 99], [7, 123, 250]
    added_vectors, added = corpus(40, seed=2)
    vectors2, contents2 = vectors.clone(), contents.copy()
    vectors2[changed] = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(3)), dim=-1)
    contents2[changed] = np.array([11, 12, 13], dtype=np.uint64)
    stay = np.setdiff1d(np.arange(300), removed)
    vectors2, contents2 = torch.cat([vectors2[stay], added_vectors]), np.concatenate([contents2[stay], added])
    allowed = np.ones(len(contents2), dtype=bool)
    allowed[[20, 21, 22, 200, 201, 202, 203, 204, 205, 206]] = False
    new_queries = np.concatenate([queries, np.arange(1, 11, dtype=np.uint64) * 104729])
    new_query_vectors = torch.cat([query_vectors, F.normalize(torch.randn(10, 16), dim=-1)])

    search, (scores, rows) = mined(vectors2, contents2, allowed, kept, new_queries, new_query_vectors)
    _, (full_scores, full_rows) = mined(vectors2, contents2, allowed, None, new_queries, new_query_vectors)
    assert torch.equal(rows, full_rows)
    assert torch.allclose(scores, full_scores, atol=1e-6)
    counts = search.counts
    assert counts["passages_new_to_search"] == 43  # 40 added + 3 changed
    assert counts["queries_updated"] + counts["queries_searched_in_full"] == 90
    assert counts["queries_updated"] >= 40 and counts["queries_searched_in_full"] >= 10  # new queries in full
    gone = set(contents[removed].tolist()) | set(contents[changed].tolist()) | set(contents2[~allowed].tolist())
    assert not gone & set(contents2[rows[rows >= 0].numpy()].tolist())
    # a query whose kept list named a gone passage was searched in full; the others were updated
    lost = sum(bool(set(contents[r].tolist()) & gone) for r in found[1].numpy())
    assert counts["queries_searched_in_full"] == 10 + lost


def test_an_unchanged_corpus_reuses_every_list_and_searches_nothing(tmp_path):
    vectors, contents = corpus(120, seed=4)
    query_vectors = F.normalize(torch.randn(30, 16, generator=torch.Generator().manual_seed(5)), dim=-1)
    queries = np.arange(1, 31, dtype=np.uint64)
    first, found = mined(vectors, contents, None, None, queries, query_vectors)
    kept = keep(tmp_path, first, queries, found)
    search, again = mined(vectors, contents, None, kept, queries, query_vectors)
    assert torch.equal(again[1], found[1])
    assert search.counts == {"queries_searched_in_full": 0, "queries_updated": 30, "passages_new_to_search": 0}


def test_the_fingerprint_ignores_what_is_applied_after_the_search():
    from embedtune.mine import MiningConfig

    a = candidates_fingerprint("base:x", "fp32", MiningConfig(), 51)
    assert a == candidates_fingerprint("base:x", "fp32", MiningConfig(margin=0.5, num_negatives=7), 51)
    assert a != candidates_fingerprint("base:y", "fp32", MiningConfig(), 51)
    assert a != candidates_fingerprint("base:x", "bf16", MiningConfig(), 51)
    assert a != candidates_fingerprint("base:x", "fp32", MiningConfig(index="hnsw"), 51)
