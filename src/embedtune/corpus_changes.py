"""What a corpus change did to the passages: new (an id not there before), changed (the same id, another title
or text), removed (an id gone), found by 8-byte digests of ids and contents (16 bytes a passage, whatever
the corpus's size), between the passages prepare wrote last time and those it writes now."""

from __future__ import annotations

from array import array
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.store import hash64


def content_digests(passages: list[dict]) -> np.ndarray:
    """8-byte digests of what a passage says (title and text): equal exactly when a passage did not change."""
    return hash64(f"{p['title']}\x00{p['text']}" for p in passages)


@dataclass
class CorpusChanges:
    new: int
    changed: int
    removed: int
    unchanged: int

    def line(self) -> str:
        if self.none():
            return f"corpus: unchanged ({self.unchanged:,} passages)"
        return f"corpus: +{self.new:,} new, {self.changed:,} changed, {self.removed:,} removed passages"

    def none(self) -> bool:
        """Every passage as it was: the same ids with the same texts."""
        return not (self.new or self.changed or self.removed)

    def counts(self) -> dict:
        return asdict(self)


class Digests:
    """Id and content digests of passages as they stream past (prepare's writer reads them through `watch`)."""

    def __init__(self):
        self.ids, self.contents = array("Q"), array("Q")

    def watch(self, passages: Iterable[dict], batch: int = 8192) -> Iterator[dict]:
        chunk = []
        for p in passages:
            chunk.append(p)
            if len(chunk) == batch:
                yield from self.record(chunk)
                chunk = []
        yield from self.record(chunk)

    def record(self, chunk: list[dict]) -> list[dict]:
        self.ids.extend(hash64(p["id"] for p in chunk).tolist())
        self.contents.extend(content_digests(chunk).tolist())
        return chunk

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return np.frombuffer(self.ids, dtype=np.uint64), np.frombuffer(self.contents, dtype=np.uint64)


def passage_batches(folder: Path, files: list[str]) -> Iterator[list[dict]]:
    """Written passages (id, title, text), a batch at a time: what their digests are made of."""
    for name in files:
        parts = pq.ParquetFile(Path(folder) / name)
        for batch in parts.iter_batches(batch_size=65_536, columns=["id", "title", "text"]):
            yield batch.to_pylist()


def previous_digests(folder: Path, manifest: Optional[dict]) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """The digests of the passages the previous prepare wrote (its manifest's files), a batch at a time; None
    where there is none, or its files cannot be read (then every passage counts as new, and prepare goes on)."""
    files = (manifest or {}).get("files") or []
    if not files:
        return None
    seen = Digests()
    try:
        for batch in passage_batches(folder, files):
            seen.record(batch)
    except (OSError, pa.ArrowException) as e:
        print(f"prepare: the previous passages cannot be read ({e}); every passage counts as new")
        return None
    return seen.arrays()


def gone_passages(folder: Path, files: list[str], contents: np.ndarray) -> list[dict]:
    """The passages of `files` (the previous prepare's) whose content is in no passage now (`contents`: the new
    content digests): removed, or changed away from it. Their derived data (cached vectors) goes with them."""
    now = np.sort(contents)
    gone = []
    for batch in passage_batches(folder, files):
        digests = content_digests(batch)
        at = np.clip(np.searchsorted(now, digests), 0, max(len(now) - 1, 0))
        present = (now[at] == digests) if len(now) else np.zeros(len(batch), dtype=bool)
        gone.extend(p for p, here in zip(batch, present) if not here)
    return gone


def compare(before: Optional[tuple[np.ndarray, np.ndarray]], after: tuple[np.ndarray, np.ndarray]) -> CorpusChanges:
    """`before` None: a first prepare, every passage new."""
    ids, contents = after
    if before is None:
        return CorpusChanges(new=len(ids), changed=0, removed=0, unchanged=0)
    old_ids, old_contents = before
    order = np.argsort(old_ids, kind="stable")
    old_ids, old_contents = old_ids[order], old_contents[order]
    at = np.clip(np.searchsorted(old_ids, ids), 0, max(len(old_ids) - 1, 0))
    found = (old_ids[at] == ids) if len(old_ids) else np.zeros(len(ids), dtype=bool)
    changed = found & (old_contents[at] != contents) if len(old_ids) else found
    kept = int(found.sum())  # ids are unique on both sides: prepare refuses repeated ones
    return CorpusChanges(new=int((~found).sum()), changed=int(changed.sum()), removed=len(old_ids) - kept,
                         unchanged=kept - int(changed.sum()))
