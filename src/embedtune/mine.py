"""mine: hard negatives from the base model, aware of the positive.

For each training query, candidates are the top-k passages by the base model (exact search, or an IVF/HNSW
index for large corpora: search.py). The positive and other passages of its document are removed; so is any
candidate scoring above `margin x positive score` (NV-Retriever's rule: such passages are often unlabelled
positives). The first `num_negatives` remaining after `skip_top` are kept, or, with `sample_ranks: [a, b]`,
`num_negatives` drawn at random (seeded per query) from the remaining candidates ranked a..b-1 (less uniformly
hard, more varied negatives).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from embedtune.candidates import CandidateSearch, CandidateWriter, join_parts, query_digests
from embedtune.corpus import doc_key
from embedtune.distributed import all_reduce_sum, barrier, collective_device, group_rank, group_size
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path
from embedtune.manifest import not_in_key
from embedtune.search import IndexConfig, Searcher, Vectors, take_vectors
from embedtune.store import MappedTable, hash64, save_npy


@dataclass
class MiningConfig(IndexConfig):
    top_k: int = 50                  # candidates retrieved per query
    num_negatives: int = 3           # hard negatives kept per query (0: in-batch negatives only)
    skip_top: int = 0                # ignore this many best candidates after filtering
    margin: Optional[float] = 0.95   # drop candidates scoring above margin x positive score (null: keep)
    sample_ranks: Optional[list[int]] = None  # [a, b]: sample num_negatives from filtered ranks a..b-1
    batch_size: int = not_in_key(32)  # texts per encoding batch (small batches of length-sorted texts are fastest on CPU: bench/encode.py)
    query_block: int = not_in_key(16_384)  # queries searched and written at a time (bounds memory)


def doc_hashes(sources: Iterable[str], doc_ids: Iterable[str]) -> np.ndarray:
    """One uint64 per passage naming its document (source + doc_id)."""
    return hash64(doc_key(s, d) for s, d in zip(sources, doc_ids))


class PassageRows:
    """What mining needs of the passages, as arrays: the row of an id, the id of a row, each row's document."""

    def __init__(self, rows_of: Callable[[list[str]], np.ndarray], ids_at: Callable[[list[int]], list[str]],
                 doc: np.ndarray):
        self._rows_of, self.ids_at, self.doc = rows_of, ids_at, doc

    @classmethod
    def of_list(cls, passages: list[dict]) -> "PassageRows":
        row_of = {p["id"]: n for n, p in enumerate(passages)}
        return cls(lambda ids: np.array([row_of.get(i, -1) for i in ids], dtype=np.int64),
                   lambda rows: [passages[r]["id"] for r in rows],
                   doc_hashes((p["source"] for p in passages), (p["doc_id"] for p in passages)))

    @classmethod
    def of_table(cls, table: MappedTable) -> "PassageRows":
        return cls(lambda ids: table.rows_of(ids, missing_ok=True),
                   lambda rows: table.take(rows, ["id"]).column("id").to_pylist(),
                   table.hashes("doc"))

    def rows_of(self, ids: list[str]) -> np.ndarray:
        rows = self._rows_of(ids)
        if (rows < 0).any():
            missing = [ids[i] for i in np.flatnonzero(rows < 0)]
            raise EmbedtuneError(f"{len(missing)} training pairs name passages that are not in passages/ "
                                 f"(e.g. {missing[0]}): rerun the pipeline from generate with force=true")
        return rows

    def allowed(self, held_out: Iterable[tuple[str, str]]) -> Optional[np.ndarray]:
        """Rows that may be negatives: all but those of held-out (source, doc_id) documents (None: all)."""
        held = list(held_out)
        if not held:
            return None
        return ~np.isin(self.doc, doc_hashes((s for s, _ in held), (d for _, d in held)))


def select_negatives(positive: int, positive_score: float, cand_idx: list[int], cand_scores: list[float],
                     same_doc: set[int], cfg: MiningConfig, key: str = "") -> tuple[list[int], list[float]]:
    """Indices and scores of the negatives kept for one query (`key`: its id, seeds sampling), best first."""
    kept = []
    for idx, score in zip(cand_idx, cand_scores):
        if idx == positive or idx in same_doc:
            continue
        if cfg.margin is not None and score > cfg.margin * positive_score:
            continue
        kept.append((idx, score))
    if cfg.sample_ranks is not None:
        a, b = cfg.sample_ranks
        pool = kept[a:b]
        rng = random.Random(int(hashlib.sha1(f"{cfg.seed}\x00{key}".encode()).hexdigest()[:12], 16))
        kept = [pool[i] for i in sorted(rng.sample(range(len(pool)), min(cfg.num_negatives, len(pool))))]
    else:
        kept = kept[cfg.skip_top:cfg.skip_top + cfg.num_negatives]
    return [i for i, _ in kept], [s for _, s in kept]


def mine_hard_negatives(pairs: list[dict], passages: PassageRows | list[dict], query_emb: torch.Tensor,
                        passage_emb: Vectors, cfg: MiningConfig, held_out: frozenset = frozenset(),
                        searcher: Optional[Searcher] = None,
                        found: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> list[dict]:
    """Rows of negatives/train.parquet for `pairs`, given embeddings of their queries and of all passages.
    Passages of `held_out` documents ((source, doc_id): the dev/test split) are never chosen as negatives,
    so no held-out passage's text reaches training. `searcher` (exact or ANN over `passage_emb`, already
    excluding held-out rows) is made here when not given; `found` (scores, rows of the top_k + 1 candidates of
    each query, already searched: candidates.py) replaces the search."""
    if isinstance(passages, list):
        passages = PassageRows.of_list(passages)
    positives = passages.rows_of([q["passage_id"] for q in pairs])
    if not len(positives):
        return []
    positive_scores = (query_emb.float() * torch.from_numpy(np.asarray(take_vectors(passage_emb, positives),
                                                                          dtype=np.float32))).sum(-1)
    if found is None:
        searcher = searcher or Searcher(passage_emb, cfg, passages.allowed(held_out))
        found = searcher.search(query_emb, cfg.top_k + 1)
    scores, found = found
    chosen = []
    for n, q in enumerate(pairs):
        pos, cand = int(positives[n]), [c for c in found[n].tolist() if c >= 0]
        same_doc = {c for c in cand if passages.doc[c] == passages.doc[pos]}
        chosen.append(select_negatives(pos, float(positive_scores[n]), cand, scores[n].tolist()[:len(cand)],
                                       same_doc, cfg, key=q["query_id"]))
    ids = iter(passages.ids_at([i for neg_idx, _ in chosen for i in neg_idx]))
    return [{"query_id": q["query_id"], "passage_id": q["passage_id"], "positive_score": float(positive_scores[n]),
             "negative_ids": [next(ids) for _ in neg_idx], "negative_scores": neg_scores}
            for n, (q, (neg_idx, neg_scores)) in enumerate(zip(pairs, chosen))]


NEGATIVES_SCHEMA = pa.schema([("query_id", pa.string()), ("passage_id", pa.string()), ("positive_score", pa.float64()),
                              ("negative_ids", pa.list_(pa.string())), ("negative_scores", pa.list_(pa.float64()))])


def held_out_documents(passages: MappedTable, pairs: list[dict]) -> set[tuple[str, str]]:
    """(source, doc_id) of the passages of `pairs` (a dev or test split)."""
    found = passages.take(passages.rows_of([q["passage_id"] for q in pairs]), ["source", "doc_id"])
    return set(zip(found.column("source").to_pylist(), found.column("doc_id").to_pylist()))


def _mine_range(pairs: MappedTable, query_vectors: Vectors, passages: PassageRows, passage_vectors: Vectors,
                cfg: MiningConfig, search: CandidateSearch, start: int, stop: int, path: Path, kept: CandidateWriter,
                desc: str) -> None:
    """Mine pairs start..stop-1, `cfg.query_block` queries at a time, streaming the rows into `path` and each
    query's candidates into `kept` (what the next mining may reuse)."""
    keys = query_digests(pairs)
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, NEGATIVES_SCHEMA) as writer:
            with tqdm(total=stop - start, desc=desc, unit="query", mininterval=1.0) as bar:
                for lo in range(start, stop, cfg.query_block):
                    hi = min(lo + cfg.query_block, stop)
                    block = pairs.table.select(["query_id", "passage_id"]).slice(lo, hi - lo).to_pylist()
                    query_emb = torch.from_numpy(np.asarray(take_vectors(query_vectors, np.arange(lo, hi)),
                                                            dtype=np.float32))
                    found = search.search(keys[lo:hi], query_emb, cfg.top_k + 1)
                    kept.put(lo - start, *found)
                    rows = mine_hard_negatives(block, passages, query_emb, passage_vectors, cfg, found=found)
                    writer.write_table(pa.Table.from_pylist(rows, schema=NEGATIVES_SCHEMA))
                    bar.update(hi - lo)
    kept.close()


def write_negatives(pairs: MappedTable, query_vectors: Vectors, passages: PassageRows, passage_vectors: Vectors,
                    cfg: MiningConfig, search: CandidateSearch, out: Path, kept_folder: Path) -> dict:
    """negatives/train.parquet for every training pair, in pair order, never holding all rows in memory, and in
    `kept_folder` the candidate lists the next mining reuses (candidates.py). Under a process group rank r mines
    the r-th contiguous share into part files and rank 0 joins the parts in rank order, so the files equal a
    one-process run's. The counts (on rank 0; {} elsewhere)."""
    world, rank, n = group_size(), group_rank(), len(pairs)
    depth = cfg.top_k + 1
    if world == 1:
        _mine_range(pairs, query_vectors, passages, passage_vectors, cfg, search, 0, n, out,
                    CandidateWriter(kept_folder, "", n, depth, search.contents), "mine: queries")
    else:
        parts = [out.parent / f".{out.stem}.part-{r}-of-{world}.parquet" for r in range(world)]
        start, stop = n * rank // world, n * (rank + 1) // world
        _mine_range(pairs, query_vectors, passages, passage_vectors, cfg, search, start, stop, parts[rank],
                    CandidateWriter(kept_folder, f"part-{rank}-", stop - start, depth, search.contents),
                    f"mine: queries (rank {rank}/{world})")
        summed = ("queries_searched_in_full", "queries_updated")  # each rank its own queries; the passages are shared
        totals = all_reduce_sum(torch.tensor([search.counts[k] for k in summed], device=collective_device())).tolist()
        counts = {**search.counts, **dict(zip(summed, map(int, totals)))}
        barrier()
        if rank != 0:
            return {}
        join_parts(kept_folder, [f"part-{r}-" for r in range(world)])
        with atomic_path(out) as tmp:
            with pq.ParquetWriter(tmp, NEGATIVES_SCHEMA) as writer:
                for part in parts:
                    for batch in pq.ParquetFile(part).iter_batches():
                        writer.write_batch(batch)
        for part in parts:
            part.unlink()
    lengths = pc.list_value_length(pq.read_table(out, columns=["negative_ids"]).column("negative_ids"))
    lengths = np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64) if len(lengths) else np.empty(0, np.int64)
    save_npy(query_digests(pairs), kept_folder / "queries.npy")
    save_npy(search.searched, kept_folder / "searched.npy")
    return {"queries": int(len(lengths)), "negatives": int(lengths.sum()), **(search.counts if world == 1 else counts),
            "queries_without_negatives": int((lengths == 0).sum()),
            "queries_with_fewer_negatives": int((lengths < cfg.num_negatives).sum())}


def mining_summary(counts: dict, searched_by: str, num_negatives: int, reused: bool, recall: Optional[dict]) -> str:
    """mine's printed lines: negatives found, what the kept candidate lists saved, the index's recall."""
    lines = [f"mine: {counts['negatives']:,} hard negatives for {counts['queries']:,} queries by {searched_by}; "
             f"{counts['queries_with_fewer_negatives']:,} got fewer than {num_negatives} "
             f"({counts['queries_without_negatives']:,} none)"]
    if reused:
        lines.append(f"mine: {counts['queries_updated']:,} queries answered from the last mining plus a search of "
                     f"{counts['passages_new_to_search']:,} new or changed passages; "
                     f"{counts['queries_searched_in_full']:,} searched in full (new, or a kept candidate is gone)")
    if recall:
        lines.append(f"mine: {recall['index']}: recall@{recall['k']} {recall['recall']:.3f} against exact search on "
                     f"{recall['sample']:,} sampled queries")
    return "\n".join(lines)
