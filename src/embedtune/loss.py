"""Contrastive losses on embeddings (pure functions of tensors: no model, no data loading).

The global batch of a step is spread over ranks. Each rank holds its own queries and candidates
(its queries' positives first, then their hard negatives). With `cross_device`, candidates (and, for the
symmetric term, queries) are all-gathered *with gradient*, so every query is scored against the whole
global batch; the gradient a rank computes for another rank's candidate is summed back to its owner.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F

from embedtune.distributed import group_size


@dataclass
class LossConfig:
    temperature: float = 0.05              # softmax temperature on cosine scores (lower = sharper)
    symmetric: bool = False                # also score each positive passage against all queries
    cross_device: bool = True              # negatives from every rank's candidates (all-gathered)
    matryoshka_dims: Optional[list[int]] = None  # e.g. [384, 256, 128, 64]: mean loss over truncated dims


def _distributed() -> bool:
    return group_size() > 1


def gather_sizes(n: int, device) -> list[int]:
    """Every rank's row count (ranks may hold different numbers of rows)."""
    if not _distributed():
        return [n]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def all_gather_rows(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x.contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows; backward sums every rank's gradient for a row and hands it to the row's owner."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return all_gather_rows(x, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather(x: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Rows of every rank, in rank order (x itself when not distributed). Differentiable for float x."""
    if not _distributed():
        return x
    if x.is_floating_point():
        return _GatherWithGrad.apply(x, sizes)
    return all_gather_rows(x, sizes)


def _masked_scores(a: torch.Tensor, b: torch.Tensor, target: torch.Tensor, a_pids: torch.Tensor,
                   b_pids: torch.Tensor, temperature: float) -> torch.Tensor:
    """a @ b.T / t, with every column that shares the row's passage id masked unless it is the target."""
    scores = a @ b.T / temperature
    same = a_pids[:, None] == b_pids[None, :]
    same[torch.arange(len(target), device=same.device), target] = False
    return scores.masked_fill(same, float("-inf"))


def _info_nce_sum(q, c, positive, q_pids, c_pids, temperature, symmetric, q_all=None, q_all_pids=None,
                  q_offset: int = 0) -> torch.Tensor:
    """Sum over the rows of q of InfoNCE (mean of both directions when symmetric)."""
    loss = F.cross_entropy(_masked_scores(q, c, positive, q_pids, c_pids, temperature), positive,
                           reduction="sum")
    if not symmetric:
        return loss
    if q_all is None:
        q_all, q_all_pids = q, q_pids
    # passage -> query: each query's positive against every query (duplicates of its passage masked)
    own = torch.arange(len(positive), device=q.device) + q_offset
    back = _masked_scores(c[positive], q_all, own, q_pids, q_all_pids, temperature)
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


def _truncate(x: torch.Tensor, dim: int, normalize: bool) -> torch.Tensor:
    x = x[:, :dim]
    return F.normalize(x, dim=-1) if normalize else x


def local_loss_sum(q: torch.Tensor, c: torch.Tensor, q_pids: torch.Tensor, c_pids: torch.Tensor,
                   cfg: LossConfig, normalize: bool) -> tuple[torch.Tensor, int]:
    """(sum of this rank's per-query losses, number of queries in the global batch).

    q [B_r, d] are this rank's queries, c [C_r, d] its candidates: c[i] is q[i]'s positive for i < B_r.
    With cross_device, negatives come from every rank. Matryoshka: the mean of the loss at each
    truncated (re-normalised) dimension. Divide the sum by the global count through `backward_scale`.
    """
    positive = torch.arange(len(q), device=q.device)
    q_all, q_all_pids, q_offset = None, None, 0
    if cfg.cross_device and _distributed():
        c_sizes = gather_sizes(len(c), q.device)
        rank = dist.get_rank()
        positive = positive + sum(c_sizes[:rank])
        c, c_pids = gather(c, c_sizes), gather(c_pids, c_sizes)
        q_sizes = gather_sizes(len(q), q.device)
        if cfg.symmetric:
            q_offset = sum(q_sizes[:rank])
            q_all, q_all_pids = gather(q, q_sizes), gather(q_pids, q_sizes)
        total = sum(q_sizes)
    else:
        total = sum(gather_sizes(len(q), q.device))
    dims = list(cfg.matryoshka_dims or [q.shape[-1]])
    if max(dims) > q.shape[-1]:
        raise ValueError(f"loss.matryoshka_dims {dims} exceed the embedding size {q.shape[-1]}")
    loss = q.new_zeros(())
    for dim in dims:
        full = dim == q.shape[-1]
        tq, tc = (q, c) if full else (_truncate(q, dim, normalize), _truncate(c, dim, normalize))
        tq_all = q_all if (full or q_all is None) else _truncate(q_all, dim, normalize)
        loss = loss + _info_nce_sum(tq, tc, positive, q_pids, c_pids, cfg.temperature, cfg.symmetric,
                                    tq_all, q_all_pids, q_offset)
    return loss / len(dims), total


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
