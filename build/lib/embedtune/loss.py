"""Contrastive losses on embeddings (pure functions: no model, no data loading)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    temperature: float = 0.05   # softmax temperature on cosine scores (lower = sharper)
    symmetric: bool = False     # also score each positive passage against all queries


def info_nce(queries: torch.Tensor, candidates: torch.Tensor, positive: torch.Tensor,
             query_pids: torch.Tensor, candidate_pids: torch.Tensor, temperature: float,
             symmetric: bool = False) -> torch.Tensor:
    """Mean InfoNCE over queries.

    queries [B, d]; candidates [N, d] (in-batch positives, hard negatives, other ranks' candidates);
    positive [B]: index of each query's positive among the candidates; *_pids: integer passage ids.
    A candidate that is the query's own passage but not at its positive index (a duplicate passage in the
    batch, or another query's hard negative that happens to be this query's positive) is masked out:
    it is not a negative.
    """
    scores = queries @ candidates.T / temperature
    same = query_pids[:, None] == candidate_pids[None, :]
    not_target = torch.ones_like(same)
    not_target[torch.arange(len(positive)), positive] = False
    scores = scores.masked_fill(same & not_target, float("-inf"))
    loss = F.cross_entropy(scores, positive)
    if symmetric:
        # passage -> query: each query's positive against all queries of the batch (duplicates masked)
        back = candidates[positive] @ queries.T / temperature
        dup = query_pids[:, None] == query_pids[None, :]
        eye = torch.eye(len(positive), dtype=torch.bool, device=dup.device)
        back = back.masked_fill(dup & ~eye, float("-inf"))
        loss = (loss + F.cross_entropy(back, torch.arange(len(positive), device=back.device))) / 2
    return loss


def passage_hash(passage_id: str) -> int:
    """A 60-bit integer for a string passage id (same on every rank), to compare ids inside tensors."""
    return int(hashlib.sha1(passage_id.encode("utf-8")).hexdigest()[:15], 16)
