"""Batched, length-sorted encoding with a progress bar, alone or split across the ranks of a process group
(the cache of what was encoded: embedding_cache.py)."""

from __future__ import annotations

from typing import Optional

import torch
from tqdm import tqdm

from embedtune.distributed import (
    all_gather_rows,
    all_reduce_max,
    collective_device,
    gather_sizes,
    group_rank,
    group_size,
)


@torch.no_grad()
def encode(encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
    """Embeddings (float32, on CPU) of `texts` in input order; batches are formed by length to cut padding.
    An encoder that is not a torch model (an endpoint, a sentence-transformers baseline: baselines.py) encodes
    through its own `encode_texts`."""
    if not texts:
        return torch.empty(0, 0)
    if hasattr(encoder, "encode_texts"):
        return encoder.encode_texts(texts, kind, batch_size, desc)
    was_training = encoder.training
    encoder.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    device = next(encoder.parameters()).device
    out: list[Optional[torch.Tensor]] = [None] * len(texts)
    with tqdm(total=len(texts), desc=desc, unit="text", leave=False, mininterval=1.0) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in encoder.tokenize([texts[i] for i in idx], kind).items()}
            emb = encoder(batch).float().cpu()
            for row, i in enumerate(idx):
                out[i] = emb[row]
            bar.update(len(idx))
    encoder.train(was_training)
    return torch.stack(out)


def encode_sharded(encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
    """`encode` split across the ranks of a process group: rank r embeds texts r, r+W, r+2W, ... and every
    rank gets all embeddings in order. Without a process group (or with one process) it is `encode`."""
    world = group_size()
    if world <= 1:
        return encode(encoder, texts, kind, batch_size, desc)
    rank = group_rank()
    share = encode(encoder, texts[rank::world], kind, batch_size, f"{desc} (rank {rank}/{world})")
    device = collective_device()
    width = all_reduce_max(share.shape[1] if len(share) else 0, device)
    share = share.reshape(len(share), width).to(device)
    sizes = gather_sizes(len(share), device)
    parts = all_gather_rows(share, sizes).cpu().split(sizes)
    out = torch.empty(len(texts), width)
    for r, part in enumerate(parts):
        out[r::world] = part
    return out
