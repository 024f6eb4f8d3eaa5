"""mine.py: exact search, the positive-aware negative filter, and mining end to end on hand-made embeddings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedtune.config import Config
from embedtune.errors import EmbedtuneError
from embedtune.mine import MiningConfig, mine_hard_negatives, search, select_negatives
from embedtune.validate import problems

# ---------------------------------------------------------------- search

def test_search_equals_brute_force_topk_across_chunks():
    g = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    passages = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    scores, indices = search(queries, passages, k=5, chunk=3)  # 3 chunks, the last one short
    expected_scores, expected_indices = (queries @ passages.T).topk(5, dim=1)
    assert indices.shape == (7, 5)
    assert torch.equal(indices, expected_indices)
    assert torch.allclose(scores, expected_scores)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])  # best first


def test_search_clamps_k_to_the_number_of_passages():
    queries = torch.eye(3)[:2]
    passages = torch.eye(3)
    scores, indices = search(queries, passages, k=10)
    assert indices.shape == (2, 3)
    assert indices[:, 0].tolist() == [0, 1]


def test_search_without_queries_returns_empty_results():
    scores, indices = search(torch.empty(0, 4), torch.eye(4), k=2)
    assert scores.shape == (0, 2) and indices.shape == (0, 2)
    assert indices.dtype == torch.long


# ---------------------------------------------------------------- select_negatives

# candidates of one query, best first: positive is passage 2 (score 0.8), passage 1 is from its document
CAND_IDX = [5, 2, 7, 1, 3, 4, 6]
CAND_SCORES = [0.9, 0.8, 0.77, 0.7, 0.6, 0.5, 0.4]
SAME_DOC = {2, 1}


def select(**cfg):
    return select_negatives(2, 0.8, CAND_IDX, CAND_SCORES, SAME_DOC, MiningConfig(**cfg))


def test_select_negatives_drops_positive_same_document_and_above_margin():
    # margin 0.95 x 0.8 = 0.76: passages 5 (0.9) and 7 (0.77) look like unlabelled positives
    assert select(margin=0.95, num_negatives=10) == ([3, 4, 6], [0.6, 0.5, 0.4])


def test_select_negatives_without_margin_keeps_high_scorers():
    assert select(margin=None, num_negatives=3) == ([5, 7, 3], [0.9, 0.77, 0.6])


def test_select_negatives_honours_num_negatives():
    assert select(margin=0.95, num_negatives=2) == ([3, 4], [0.6, 0.5])
    assert select(margin=0.95, num_negatives=0) == ([], [])


def test_select_negatives_skips_top_after_filtering():
    assert select(margin=0.95, num_negatives=2, skip_top=1) == ([4, 6], [0.5, 0.4])
    assert select(margin=0.95, num_negatives=2, skip_top=3) == ([], [])


def test_select_negatives_samples_from_a_rank_range_deterministically_per_query():
    # no margin: filtered candidates by rank are 5, 7, 3, 4, 6; ranks 1..3 are 7, 3, 4
    cfg = MiningConfig(margin=None, num_negatives=2, sample_ranks=[1, 4], seed=0)
    draws = {tuple(select_negatives(2, 0.8, CAND_IDX, CAND_SCORES, SAME_DOC, cfg, key=f"q{k}")[0]) for k in range(20)}
    assert all(len(d) == 2 and set(d) <= {7, 3, 4} for d in draws)
    assert all(list(d) == [i for i in [7, 3, 4] if i in d] for d in draws)  # kept best first
    assert len(draws) == 3  # every pair of the three occurs across queries
    again = select_negatives(2, 0.8, CAND_IDX, CAND_SCORES, SAME_DOC, cfg, key="q3")
    assert again == select_negatives(2, 0.8, CAND_IDX, CAND_SCORES, SAME_DOC, cfg, key="q3")
    assert select(margin=None, num_negatives=5, sample_ranks=[3, 10])[0] == [4, 6]  # fewer than asked: all
    # an impossible range is named before anything runs (validate.py), not here
    assert any("mining.sample_ranks=[4, 2] must be [a, b]" in p for p in problems(Config(mining=MiningConfig(
        sample_ranks=[4, 2]))))


# ---------------------------------------------------------------- mine_hard_negatives

PASSAGES = [
    {"id": "a#0", "doc_id": "A", "source": "s1"},
    {"id": "b#0", "doc_id": "B", "source": "s1"},
    {"id": "a#1", "doc_id": "A", "source": "s1"},
    {"id": "c#0", "doc_id": "C", "source": "s1"},
    {"id": "d#0", "doc_id": "D", "source": "s1"},
    {"id": "a#0-other", "doc_id": "A", "source": "s2"},  # same doc_id, another source: another document
]
PAIRS = [{"query_id": "q0", "passage_id": "a#0"}, {"query_id": "q1", "passage_id": "c#0"}]
# passage i is the basis vector e_i, so query . passage_i is the query's i-th (normalised) coefficient
COEFFS = torch.tensor([[1.0, 0.99, 0.9, 0.6, 0.4, 0.5],     # q0: positive a#0 (1.0)
                       [0.3, 0.1, 0.2, 0.5, 0.45, 1.0]])   # q1: positive c#0 (0.5)
NORMS = COEFFS.norm(dim=-1).tolist()


def mine(**cfg):
    cfg = {"top_k": 5, "num_negatives": 2, "margin": 0.95, **cfg}
    return mine_hard_negatives(PAIRS, PASSAGES, F.normalize(COEFFS, dim=-1), torch.eye(6), MiningConfig(**cfg))


def test_mine_hard_negatives_end_to_end():
    rows = mine()
    assert [(r["query_id"], r["passage_id"]) for r in rows] == [("q0", "a#0"), ("q1", "c#0")]
    # q0: b#0 (0.99 > 0.95) is dropped by the margin, a#1 by its document; then c#0 (0.6), a#0-other (0.5)
    assert rows[0]["negative_ids"] == ["c#0", "a#0-other"]
    assert rows[0]["negative_scores"] == pytest.approx([0.6 / NORMS[0], 0.5 / NORMS[0]], abs=1e-6)
    assert rows[0]["positive_score"] == pytest.approx(1.0 / NORMS[0], abs=1e-6)
    # q1: a#0-other (1.0 > 0.95 x 0.5) is dropped; then d#0 (0.45), a#0 (0.3)
    assert rows[1]["negative_ids"] == ["d#0", "a#0"]
    assert rows[1]["negative_scores"] == pytest.approx([0.45 / NORMS[1], 0.3 / NORMS[1]], abs=1e-6)
    assert rows[1]["positive_score"] == pytest.approx(0.5 / NORMS[1], abs=1e-6)


def test_mine_hard_negatives_honours_skip_top_and_margin_off():
    assert [r["negative_ids"] for r in mine(skip_top=1)] == [["a#0-other", "d#0"], ["a#0", "a#1"]]
    assert [r["negative_ids"] for r in mine(margin=None)] == [["b#0", "c#0"], ["a#0-other", "d#0"]]


def test_held_out_documents_never_become_negatives():
    # q0 would take c#0 then a#0-other; with document (s1, C) held out (a dev/test passage) it takes
    # a#0-other then d#0, and q1's own positive document is untouched
    held = frozenset({("s1", "C")})
    rows = mine_hard_negatives(PAIRS[:1], PASSAGES, F.normalize(COEFFS[:1], dim=-1), torch.eye(6),
                               MiningConfig(top_k=5, num_negatives=2, margin=0.95), held)
    assert rows[0]["negative_ids"] == ["a#0-other", "d#0"]
    assert rows[0]["negative_scores"] == pytest.approx([0.5 / NORMS[0], 0.4 / NORMS[0]], abs=1e-6)


def test_mine_hard_negatives_draws_only_from_the_top_k():
    # top_k=2 retrieves 3 candidates: q0 gets a#0, b#0, a#1 (all filtered out); q1 gets a#0-other, c#0, d#0
    assert [r["negative_ids"] for r in mine(top_k=2)] == [[], ["d#0"]]


def test_mine_hard_negatives_on_random_embeddings_keeps_the_invariants():
    g = torch.Generator().manual_seed(1)
    passages = [{"id": f"p{i}", "doc_id": f"d{i // 3}", "source": "s"} for i in range(40)]
    passage_emb = F.normalize(torch.randn(40, 8, generator=g), dim=-1)
    positives = torch.randperm(40, generator=g)[:12].tolist()
    query_emb = F.normalize(passage_emb[positives] + 0.5 * torch.randn(12, 8, generator=g), dim=-1)
    pairs = [{"query_id": f"q{n}", "passage_id": f"p{i}"} for n, i in enumerate(positives)]
    cfg = MiningConfig(top_k=10, num_negatives=3, margin=0.9)
    rows = mine_hard_negatives(pairs, passages, query_emb, passage_emb, cfg)
    scores = query_emb @ passage_emb.T
    assert len(rows) == 12
    assert sum(len(r["negative_ids"]) for r in rows) >= 24  # the checks below are not vacuous
    for n, (row, pos) in enumerate(zip(rows, positives)):
        assert row["positive_score"] == pytest.approx(float(scores[n, pos]), abs=1e-6)
        assert len(row["negative_ids"]) <= 3
        assert row["negative_scores"] == sorted(row["negative_scores"], reverse=True)
        for pid, s in zip(row["negative_ids"], row["negative_scores"]):
            i = int(pid[1:])
            assert i // 3 != pos // 3  # neither the positive nor its document
            assert s == pytest.approx(float(scores[n, i]), abs=1e-6)
            assert s <= 0.9 * row["positive_score"] + 1e-6
            assert int((scores[n] > s + 1e-6).sum()) <= 10  # within the top_k + 1 retrieved


def test_mine_hard_negatives_names_unknown_passage_ids():
    pairs = PAIRS + [{"query_id": "q2", "passage_id": "gone#7"}]
    with pytest.raises(EmbedtuneError, match="gone#7"):
        mine_hard_negatives(pairs, PASSAGES, F.normalize(torch.rand(3, 6), dim=-1), torch.eye(6), MiningConfig())


def test_faiss_and_torch_exact_search_agree():
    pytest.importorskip("faiss")  # installed with the test extras; optional for users
    from embedtune.mine import exact_search

    g = torch.Generator().manual_seed(0)
    passages = F.normalize(torch.randn(500, 16, generator=g), dim=-1)
    queries = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    s_torch, i_torch = exact_search(queries, passages, 10, "torch")
    s_faiss, i_faiss = exact_search(queries, passages, 10, "faiss")
    assert torch.equal(i_torch, i_faiss)
    assert torch.allclose(s_torch, s_faiss, atol=1e-5)
    assert any("mining.index=annoy is not one of" in p for p in problems(Config(mining=MiningConfig(index="annoy"))))
