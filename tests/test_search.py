"""search.py: exact top-k block by block, rows excluded, ranks of own rows, and the faiss IVF/HNSW indexes
(cached once per corpus, recall measured against exact search)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import embedtune.search as search
from embedtune.search import IndexConfig, Searcher, exact_topk, index_kind, recall_against_exact, standing_of_rows


def clustered(n: int, queries: int, dim: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    topics = F.normalize(torch.randn(-(-n // 20), dim, generator=g), dim=-1)
    passages = F.normalize(topics.repeat_interleave(20, 0)[:n] + 0.4 * torch.randn(n, dim, generator=g), dim=-1)
    picks = torch.randint(0, n, (queries,), generator=g)
    return passages, F.normalize(passages[picks] + 0.2 * torch.randn(queries, dim, generator=g), dim=-1)


@pytest.fixture
def small_blocks(monkeypatch):
    monkeypatch.setattr(search, "SEARCH_BLOCK", 37)
    monkeypatch.setattr(search, "QUERY_BLOCK", 5)


def test_exact_topk_equals_brute_force_across_blocks_with_rows_excluded(small_blocks):
    passages, queries = clustered(200, 12)
    scores, rows = exact_topk(queries, passages, 9)
    expected_scores, expected_rows = (queries @ passages.T).topk(9, dim=1)
    assert torch.equal(rows, expected_rows) and torch.allclose(scores, expected_scores, atol=1e-6)
    allowed = np.ones(200, dtype=bool)
    allowed[::3] = False
    scores, rows = exact_topk(queries, passages.numpy(), 9, allowed)  # a numpy matrix works the same
    masked = (queries @ passages.T).masked_fill(torch.from_numpy(~allowed), -1e9)
    assert torch.equal(rows, masked.topk(9, dim=1).indices)
    assert allowed[rows.numpy()].all()


def test_exact_topk_clamps_k_to_the_allowed_rows_and_takes_no_queries():
    allowed = np.array([True, False, True])
    scores, rows = exact_topk(torch.eye(3)[:2], torch.eye(3), 10, allowed)
    assert rows.shape == (2, 2) and set(rows[0].tolist()) == {0, 2}
    scores, rows = exact_topk(torch.empty(0, 3), torch.eye(3), 2)
    assert scores.shape == (0, 2) and rows.dtype == torch.long


def test_standing_ranks_count_rows_scoring_above_the_own_one(small_blocks):
    passages, queries = clustered(150, 20)
    own = torch.randint(0, 150, (20,), generator=torch.Generator().manual_seed(1))
    scores = queries @ passages.T
    expected = ((scores > scores.gather(1, own[:, None])).sum(1) + 1).tolist()
    assert standing_of_rows(queries, passages, own)[0] == expected
    assert max(expected) > 1 and min(expected) == 1  # not vacuous
    by_hand = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.9, 0.1, 0.0, 0.0], [0.0, 0.2, 0.5, 0.9]])
    assert standing_of_rows(by_hand, torch.eye(4), torch.tensor([0, 1, 2]))[0] == [1, 2, 2]


def test_standing_gives_the_gap_to_the_best_other_row_and_can_leave_out_near_duplicates(small_blocks):
    passages, queries = clustered(150, 20)
    scores = queries @ passages.T
    own = torch.randint(0, 150, (20,), generator=torch.Generator().manual_seed(2))
    own[:10] = scores[:10].argmax(1)  # half the queries with their best row as the own one
    own_scores = scores.gather(1, own[:, None]).squeeze(1)
    ranks, gaps = standing_of_rows(queries, passages, own)
    others = scores.clone()
    others[torch.arange(20), own] = -1e9
    assert ranks == ((scores > own_scores[:, None] + 1e-6).sum(1) + 1).tolist()
    assert torch.allclose(torch.tensor(gaps), others.max(1).values - own_scores, atol=1e-5)
    assert min(gaps) < 0 < max(gaps)  # some own rows first, some beaten
    twins = (passages[own] @ passages.T) >= 0.5  # each own row's near-duplicates (itself included)
    expected = ((scores > own_scores[:, None] + 1e-6) & ~twins).sum(1) + 1
    apart = scores.masked_fill(twins, -1e9).max(1).values - own_scores
    ranks_apart, gaps_apart = standing_of_rows(queries, passages, own, twin_cosine=0.5)
    assert ranks_apart == expected.tolist() and torch.allclose(torch.tensor(gaps_apart), apart, atol=1e-5)
    assert sum(ranks_apart) < sum(ranks)  # not vacuous: some twins outscored their own row
    # by hand: row 1 is a near-copy of row 0 (cosine 0.995) and scores higher; as a twin it no longer counts
    rows = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.995, 0.0998, 0.0], [0.0, 0.0, 1.0]]), dim=-1)
    query = torch.tensor([[0.6, 0.8, 0.0]])
    rank, gap = standing_of_rows(query, rows, torch.tensor([0]))
    assert rank == [2] and gap[0] == pytest.approx(float(query @ rows[1]) - 0.6, abs=1e-5)
    assert standing_of_rows(query, rows, torch.tensor([0]), twin_cosine=0.99) == ([1], [pytest.approx(-0.6, abs=1e-5)])


def test_auto_picks_exact_below_the_threshold_and_ivf_from_it():
    cfg = IndexConfig(ann_min_passages=1000)
    assert index_kind(cfg, 999) == "exact" and index_kind(cfg, 1000) == "ivf"
    assert index_kind(IndexConfig(index="hnsw"), 10) == "hnsw"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_ann_search_never_returns_excluded_rows_and_its_recall_is_measured(kind):
    passages, queries = clustered(3000, 200)
    allowed = np.ones(3000, dtype=bool)
    allowed[np.random.default_rng(0).choice(3000, 300, replace=False)] = False
    searcher = Searcher(passages, IndexConfig(index=kind, ivf_probe=32, recall_sample=150), allowed)
    scores, rows = searcher.search(queries, 20)
    assert rows.shape == (200, 20) and allowed[rows.numpy()].all()
    assert torch.all(scores[:, :-1] >= scores[:, 1:] - 1e-6)
    report = searcher.recall(queries, 20)
    exact = exact_topk(queries, passages, 20, allowed)[1]
    assert report["sample"] == 150 and report["k"] == 20
    assert 0.8 <= report["recall"] <= 1.0
    assert recall_against_exact(rows, exact) == pytest.approx(report["recall"], abs=0.05)  # the sample tracks the whole


def test_recall_against_exact_counts_overlap():
    found = torch.tensor([[1, 2, 3], [4, 5, 6]])
    exact = torch.tensor([[3, 2, 9], [4, -1, -1]])
    assert recall_against_exact(found, exact) == pytest.approx(3 / 4)
    assert Searcher(torch.eye(4), IndexConfig(index="exact")).recall(torch.eye(4), 2) is None  # exact: nothing to measure


def test_an_ann_index_is_built_once_and_read_back(tmp_path, monkeypatch):
    passages, queries = clustered(2000, 30)
    cfg = IndexConfig(index="ivf", ivf_probe=4)
    first = Searcher(passages, cfg, index_folder=tmp_path)
    files = list(tmp_path.glob("*.faiss"))
    assert [f.name for f in files] == ["ivf44-pq8x4fs-refine-fp16-seed0.faiss"]  # sqrt(2000) cells, 16-d: 8 codes

    def refuse(*args):
        raise AssertionError("the cached index should have been read")
    monkeypatch.setattr(search, "build_index", refuse)
    second = Searcher(passages, cfg, index_folder=tmp_path)
    assert torch.equal(first.search(queries, 10)[1], second.search(queries, 10)[1])
    other = IndexConfig(index="ivf", ivf_lists=20)  # other settings: another file
    monkeypatch.undo()
    Searcher(passages, other, index_folder=tmp_path)
    assert len(list(tmp_path.glob("*.faiss"))) == 2
