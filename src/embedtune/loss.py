"""Contrastive losses on embeddings: pure math on tensors (no model, no data loading, no collectives).

The global batch of a step is spread over ranks. Each rank holds its own queries and candidates (its
queries' positives first, then their hard negatives). The caller (gradcache.py, through
distributed.gather_with_grad) hands the loss a `ScoredBatch`: this rank's queries against the candidates of
every rank when `cross_device`, so every query is scored against the whole global batch; the gradient a rank
computes for another rank's candidate is summed back to its owner by that gather.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    temperature: float = 0.05              # softmax temperature on cosine scores (lower = sharper)
    symmetric: bool = False                # also score each positive passage against all queries
    cross_device: bool = True              # negatives from every rank's candidates (all-gathered)
    matryoshka_dims: Optional[list[int]] = None  # e.g. [384, 256, 128, 64]: mean loss over truncated dims


@dataclass
class ScoredBatch:
    """What one rank's loss scores: its queries against candidates (every rank's, in rank order, when
    cross-device), the index of each query's positive among them, and for the symmetric term every rank's
    queries with the index of this rank's first one."""
    queries: torch.Tensor                 # [B_r, d] this rank's queries
    query_pids: torch.Tensor              # [B_r] integer passage ids (passage_hash)
    candidates: torch.Tensor              # [C, d]
    candidate_pids: torch.Tensor          # [C]
    positive: torch.Tensor                # [B_r] index of each query's positive in candidates
    total_queries: int                    # queries in the whole global batch (the loss is their mean)
    all_queries: Optional[torch.Tensor] = None      # [B, d] every rank's queries (symmetric term)
    all_query_pids: Optional[torch.Tensor] = None
    query_offset: int = 0                 # index of queries[0] in all_queries

    @classmethod
    def local(cls, queries: torch.Tensor, candidates: torch.Tensor, query_pids: torch.Tensor,
              candidate_pids: torch.Tensor) -> "ScoredBatch":
        """One process: candidates[i] is queries[i]'s positive for i < len(queries)."""
        return cls(queries, query_pids, candidates, candidate_pids,
                   torch.arange(len(queries), device=queries.device), len(queries))


def _masked_scores(rows: torch.Tensor, columns: torch.Tensor, target: torch.Tensor, row_pids: torch.Tensor,
                   column_pids: torch.Tensor, temperature: float) -> torch.Tensor:
    """rows @ columns.T / t, with every column that shares the row's passage id masked unless it is the target."""
    scores = rows @ columns.T / temperature
    same = row_pids[:, None] == column_pids[None, :]
    same[torch.arange(len(target), device=same.device), target] = False
    return scores.masked_fill(same, float("-inf"))


def _info_nce_sum(queries: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor, query_pids: torch.Tensor,
                  candidate_pids: torch.Tensor, temperature: float, symmetric: bool,
                  all_queries: Optional[torch.Tensor] = None, all_query_pids: Optional[torch.Tensor] = None,
                  query_offset: int = 0) -> torch.Tensor:
    """Sum over the queries of InfoNCE (mean of both directions when symmetric)."""
    loss = F.cross_entropy(_masked_scores(queries, candidates, positive, query_pids, candidate_pids, temperature),
                           positive, reduction="sum")
    if not symmetric:
        return loss
    if all_queries is None:
        all_queries, all_query_pids = queries, query_pids
    # passage -> query: each query's positive against every query (duplicates of its passage masked)
    own = torch.arange(len(positive), device=queries.device) + query_offset
    back = _masked_scores(candidates[positive], all_queries, own, query_pids, all_query_pids, temperature)
    return (loss + F.cross_entropy(back, own, reduction="sum")) / 2


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
             query_pids: torch.Tensor, candidate_pids: torch.Tensor, temperature: float,
             symmetric: bool = False) -> torch.Tensor:
    """Mean InfoNCE over queries on one process.

    queries [B, d]; candidates [N, d]; positive [B]: index of each query's positive among the candidates;
    *_pids: integer passage ids. A candidate that is the query's own passage but not at its positive index
    (a duplicate passage in the batch, or another query's hard negative that happens to be this query's
    positive) is masked out: it is not a negative.
    """
    return _info_nce_sum(queries, candidates, positive, query_pids, candidate_pids, temperature,
                         symmetric) / len(positive)


def _truncate(embeddings: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
    head = embeddings[:, :dim]
    return F.normalize(head, dim=-1) if normalize else head


def local_loss_sum(batch: ScoredBatch, cfg: LossConfig, normalize: bool) -> torch.Tensor:
    """The sum of this rank's per-query losses (divide by batch.total_queries through `backward_scale`).
    Matryoshka: the mean of the loss at each truncated (re-normalised) dimension."""
    q, c, q_all = batch.queries, batch.candidates, batch.all_queries
    dims = list(cfg.matryoshka_dims or [q.shape[-1]])
    if max(dims) > q.shape[-1]:
        raise ValueError(f"loss.matryoshka_dims {dims} exceed the embedding size {q.shape[-1]}")
    loss = q.new_zeros(())
    for dim in dims:
        full = dim == q.shape[-1]
        tq, tc = (q, c) if full else (_truncate(q, dim, normalize), _truncate(c, dim, normalize))
        tq_all = q_all if (full or q_all is None) else _truncate(q_all, dim, normalize)
        loss = loss + _info_nce_sum(tq, tc, batch.positive, batch.query_pids, batch.candidate_pids,
                                    cfg.temperature, cfg.symmetric, tq_all, batch.all_query_pids, batch.query_offset)
    return loss / len(dims)


def backward_scale(world_size: int, global_queries: int, backward_divisor: int) -> float:
    """The factor that turns a rank's summed loss into what it back-propagates; the one place where the
    loss is scaled across ranks and micro-steps.

    The target is the gradient of the global mean loss, L = (1/N) * sum over the N queries of all ranks.
    Each rank back-propagates its own queries' summed loss; the cross-device gather returns to each rank
    the gradient of every rank's loss for its rows, so the ranks' parameter gradients add up to N * dL.
    DDP and DeepSpeed then *average* over the W ranks, and `accelerator.backward` divides by its
    gradient-accumulation count (`backward_divisor`; 1 when the engine is told not to). Hence
    W * divisor / N. The gradient-caching step uses the same factor on its detached embeddings.
    """
    return world_size * backward_divisor / global_queries


def passage_hash(passage_id: str) -> int:
    """A 60-bit integer for a string passage id (same on every rank), to compare ids inside tensors."""
    return int(hashlib.sha1(passage_id.encode("utf-8")).hexdigest()[:15], 16)
