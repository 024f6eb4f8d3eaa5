"""Contrastive and distillation losses on embeddings: pure math on tensors (no model, no data loading, no
collectives).

The global batch of a step is spread over ranks. Each rank holds its own queries and candidates (its
queries' positives first, then their hard negatives). The caller (gradcache.py, through
distributed.gather_with_grad) hands the loss a `ScoredBatch`: this rank's queries against the candidates of
every rank when `cross_device`, so every query is scored against the whole global batch; the gradient a rank
computes for another rank's candidate is summed back to its owner by that gather.

Distillation (when a teacher scored the pairs, `embedtune score`): each query's own list (its positive and
its hard negatives) carries teacher scores. MarginMSE (Hofstaetter et al. 2020, as in GPL) matches the
student's margins s(q, p) - s(q, n) (cosine) to the teacher's, times `teacher_scale`; listwise KL matches
softmax(student cosine / temperature) over the list to softmax(teacher / kl_temperature). Both are per-query
terms added to InfoNCE by weight, so the same scaling rule, gradient caching and cross-device gather apply.
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
    infonce_weight: float = 1.0            # weight of InfoNCE in the per-query loss (0: distillation only)
    margin_mse_weight: float = 0.0         # MarginMSE on the teacher's scores (needs `embedtune score`)
    kl_weight: float = 0.0                 # listwise KL to the teacher's softmax (needs `embedtune score`)
    kl_temperature: Optional[float] = None  # the teacher's softmax temperature in its own score units (null:
                                           # loss.temperature, right for cosine or P(yes) teachers; logits: ~1)
    teacher_scale: float = 1.0             # MarginMSE: teacher margins times this meet cosine margins (a
                                           # bi-encoder or P(yes) teacher: 1; cross-encoder logits: ~0.1)

    @property
    def distills(self) -> bool:
        return self.margin_mse_weight > 0 or self.kl_weight > 0


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
    teacher: Optional[torch.Tensor] = None          # [B_r, L] teacher scores of each query's list (nan: none)
    teacher_columns: Optional[torch.Tensor] = None  # [B_r, L] their indices in candidates (-1: none);
                                                    # column 0 is the positive

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


def _distill_sum(queries: torch.Tensor, candidates: torch.Tensor, columns: torch.Tensor, teacher: torch.Tensor,
                 cfg: LossConfig) -> torch.Tensor:
    """Sum over the queries of margin_mse_weight x MarginMSE + kl_weight x KL(teacher || student), each on the
    query's own list (positive first, then its hard negatives; entries with column -1 are absent)."""
    present = (columns >= 0) & torch.isfinite(teacher)
    student = (queries[:, None, :] * candidates[columns.clamp(min=0)]).sum(-1)  # [B, L] cosine (normalised)
    teacher = torch.where(present, teacher, torch.zeros_like(teacher))
    total = queries.new_zeros(())
    negatives = present[:, 1:] & present[:, :1]
    if cfg.margin_mse_weight > 0 and columns.shape[1] > 1:
        gap = (student[:, :1] - student[:, 1:]) - cfg.teacher_scale * (teacher[:, :1] - teacher[:, 1:])
        per_query = (gap.pow(2) * negatives).sum(1) / negatives.sum(1).clamp(min=1)  # mean over its negatives
        total = total + cfg.margin_mse_weight * per_query.sum()
    if cfg.kl_weight > 0:
        listed = present & negatives.any(1, keepdim=True)  # a list of one says nothing
        neg_inf, zero = torch.full_like(student, float("-inf")), torch.zeros_like(student)
        log_student = torch.where(listed, student / cfg.temperature, neg_inf).log_softmax(1)
        teacher_temperature = cfg.kl_temperature or cfg.temperature
        log_teacher = torch.where(listed, teacher / teacher_temperature, neg_inf).log_softmax(1)
        # absent entries become 0 before any product: 0 x (-inf) would be nan, in the gradient too
        log_student, log_teacher = torch.where(listed, log_student, zero), torch.where(listed, log_teacher, zero)
        probability = torch.where(listed, log_teacher.exp(), zero)
        total = total + cfg.kl_weight * (probability * (log_teacher - log_student)).sum()
    return total


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
        if cfg.infonce_weight:
            loss = loss + cfg.infonce_weight * _info_nce_sum(
                tq, tc, batch.positive, batch.query_pids, batch.candidate_pids, cfg.temperature, cfg.symmetric,
                tq_all, batch.all_query_pids, batch.query_offset)
        if cfg.distills:
            if batch.teacher is None:
                raise ValueError("loss.margin_mse_weight / loss.kl_weight need teacher scores in the batch")
            loss = loss + _distill_sum(tq, tc, batch.teacher_columns, batch.teacher.to(tq.dtype), cfg)
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
