"""filter + split: drop empty, too short/long and duplicate queries; split train/dev/test by document.

All queries of one document (every chunk of it) land in one split, so no test passage's text reaches training.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import EmbedtuneError
from embedtune.io import write_parquet

PAIR_COLUMNS = ["query_id", "query", "passage_id"]
SPLITS = ("train", "dev", "test")


@dataclass
class FilterConfig:
    min_words: int = 2           # shorter queries are dropped
    max_words: int = 24          # longer queries are dropped (usually a copied passage or a rambling answer)
    dedup: bool = True           # drop a query whose normalised text was already kept
    dev_fraction: float = 0.05   # share of documents held out for model selection
    test_fraction: float = 0.1   # share of documents held out for the synthetic test set
    seed: int = 0                # changes which documents are held out


def _norm(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def filter_queries(queries: list[dict], cfg: FilterConfig) -> tuple[list[dict], dict[str, int]]:
    """Kept queries, and for each filter how many it dropped (in the order they are applied)."""
    dropped = {"empty": 0, "too_short": 0, "too_long": 0, "duplicate": 0}
    seen, kept = set(), []
    for q in queries:
        n_words = len(q["text"].split())
        if n_words == 0:
            dropped["empty"] += 1
        elif n_words < cfg.min_words:
            dropped["too_short"] += 1
        elif n_words > cfg.max_words:
            dropped["too_long"] += 1
        elif cfg.dedup and _norm(q["text"]) in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(_norm(q["text"]))
            kept.append(q)
    return kept, dropped


def split_of(doc_key: str, cfg: FilterConfig) -> str:
    u = int(hashlib.sha256(f"{cfg.seed}\x00{doc_key}".encode()).hexdigest()[:12], 16) / 16**12
    if u < cfg.test_fraction:
        return "test"
    if u < cfg.test_fraction + cfg.dev_fraction:
        return "dev"
    return "train"


def split_pairs(queries: list[dict], doc_of: dict[str, str], cfg: FilterConfig) -> dict[str, list[dict]]:
    """Pairs per split, assigned by the passage's document (source + doc_id)."""
    if min(cfg.dev_fraction, cfg.test_fraction) < 0 or cfg.dev_fraction + cfg.test_fraction >= 1:
        raise EmbedtuneError("filter.dev_fraction and filter.test_fraction must be >= 0 with a sum below 1")
    splits = {s: [] for s in SPLITS}
    for q in queries:
        doc = doc_of.get(q["passage_id"])
        if doc is None:
            raise EmbedtuneError(f"query {q['query_id']} names passage {q['passage_id']}, which is not in "
                                 "passages/: rerun generate after prepare (force=true)")
        splits[split_of(doc, cfg)].append({"query_id": q["query_id"], "query": q["text"],
                                           "passage_id": q["passage_id"]})
    return splits


def write_splits(splits: dict[str, list[dict]], out_dir: Path) -> None:
    import pyarrow as pa

    schema = pa.schema([(c, pa.string()) for c in PAIR_COLUMNS])
    for name, rows in splits.items():
        write_parquet(rows, Path(out_dir) / f"{name}.parquet", schema=schema)
