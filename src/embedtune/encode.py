"""Batched encoding with a progress bar, and an embedding cache keyed by model fingerprint and text."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from embedtune.distributed import (
    all_gather_rows,
    all_reduce_max,
    collective_device,
    gather_sizes,
    group_rank,
    group_size,
    is_main,
)
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path
from embedtune.precision import encoding_arithmetic


@torch.no_grad()
def encode(encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
    """Embeddings (float32, on CPU) of `texts` in input order; batches are formed by length to cut padding."""
    if not texts:
        return torch.empty(0, 0)
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


def _key(kind: str, text: str) -> str:
    return hashlib.sha1(f"{kind}\x00{text}".encode("utf-8")).hexdigest()


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


class EmbeddingCache:
    """Embeddings on disk, one folder per model fingerprint: `keys.json` (sha1 of kind + text) and `vectors.npy`.

    A rerun (or another stage with the same model, e.g. mine then eval of the base model) reads them back
    instead of encoding again. Loaded with allow_pickle=False.
    """

    def __init__(self, root: Path, fingerprint: str):
        self.folder = Path(root) / hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
        self.index: dict[str, int] = {}
        self.vectors: Optional[np.ndarray] = None
        keys_path = self.folder / "keys.json"
        if keys_path.exists():
            keys = json.loads(keys_path.read_text())
            try:
                vectors = np.load(self.folder / "vectors.npy", allow_pickle=False)
            except ValueError as e:  # an object array: loading it would unpickle (run) whatever it holds
                raise EmbedtuneError(f"{self.folder / 'vectors.npy'}: not a plain array of numbers ({e}); refusing "
                                     "to load it. Delete the folder and the embeddings are computed again") from e
            if len(keys) == len(vectors):
                self.index = {k: i for i, k in enumerate(keys)}
                self.vectors = vectors

    def encode(self, encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
        if not texts:
            return torch.empty(0, 0)
        keys = [_key(kind, t) for t in texts]
        missing = sorted({k: i for i, k in enumerate(keys) if k not in self.index}.values())
        if missing:
            new = encode_sharded(encoder, [texts[i] for i in missing], kind, batch_size, desc).numpy()
            start = len(self.index)
            for n, i in enumerate(missing):
                self.index[keys[i]] = start + n
            self.vectors = new if self.vectors is None else np.concatenate([self.vectors, new])
            if is_main():  # every rank holds the vectors; one writes them
                self._save()
        return torch.from_numpy(self.vectors[[self.index[k] for k in keys]])

    def _save(self) -> None:
        keys = sorted(self.index, key=self.index.get)
        with atomic_path(self.folder / "vectors.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, self.vectors, allow_pickle=False)
        with atomic_path(self.folder / "keys.json") as tmp:
            tmp.write_text(json.dumps(keys))


class NoCache:
    """EmbeddingCache's interface without the disk: for weights that change (evaluation during training)."""

    def encode(self, encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
        return encode(encoder, texts, kind, batch_size, desc)


def embedding_cache(cache_root: Path, model_fingerprint: str, precision: str) -> EmbeddingCache:
    """The run's cache for one model at one arithmetic (eval.precision): bf16 and fp32 vectors differ, so
    a stage run at another precision never reads the other's vectors. filter, mine and eval share it."""
    return EmbeddingCache(cache_root, f"{model_fingerprint}|{encoding_arithmetic(precision)}")
