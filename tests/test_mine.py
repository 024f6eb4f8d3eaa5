"""mine.py: the positive-aware negative filter, and mining end to end on hand-made embeddings (exact and ANN)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from embedtune.config import Config
from embedtune.errors import EmbedtuneError
from embedtune.mine import MiningConfig, mine_hard_negatives, select_negatives
from embedtune.validate import problems

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


def test_an_unknown_index_kind_is_named():
    assert any("mining.index=annoy is not one of" in p for p in problems(Config(mining=MiningConfig(index="annoy"))))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_search_mines_what_exact_search_mines_on_clustered_vectors(kind):
    """500 passages in 25 topics; each query near its positive. IVF probing every cell and re-scoring every
    candidate, and HNSW with a wide candidate list, find the exact top-k, so the mined rows equal exact
    mining's, held-out documents included."""
    g = torch.Generator().manual_seed(3)
    topics = F.normalize(torch.randn(25, 16, generator=g), dim=-1)
    passage_emb = F.normalize(topics.repeat_interleave(20, 0) + 0.4 * torch.randn(500, 16, generator=g), dim=-1)
    passages = [{"id": f"p{i}", "doc_id": f"d{i // 2}", "source": "s"} for i in range(500)]
    positives = torch.randperm(500, generator=g)[:40].tolist()
    query_emb = F.normalize(passage_emb[positives] + 0.2 * torch.randn(40, 16, generator=g), dim=-1)
    pairs = [{"query_id": f"q{n}", "passage_id": f"p{i}"} for n, i in enumerate(positives)]
    held = frozenset(("s", f"d{i}") for i in range(0, 250, 7))
    base = dict(top_k=10, num_negatives=3, margin=0.95)
    exact = mine_hard_negatives(pairs, passages, query_emb, passage_emb, MiningConfig(index="exact", **base), held)
    ann = mine_hard_negatives(pairs, passages, query_emb, passage_emb,
                              MiningConfig(index=kind, ivf_probe=100, ivf_refine=50, hnsw_ef_search=400, **base), held)
    assert sum(len(r["negative_ids"]) for r in exact) >= 100
    assert [r["negative_ids"] for r in ann] == [r["negative_ids"] for r in exact]
    assert all(r["negative_scores"] == pytest.approx(e["negative_scores"], abs=2e-3) for r, e in zip(ann, exact))
