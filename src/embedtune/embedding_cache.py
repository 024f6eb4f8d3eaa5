"""The embedding cache: float16 shards on disk, memory-mapped, one folder per model fingerprint + arithmetic.

Vectors are stored in float16 whatever arithmetic computed them (half the disk and page cache of float32;
unit vectors keep about 3 significant digits): the arithmetic in the folder's name says how they were
computed, so bf16 and fp32 encodings never mix, but both are read back as float16-rounded values.

A shard is `vectors-<name>.npy` (float16, one row per text) beside `keys-<name>.npy` (uint64: the 8-byte hash
of kind + text of each row). A text already in any shard is never encoded again, by any stage that uses the
same model (filter, mine and eval of the base model share one folder). Nothing is loaded into memory up
front: the vectors stay memory-mapped, and a corpus is read block by block (`CorpusVectors`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from embedtune.distributed import barrier, group_rank, group_size, is_main
from embedtune.encode import encode, encode_sharded
from embedtune.errors import EmbedtuneError
from embedtune.precision import encoding_arithmetic
from embedtune.store import TextLookup, hash64, save_npy

BLOCK_ROWS = 65_536  # corpus rows per encoding block, per shard written, and per search block


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as e:  # an object array: loading it would unpickle (run) whatever it holds
        raise EmbedtuneError(f"{path}: not a plain array of numbers ({e}); refusing to load it. Delete the folder "
                             "and the embeddings are computed again") from e


def text_keys(texts: Sequence[str], kind: str) -> np.ndarray:
    return hash64(f"{kind}\x00{t}" for t in texts)


class EmbeddingCache:
    def __init__(self, root: Path, fingerprint: str):
        self.folder = Path(root) / hashlib.sha1(fingerprint.encode()).hexdigest()[:16]
        self.shards: list[np.ndarray] = []  # float16 vectors, memory-mapped (or in memory, before a save)
        self.names: list[str] = []
        self._reload()

    @classmethod
    def of_folder(cls, folder: Path) -> "EmbeddingCache":
        """The cache kept in `folder` (one model's), whatever fingerprint named it."""
        cache = cls.__new__(cls)
        cache.folder = Path(folder)
        cache._reload()
        return cache

    def _reload(self) -> None:
        """Every complete shard on disk (keys are written after vectors: a keys file means both are whole)."""
        self.shards, self.names, keys = [], [], []
        for keys_path in sorted(self.folder.glob("keys-*.npy")):
            name = keys_path.name[len("keys-"):-len(".npy")]
            shard_keys, vectors = _load(keys_path), _load(self.folder / f"vectors-{name}.npy")
            if vectors.ndim != 2 or len(vectors) != len(shard_keys) or shard_keys.dtype != np.uint64:
                continue  # not a shard this code wrote: ignored, its texts are encoded again
            self.shards.append(vectors)
            self.names.append(name)
            keys.append(np.asarray(shard_keys))
        self._index(keys)

    def _index(self, keys: list[np.ndarray]) -> None:
        self._keys = keys
        self.offsets = np.cumsum([0] + [len(k) for k in keys])
        all_keys = np.concatenate(keys) if keys else np.empty(0, np.uint64)
        self._order = np.argsort(all_keys, kind="stable")
        self._sorted = all_keys[self._order]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Cache row of each key (-1 where absent)."""
        rows = np.full(len(keys), -1, dtype=np.int64)
        if len(keys) and len(self._sorted):
            pos = np.searchsorted(self._sorted, keys)
            inside = np.flatnonzero(pos < len(self._sorted))
            hit = inside[self._sorted[pos[inside]] == keys[inside]]
            rows[hit] = self._order[pos[hit]]
        return rows

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """float32 vectors of cache rows, in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        width = self.shards[0].shape[1] if self.shards else 0
        out = np.empty((len(rows), width), dtype=np.float32)
        for s in np.unique(shard):
            at = np.flatnonzero(shard == s)
            local = rows[at] - self.offsets[s]
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo == len(at) and (np.diff(local) == 1).all():  # one contiguous run: a slice of the map
                out[at] = self.shards[s][lo:hi]
            else:
                out[at] = self.shards[s][local]
        return out

    def add(self, keys: np.ndarray, vectors: np.ndarray, write: bool = True, index: bool = True) -> None:
        """A new shard (float16); written to disk when `write` (else kept in memory for this process). `index`
        False leaves the key index to a later _reload (many shards in a row: one sort, not one per shard)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float16)
        name = hashlib.sha1(keys.tobytes()).hexdigest()[:16]
        if write:
            save_npy(vectors, self.folder / f"vectors-{name}.npy")
            save_npy(keys, self.folder / f"keys-{name}.npy")  # last: marks the shard complete
        if name in self.names:
            return
        self.shards.append(vectors)
        self.names.append(name)
        self._keys.append(keys)
        if index:
            self._index(self._keys)

    def encode(self, encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
        """Embeddings (float32) of `texts` in order; only texts not yet cached are encoded (split across the
        ranks of a process group; rank 0 writes them)."""
        if not texts:
            return torch.empty(0, 0)
        keys = text_keys(texts, kind)
        rows = self.find(keys)
        if (rows < 0).any():
            first = {}
            for i in np.flatnonzero(rows < 0):
                first.setdefault(int(keys[i]), int(i))  # a repeated text is encoded once
            missing = sorted(first.values())
            new = encode_sharded(encoder, [texts[i] for i in missing], kind, batch_size, desc).numpy()
            self.add(keys[missing], new, write=is_main())
            rows = self.find(keys)
        return torch.from_numpy(self.gather(rows))

    def encode_corpus(self, encoder, texts: TextLookup, kind: str, batch_size: int = 32,
                      desc: str = "encode") -> "CorpusVectors":
        """Vectors of every row of a table, encoded block by block (BLOCK_ROWS) and never held whole: each
        block missing from the cache is encoded by one rank (blocks dealt round-robin) and written as its
        own shard, so a killed run keeps its finished blocks and ranks never exchange vectors."""
        n, world, rank = len(texts), group_size(), group_rank()
        block_rows = []
        for b, start in enumerate(range(0, n, BLOCK_ROWS)):
            block = texts.at(start, min(start + BLOCK_ROWS, n))
            keys = text_keys(block, kind)
            rows = self.find(keys)
            todo = np.flatnonzero(rows < 0)
            if len(todo) and b % world == rank:
                new = encode(encoder, [block[i] for i in todo], kind, batch_size,
                             f"{desc} block {b + 1}/{-(-n // BLOCK_ROWS)}").numpy()
                self.add(keys[todo], new, index=False)
            block_rows.append((keys, len(todo)))
        if world > 1:
            barrier()  # every rank's shards are on disk
            self._reload()
        else:
            self._index(self._keys)
        rows = np.concatenate([self.find(keys) for keys, _ in block_rows]) if block_rows else np.empty(0, np.int64)
        if (rows < 0).any():
            raise EmbedtuneError(f"{self.folder}: {int((rows < 0).sum())} vectors are missing after encoding "
                                 "(is the cache folder on a file system every rank shares?)")
        return CorpusVectors(self, rows)


class CorpusVectors:
    """The vectors of a whole table, in table order, read from the cache's shards one block at a time."""

    def __init__(self, cache: EmbeddingCache, rows: np.ndarray):
        self.cache, self.rows = cache, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dim(self) -> int:
        return self.cache.shards[0].shape[1] if self.cache.shards else 0

    def blocks(self, size: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 vectors of rows first..first+size-1)."""
        for start in range(0, len(self.rows), size):
            yield start, self.cache.gather(self.rows[start:start + size])

    def take(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.cache.gather(self.rows[np.asarray(rows, dtype=np.int64)])

    def dense(self) -> torch.Tensor:
        """All vectors as one float32 tensor (small corpora: 4 bytes x dim per row in memory)."""
        if not len(self.rows):
            return torch.empty(0, self.dim)
        return torch.from_numpy(self.cache.gather(self.rows))


class NoCache:
    """EmbeddingCache's interface without the disk: for weights that change (evaluation during training)."""

    def encode(self, encoder, texts: list[str], kind: str, batch_size: int = 32, desc: str = "encode") -> torch.Tensor:
        return encode(encoder, texts, kind, batch_size, desc)


def forget(cache_root: Path, keys: np.ndarray) -> int:
    """Remove the rows of `keys` (texts gone from the corpus) from every model's cache under `cache_root`: a
    shard holding any is written again without them (whole, before the old one is deleted; a crash between
    leaves both, which read as one). Returns how many rows were removed."""
    removed = 0
    for keys_path in sorted(Path(cache_root).glob("*/keys-*.npy")):
        shard_keys = np.asarray(_load(keys_path))
        gone = np.isin(shard_keys, keys)
        if not gone.any():
            continue
        vectors_path = keys_path.with_name("vectors-" + keys_path.name[len("keys-"):])
        kept = np.ascontiguousarray(shard_keys[~gone])
        if len(kept):
            name = hashlib.sha1(kept.tobytes()).hexdigest()[:16]
            save_npy(np.ascontiguousarray(_load(vectors_path)[~gone]), keys_path.parent / f"vectors-{name}.npy")
            save_npy(kept, keys_path.parent / f"keys-{name}.npy")
        keys_path.unlink()  # first: without its keys file a shard is not read
        vectors_path.unlink(missing_ok=True)
        removed += int(gone.sum())
    return removed


def embedding_cache(cache_root: Path, model_fingerprint: str, precision: str) -> EmbeddingCache:
    """The run's cache for one model at one arithmetic (eval.precision): bf16 and fp32 encodings differ, so
    a stage run at another precision never reads the other's vectors (both stored as float16). filter, mine
    and eval share it."""
    return EmbeddingCache(cache_root, f"{model_fingerprint}|{encoding_arithmetic(precision)}")

