"""What mining found last time, kept so that mining after a corpus change searches only what the change affects.

Mining keeps, for every training query (named by the digest of its text), its best candidates (passages named by
the digest of their content, with their scores) and the content digests of every passage it searched. The next
mining with the same base model, arithmetic and search settings answers a query it has seen from that list plus a
search over only the passages added or changed since: unchanged passages score the same against the same query,
so the merged list is what a full search would find. A query is searched in full when it is new, or when one of
its kept candidates is gone (removed, changed, or now in a held-out document), so a passage that is no longer there
never comes back from a kept list.

Files, in a folder beside negatives/train.parquet that the mine manifest names (a new one each mining, so a killed
mining leaves the last one whole): queries.npy (uint64 [queries]), passages.npy (uint64 [queries, depth], 0: none),
scores.npy (float32, -inf: none), searched.npy (sorted uint64).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from embedtune.corpus_changes import content_digests
from embedtune.manifest import fingerprint
from embedtune.search import IndexConfig, Searcher, Vectors, exact_topk, take_vectors
from embedtune.store import MappedTable, hash64

PARTS = ("queries", "passages", "scores")


def candidates_fingerprint(model_fingerprint: str, precision: str, cfg: IndexConfig, depth: int) -> str:
    """What makes two minings' candidate lists comparable: the base model and its arithmetic, how it searches, how
    deep (sampling, margins and how many negatives are kept are applied after, and may change freely)."""
    search = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(IndexConfig)}
    return fingerprint("candidates", model_fingerprint, precision, search, depth)


def passage_contents(passages: MappedTable, batch: int = 65_536) -> np.ndarray:
    """Content digest (title and text, as prepare compares passages) of every passage row, in row order."""
    parts = [content_digests(passages.table.select(["title", "text"]).slice(lo, batch).to_pylist())
             for lo in range(0, passages.table.num_rows, batch)]
    return np.concatenate(parts) if parts else np.zeros(0, np.uint64)


def query_digests(pairs: MappedTable) -> np.ndarray:
    """Digest of each pair's query text, in pair order."""
    return hash64(pairs.table.column("query").to_pylist())


class Kept:
    """The candidates a previous mining wrote into `folder` (memory-mapped), or None where there are none fit to
    reuse (another fingerprint, missing or unreadable files: then every query is searched in full)."""

    def __init__(self, queries: np.ndarray, passages: np.ndarray, scores: np.ndarray, searched: np.ndarray):
        self.order = np.argsort(queries, kind="stable")
        self.queries, self.passages, self.scores, self.searched = queries[self.order], passages, scores, searched

    @classmethod
    def load(cls, negatives: Path, manifest: Optional[dict], fingerprint_now: str) -> Optional["Kept"]:
        kept = (manifest or {}).get("candidates") or {}
        if kept.get("fingerprint") != fingerprint_now or not kept.get("folder"):
            return None
        try:
            arrays = [np.load(Path(negatives) / kept["folder"] / f"{p}.npy", mmap_mode="r", allow_pickle=False)
                      for p in (*PARTS, "searched")]
        except (OSError, ValueError) as e:
            print(f"mine: the previous candidate lists cannot be read ({e}); every query is searched in full")
            return None
        return cls(np.asarray(arrays[0]), *arrays[1:])

    def rows_of(self, queries: np.ndarray) -> np.ndarray:
        """Each query's row in the kept arrays, -1 where it was not mined before."""
        if not len(self.queries):
            return np.full(len(queries), -1, np.int64)
        at = np.clip(np.searchsorted(self.queries, queries), 0, len(self.queries) - 1)
        return np.where(self.queries[at] == queries, self.order[at], -1).astype(np.int64)


class CandidateSearch:
    """Top-k candidates of training queries: from `kept` plus the passages new since it where that is exact, else
    by `searcher` over every allowed passage. `contents` names each passage row by content; `allowed` (None: all)
    marks the rows that may be candidates, as `searcher` does."""

    def __init__(self, searcher: Searcher, vectors: Vectors, contents: np.ndarray, allowed: Optional[np.ndarray],
                 kept: Optional[Kept]):
        self.searcher, self.contents, self.kept = searcher, contents, kept
        rows = np.arange(len(contents)) if allowed is None else np.flatnonzero(allowed)
        by_content = np.argsort(contents[rows], kind="stable")
        self.searched, self._rows = contents[rows][by_content], rows[by_content]  # sorted digests, their rows
        self.counts = {"queries_searched_in_full": 0, "queries_updated": 0, "passages_new_to_search": 0}
        if kept is not None:
            fresh = ~np.isin(contents[rows], kept.searched)
            self.delta_rows = rows[fresh]
            self.delta = torch.as_tensor(np.asarray(take_vectors(vectors, self.delta_rows), dtype=np.float32))
            self.counts["passages_new_to_search"] = int(len(self.delta_rows))

    def _rows_of_contents(self, digests: np.ndarray) -> np.ndarray:
        """Current allowed row of each content digest, -1 where none has it (0: an empty slot, also -1)."""
        if not len(self.searched):
            return np.full(digests.shape, -1, np.int64)
        at = np.clip(np.searchsorted(self.searched, digests), 0, len(self.searched) - 1)
        return np.where((self.searched[at] == digests) & (digests != 0), self._rows[at], -1).astype(np.int64)

    def search(self, queries: np.ndarray, vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, rows) [queries, k'] best first, rows -1 past the end, as `Searcher.search`."""
        if self.kept is not None:
            return self._updated(queries, vectors, k)
        self.counts["queries_searched_in_full"] += len(queries)
        return self.searcher.search(vectors, k)

    def _updated(self, queries: np.ndarray, vectors: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        at = self.kept.rows_of(queries)
        reuse = np.zeros(len(queries), dtype=bool)
        stored_rows = np.full((len(queries), self.kept.passages.shape[1]), -1, np.int64)
        known = np.flatnonzero(at >= 0)
        digests = np.asarray(self.kept.passages[at[known]]).reshape(len(known), -1)
        rows = self._rows_of_contents(digests)
        whole = ((rows >= 0) | (digests == 0)).all(axis=1)  # nothing it kept is gone
        reuse[known[whole]], stored_rows[known[whole]] = True, rows[whole]
        out_s = torch.full((len(queries), k), -torch.inf)
        out_i = torch.full((len(queries), k), -1, dtype=torch.long)
        full = np.flatnonzero(~reuse)
        if len(full):
            s, i = self.searcher.search(vectors[torch.as_tensor(full)], k)
            out_s[torch.as_tensor(full), :s.shape[1]], out_i[torch.as_tensor(full), :i.shape[1]] = s, i
        again = np.flatnonzero(reuse)
        if len(again):
            picked = torch.as_tensor(again)
            kept_s = torch.as_tensor(np.asarray(self.kept.scores[at[again]], dtype=np.float32))
            kept_i = torch.as_tensor(stored_rows[again])
            kept_s = kept_s.masked_fill(kept_i < 0, -torch.inf)
            new_s, new_i = exact_topk(vectors[picked], self.delta, k, desc="mine: new passages")
            new_i = torch.where(new_i >= 0, torch.as_tensor(self.delta_rows)[new_i.clamp(min=0)], new_i)
            merged_s, merged_i = torch.cat([kept_s, new_s], 1), torch.cat([kept_i, new_i], 1)
            top_s, where = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
            top_i = merged_i.gather(1, where).masked_fill(torch.isinf(top_s), -1)
            out_s[picked, :top_s.shape[1]], out_i[picked, :top_i.shape[1]] = top_s, top_i
        self.counts["queries_searched_in_full"] += len(full)
        self.counts["queries_updated"] += len(again)
        width = int((out_i >= 0).sum(1).max()) if len(queries) else 0
        return out_s[:, :width], out_i[:, :width]


class CandidateWriter:
    """Writes a range of queries' candidate lists (content digests and scores, `depth` wide) into memory-mapped
    files `<folder>/<prefix>passages.npy` and `scores.npy` (`.tmp` until `close`)."""

    def __init__(self, folder: Path, prefix: str, n: int, depth: int, contents: np.ndarray):
        self.folder, self.prefix, self.contents = Path(folder), prefix, contents
        self.folder.mkdir(parents=True, exist_ok=True)
        self.passages = np.lib.format.open_memmap(self._tmp("passages"), "w+", np.uint64, (n, depth))
        self.scores = np.lib.format.open_memmap(self._tmp("scores"), "w+", np.float32, (n, depth))
        self.passages[:], self.scores[:] = 0, -np.inf

    def _tmp(self, part: str) -> Path:
        return self.folder / f"{self.prefix}{part}.npy.tmp"

    def put(self, start: int, scores: torch.Tensor, rows: torch.Tensor) -> None:
        width = min(rows.shape[1], self.passages.shape[1])
        rows_np = rows[:, :width].numpy()
        stop = start + len(rows_np)
        self.passages[start:stop, :width] = np.where(rows_np >= 0, self.contents[np.clip(rows_np, 0, None)], 0)
        self.scores[start:stop, :width] = np.where(rows_np >= 0, scores[:, :width].numpy(), -np.inf)

    def close(self) -> None:
        for part in ("passages", "scores"):
            getattr(self, part).flush()
            os.replace(self._tmp(part), self.folder / f"{self.prefix}{part}.npy")
        self.passages = self.scores = None


def join_parts(folder: Path, prefixes: list[str]) -> None:
    """Rank parts (CandidateWriter's prefixes in `folder`) into folder/{passages,scores}.npy, in order."""
    for part in ("passages", "scores"):
        arrays = [np.load(Path(folder) / f"{p}{part}.npy", mmap_mode="r") for p in prefixes]
        out = Path(folder) / f"{part}.npy"
        tmp = out.parent / (out.name + ".tmp")
        joined = np.lib.format.open_memmap(tmp, "w+", arrays[0].dtype, (sum(len(a) for a in arrays), arrays[0].shape[1]))
        at = 0
        for a in arrays:
            joined[at:at + len(a)] = a
            at += len(a)
        joined.flush()
        del joined
        os.replace(tmp, out)
        del arrays
        for p in prefixes:
            (Path(folder) / f"{p}{part}.npy").unlink()


def folder_name(stage_key: str, previous: Optional[dict]) -> str:
    """The candidates folder of this mining: named by its stage key and the mining before it, so every rank agrees
    on it and it is never the folder being read."""
    return "candidates-" + fingerprint(stage_key, (previous or {}).get("run_id"))[:12]


def drop_others(negatives: Path, keep: str) -> None:
    """Deletes the candidate folders of earlier minings (after the manifest names the new one)."""
    import shutil

    for old in Path(negatives).glob("candidates-*"):
        if old.is_dir() and old.name != keep:
            shutil.rmtree(old, ignore_errors=True)
