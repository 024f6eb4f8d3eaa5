"""One optimizer step of contrastive training, with or without gradient caching (Gao et al. 2021).

Texts are embedded in chunks of at most `chunk_size`, formed by token length (the loss does not care about
order inside the global batch, so similar lengths share a chunk and padding nearly vanishes).

Without caching every chunk keeps its graph and the loss is back-propagated once. With caching:
  1. embed every chunk without a graph, saving the RNG state before each (dropout is replayed exactly);
  2. compute the loss on the detached embeddings (gathered across ranks) and its gradient w.r.t. them;
  3. re-embed each chunk with a graph under its saved RNG state and back-propagate
     dot(embedding, cached gradient) through `accelerator.backward` (never a hook inside another backward).
Memory is one chunk's activations whatever the batch size.

Micro-steps: every optimizer step is exactly two `accelerator.accumulate` entries (the Accelerator is made
with gradient_accumulation_steps=2): the first holds every chunk's backward but the last (no gradient sync;
DeepSpeed is told these are not accumulation boundaries), the second holds the last chunk's backward, which
syncs and, under DeepSpeed, steps the engine once. Every rank runs the same number of forwards and backwards
(chunk counts are agreed across ranks), which DDP buffer broadcasts and ZeRO-3 parameter gathers require.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from embedtune.distributed import (
    all_reduce_max,
    all_reduce_sum,
    gather_sizes,
    gather_with_grad,
    group_rank,
    group_size,
)
from embedtune.loss import LossConfig, ScoredBatch, backward_scale, local_loss_sum


class RngState:
    """The CPU (and current CUDA device's) RNG state at construction; `restore` rewinds to it."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        self.device = device

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


def agreed_chunk_count(n_texts: int, chunk_size: int, device) -> int:
    """Chunks per rank for `n_texts` texts: the same on every rank (the largest any rank needs)."""
    return all_reduce_max(max(1, math.ceil(n_texts / chunk_size)), device)


def length_chunks(lengths: list[int], n_chunks: int) -> list[list[int]]:
    """Indices sorted by length, cut into n_chunks nearly equal runs (empty runs when n < n_chunks)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    bounds = [round(k * len(order) / n_chunks) for k in range(n_chunks + 1)]
    return [order[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclass
class Chunk:
    kind: str            # query | passage
    index: list[int]     # rows of this rank's queries or candidates; empty: a stand-in forward
    inputs: dict         # padded model inputs


def plan(encoder, batch: dict, chunk_size: int, device) -> tuple[list[Chunk], int]:
    """Length-sorted chunks of this rank's queries and candidates, and their real (non-pad) token count."""
    unwrapped = getattr(encoder, "module", encoder)
    chunks, tokens = [], 0
    for kind, texts in (("query", batch["queries"]), ("passage", batch["candidates"])):
        ids = unwrapped.token_ids(texts, kind)
        tokens += sum(len(i) for i in ids)
        for index in length_chunks([len(i) for i in ids], agreed_chunk_count(len(ids), chunk_size, device)):
            # a rank with fewer texts than the agreed count still runs a forward (on text 0, gradient 0)
            inputs = unwrapped.pad([ids[i] for i in index] if index else ids[:1], kind,
                                   multiple=8 if device.type == "cuda" else None)
            chunks.append(Chunk(kind, index, {k: v.to(device) for k, v in inputs.items()}))
    return chunks, tokens


def _assemble(chunks: list[Chunk], embeddings: list[torch.Tensor], kind: str, n: int) -> torch.Tensor:
    parts = [(c.index, e) for c, e in zip(chunks, embeddings) if c.kind == kind and c.index]
    out = parts[0][1].new_empty((n, parts[0][1].shape[-1]))
    for index, e in parts:
        out[torch.tensor(index, device=out.device)] = e
    return out


def scored_batch(queries: torch.Tensor, candidates: torch.Tensor, query_pids: torch.Tensor,
                 candidate_pids: torch.Tensor, cfg: LossConfig, teacher: Optional[torch.Tensor] = None,
                 teacher_columns: Optional[torch.Tensor] = None) -> ScoredBatch:
    """This rank's queries and what they are scored against: with cross_device, every rank's candidates
    (gathered with gradient), else this rank's own. On every rank candidates[i] is queries[i]'s positive.
    `teacher_columns` index this rank's own candidates; they are moved to where those sit in the gather."""
    device = queries.device
    query_sizes = gather_sizes(len(queries), device)
    if not (cfg.cross_device and group_size() > 1):
        return ScoredBatch(queries, query_pids, candidates, candidate_pids, torch.arange(len(queries), device=device),
                           sum(query_sizes), teacher=teacher, teacher_columns=teacher_columns)
    rank, candidate_sizes = group_rank(), gather_sizes(len(candidates), device)
    offset = sum(candidate_sizes[:rank])
    positive = torch.arange(len(queries), device=device) + offset
    if teacher_columns is not None:
        teacher_columns = torch.where(teacher_columns >= 0, teacher_columns + offset, teacher_columns)
    batch = ScoredBatch(queries, query_pids, gather_with_grad(candidates, candidate_sizes),
                        gather_with_grad(candidate_pids, candidate_sizes), positive, sum(query_sizes),
                        teacher=teacher, teacher_columns=teacher_columns)
    if cfg.symmetric:
        batch.all_queries = gather_with_grad(queries, query_sizes)
        batch.all_query_pids = gather_with_grad(query_pids, query_sizes)
        batch.query_offset = sum(query_sizes[:rank])
    return batch


def _micro_steps(accelerator, encoder, work: list) -> None:
    """Run each callable (a forward + backward); all but the last in the first accumulate entry (no sync),
    the last in the second (sync, and the DeepSpeed engine steps)."""
    with accelerator.accumulate(encoder):
        for fn in work[:-1]:
            fn()
    with accelerator.accumulate(encoder):
        work[-1]()


def _backward_kwargs(accelerator) -> tuple[dict, int]:
    """(kwargs for accelerator.backward, what it divides the loss by)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return {"scale_wrt_gas": False}, 1
    return {}, accelerator.gradient_accumulation_steps


def contrastive_step(encoder, batch: dict, loss_cfg: LossConfig, accelerator, chunk_size: int,
                     grad_cache: bool, normalize: bool) -> tuple[torch.Tensor, int]:
    """Forward + backward of one optimizer step on this rank's share of the global batch.
    Returns (global mean loss, detached; real tokens embedded on this rank)."""
    device = accelerator.device
    chunks, tokens = plan(encoder, batch, chunk_size, device)
    n_q, n_c = len(batch["queries"]), len(batch["candidates"])
    q_pids, c_pids = batch["query_pids"].to(device), batch["candidate_pids"].to(device)
    kwargs, divisor = _backward_kwargs(accelerator)
    world = accelerator.num_processes

    teacher = batch["teacher"].to(device) if "teacher" in batch else None
    columns = batch["teacher_columns"].to(device) if "teacher_columns" in batch else None

    def loss_of(q, c) -> tuple[torch.Tensor, int]:
        scored = scored_batch(q.float(), c.float(), q_pids, c_pids, loss_cfg, teacher, columns)
        return local_loss_sum(scored, loss_cfg, normalize), scored.total_queries

    if not grad_cache:
        out = {}

        def full() -> None:
            embeddings = [encoder(c.inputs) for c in chunks]
            loss_sum, total = loss_of(_assemble(chunks, embeddings, "query", n_q),
                                      _assemble(chunks, embeddings, "passage", n_c))
            stand_ins = sum(e.sum() * 0 for c, e in zip(chunks, embeddings) if not c.index)
            accelerator.backward(loss_sum * backward_scale(world, total, divisor) + stand_ins, **kwargs)
            out["loss"] = _global_mean(loss_sum.detach(), total)
        _micro_steps(accelerator, encoder, [full])
        return out["loss"], tokens

    states, embeddings = [], []
    with torch.no_grad():
        for c in chunks:
            states.append(RngState(device))
            embeddings.append(encoder(c.inputs))
    q = _assemble(chunks, embeddings, "query", n_q).float().requires_grad_()
    d = _assemble(chunks, embeddings, "passage", n_c).float().requires_grad_()
    loss_sum, total = loss_of(q, d)
    grad_q, grad_d = torch.autograd.grad(loss_sum * backward_scale(world, total, divisor), [q, d])
    after = RngState(device)

    def replay(c: Chunk, state: RngState):
        def run() -> None:
            state.restore()
            e = encoder(c.inputs)
            if c.index:
                grad = (grad_q if c.kind == "query" else grad_d)[torch.tensor(c.index, device=device)]
                surrogate = (e.float() * grad).sum()
            else:
                surrogate = e.sum() * 0
            accelerator.backward(surrogate, **kwargs)
        return run
    _micro_steps(accelerator, encoder, [replay(c, s) for c, s in zip(chunks, states)])
    after.restore()  # the next step draws fresh dropout masks, as it would without caching
    return _global_mean(loss_sum.detach(), total), tokens


def _global_mean(loss_sum: torch.Tensor, total: int) -> torch.Tensor:
    return all_reduce_sum(loss_sum) / total
