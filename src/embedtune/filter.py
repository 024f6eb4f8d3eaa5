"""filter + split: drop empty, too short/long, copied and (near-)duplicate queries, and optionally those whose
passage the base model does not find (round-trip); split train/dev/test by document.

All queries of one document (every chunk of it) land in one split, so no test passage's text reaches training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from embedtune.embedding_cache import EmbeddingCache
from embedtune.errors import EmbedtuneError
from embedtune.io import write_parquet
from embedtune.judge import JudgeConfig
from embedtune.model import Encoder, ModelConfig, on_device
from embedtune.precision import autocast
from embedtune.search import standing_of_rows
from embedtune.store import MappedTable, TextLookup
from embedtune.text_units import word_count, words

SPLITS = ("train", "dev", "test")


@dataclass
class FilterConfig:
    min_words: int = 2           # shorter queries are dropped
    max_words: int = 24          # longer queries are dropped (usually a copied passage or a rambling answer)
    copy_max_share: Optional[float] = 0.9  # drop a query whose longest run of words shared with its passage
                                 # covers this share of its words (a passage excerpt, not a query); null: off
    copy_min_words: int = 6      # ... counting only queries at least this long (short term names stay)
    dedup: bool = True           # drop a query whose normalised text was already kept
    near_dedup: bool = True      # drop a query with the same set of words as a kept one ("heart, enlarged")
    roundtrip_top_k: Optional[int] = 50  # keep only queries whose passage the base model ranks in the top k
                                 # (50: chosen on HPO and faqdev dev, docs/defaults.md; null: no round trip)
    roundtrip_margin: Optional[float] = None  # ... or scores within this (cosine) of the best-scoring passage:
                                 # passages that answer alike score alike (manuals, FAQs); null: rank only
    roundtrip_twin_cosine: Optional[float] = None  # passages at least this similar to the query's own (base
                                 # model cosine) do not count above it (copies, versions); null: all count
    judge: JudgeConfig = field(default_factory=JudgeConfig)  # optional LLM judge (judge.enabled=true)
    dev_fraction: float = 0.05   # share of documents held out for model selection
    test_fraction: float = 0.1   # share of documents held out for the synthetic test set
    seed: int = 0                # changes which documents are held out


def _norm(text: str) -> str:
    return " ".join(words(text))


def longest_shared_run(query: str, passage: str) -> int:
    """Length in words of the longest run of consecutive words that the query and the passage share."""
    q, p = _norm(query).split(), _norm(passage).split()
    best, previous = 0, [0] * (len(p) + 1)
    for i in range(len(q)):
        current = [0] * (len(p) + 1)
        for j in range(len(p)):
            if q[i] == p[j]:
                current[j + 1] = previous[j] + 1
                best = max(best, current[j + 1])
        previous = current
    return best


def is_copy(query: str, passage: str, cfg: FilterConfig) -> bool:
    """A passage excerpt rather than a query: long, and (nearly) all of it one run of the passage's words.
    Calibrated on human queries: at 6 words and 0.9 it drops 0.4% of the HPO dev synonyms (bench/queries.py)."""
    n = len(_norm(query).split())
    share = cfg.copy_max_share if cfg.copy_max_share is not None else 0.9
    return n >= cfg.copy_min_words and longest_shared_run(query, passage) >= share * n


FILTER_REASONS = ("empty", "too_short", "too_long", "copy", "duplicate", "near_duplicate")


def filter_queries(queries: list[dict], cfg: FilterConfig,
                   passages: Optional[dict[str, str]] = None) -> tuple[list[dict], dict[str, list[dict]]]:
    """Kept queries, and for each filter (in the order they are applied) the queries it dropped.
    `passages` (id -> text) enables the copy filter."""
    dropped: dict[str, list[dict]] = {reason: [] for reason in FILTER_REASONS}
    seen, seen_words, kept = set(), set(), []
    for q in queries:
        n_words = word_count(q["text"])
        words = " ".join(sorted(set(_norm(q["text"]).split())))
        if n_words == 0:
            reason = "empty"
        elif n_words < cfg.min_words:
            reason = "too_short"
        elif n_words > cfg.max_words:
            reason = "too_long"
        elif (passages is not None and cfg.copy_max_share is not None
              and is_copy(q["text"], passages[q["passage_id"]], cfg)):
            reason = "copy"
        elif cfg.dedup and _norm(q["text"]) in seen:
            reason = "duplicate"
        elif cfg.near_dedup and words in seen_words:
            reason = "near_duplicate"
        else:
            seen.add(_norm(q["text"]))
            seen_words.add(words)
            kept.append(q)
            continue
        dropped[reason].append(q)
    return kept, dropped


def counts(dropped: dict[str, list[dict]]) -> dict[str, int]:
    return {reason: len(rows) for reason, rows in dropped.items()}


def roundtrip_filter(queries: list[dict], passages: MappedTable, texts: TextLookup, exempt: set[str],
                     model_cfg: ModelConfig, cfg: FilterConfig, cache: EmbeddingCache, precision: str,
                     batch_size: int) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): a query is kept when the base model ranks its own passage in the top
    `cfg.roundtrip_top_k` of the whole corpus (near-duplicates of it not counted, with roundtrip_twin_cosine),
    or scores it within `cfg.roundtrip_margin` of the best passage, or when its id is in `exempt`; each row gets
    its `roundtrip_rank` and `roundtrip_gap`. The corpus embeddings land in `cache`, where mine and eval find
    them."""
    encoder = on_device(Encoder.load(model_cfg, precision=precision))
    with autocast(precision):
        vectors = cache.encode_corpus(encoder, texts, "passage", batch_size, desc="filter: passages")
        query_emb = cache.encode(encoder, [q["text"] for q in queries], "query", batch_size, desc="filter: queries")
    positives = torch.from_numpy(passages.rows_of([q["passage_id"] for q in queries]))
    ranks, gaps = (standing_of_rows(query_emb, vectors, positives, cfg.roundtrip_twin_cosine)
                   if queries else ([], []))
    ranked = [{**q, "roundtrip_rank": r, "roundtrip_gap": round(g, 4)} for q, r, g in zip(queries, ranks, gaps)]
    keep = [passes_roundtrip(r["roundtrip_rank"], r["roundtrip_gap"], cfg) or r["query_id"] in exempt
            for r in ranked]
    return [r for r, k in zip(ranked, keep) if k], [r for r, k in zip(ranked, keep) if not k]


def passes_roundtrip(rank: int, gap: float, cfg: FilterConfig) -> bool:
    """The round trip's rule: the own passage in the top k, or (with a margin) within the margin of the best."""
    return rank <= cfg.roundtrip_top_k or (cfg.roundtrip_margin is not None and gap <= cfg.roundtrip_margin)


def split_of(doc_key: str, cfg: FilterConfig) -> str:
    u = int(hashlib.sha256(f"{cfg.seed}\x00{doc_key}".encode()).hexdigest()[:12], 16) / 16**12
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.dev_fraction:
        return "dev"
    return "train"


def split_pairs(queries: list[dict], doc_of: dict[str, str], cfg: FilterConfig) -> dict[str, list[dict]]:
    """Pairs per split, assigned by the passage's document (source + doc_id)."""
    splits = {s: [] for s in SPLITS}
    for q in queries:
        doc = doc_of.get(q["passage_id"])
        if doc is None:
            raise EmbedtuneError(f"query {q['query_id']} names passage {q['passage_id']}, which is not in "
                                 "passages/: rerun generate after prepare (force=true)")
        splits[split_of(doc, cfg)].append({"query_id": q["query_id"], "query": q["text"],
                                           "passage_id": q["passage_id"], "roundtrip_rank": q.get("roundtrip_rank"),
                                           "judge_score": q.get("judge_score")})
    return splits


def write_splits(splits: dict[str, list[dict]], out_dir: Path) -> None:
    import pyarrow as pa

    schema = pa.schema([("query_id", pa.string()), ("query", pa.string()), ("passage_id", pa.string()),
                        ("roundtrip_rank", pa.int64()), ("judge_score", pa.int64())])
    for name, rows in splits.items():
        write_parquet(rows, Path(out_dir) / f"{name}.parquet", schema=schema)
