"""mine: hard negatives from the base model, aware of the positive.

For each training query, candidates are the top-k passages by the base model. The positive and other
passages of its document are removed; so is any candidate scoring above `margin x positive score`
(NV-Retriever's rule: such passages are often unlabelled positives). The first `num_negatives` remaining
after `skip_top` are kept, or, with `sample_ranks: [a, b]`, `num_negatives` drawn at random (seeded per
query) from the remaining candidates ranked a..b-1 (less uniformly hard, more varied negatives).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from embedtune.errors import EmbedtuneError
from embedtune.manifest import not_in_key


@dataclass
class MiningConfig:
    top_k: int = 50                  # candidates retrieved per query
    num_negatives: int = 3           # hard negatives kept per query (0: in-batch negatives only)
    skip_top: int = 0                # ignore this many best candidates after filtering
    margin: Optional[float] = 0.95   # drop candidates scoring above margin x positive score (null: keep)
    sample_ranks: Optional[list[int]] = None  # [a, b]: sample num_negatives from filtered ranks a..b-1
    seed: int = 0                    # sampling seed (with sample_ranks)
    index: str = "auto"              # exact search: auto (faiss when installed, else torch) | torch | faiss
    batch_size: int = not_in_key(32)  # texts per encoding batch (small batches of length-sorted texts are fastest on CPU: bench/encode.py)


def search(queries: torch.Tensor, passages: torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner-product search in query chunks: (scores, indices), each [n_queries, k]."""
    k = min(k, passages.shape[0])
    scores, indices = [], []
    for start in tqdm(range(0, queries.shape[0], chunk), desc="search", unit="chunk", leave=False):
        s, i = (queries[start:start + chunk] @ passages.T).topk(k, dim=1)
        scores.append(s)
        indices.append(i)
    if not scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)


def search_faiss(queries: torch.Tensor, passages: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same exact inner-product top-k as `search`, through faiss (IndexFlatIP: multi-threaded BLAS)."""
    import faiss

    k = min(k, passages.shape[0])
    index = faiss.IndexFlatIP(passages.shape[1])
    index.add(passages.float().contiguous().numpy())
    scores, indices = index.search(queries.float().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


def exact_search(queries: torch.Tensor, passages: torch.Tensor, k: int, index: str = "auto"):
    """Top-k by inner product with the chosen index (auto: faiss when it is installed)."""
    if index != "torch":
        import importlib.util

        if importlib.util.find_spec("faiss") is not None:
            return search_faiss(queries, passages, k)
        if index == "faiss":
            raise EmbedtuneError("mining.index=faiss needs the faiss-cpu (or faiss-gpu) package: "
                                 "pip install 'embedtune[faiss]'")
    return search(queries, passages, k)


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


def mine_hard_negatives(pairs: list[dict], passages: list[dict], query_emb: torch.Tensor,
                        passage_emb: torch.Tensor, cfg: MiningConfig,
                        held_out: frozenset = frozenset()) -> list[dict]:
    """Rows of negatives/train.parquet for `pairs`, given embeddings of their queries and of all passages.
    Passages of `held_out` documents ((source, doc_id): the dev/test split) are never chosen as negatives,
    so no held-out passage's text reaches training."""
    row_of = {p["id"]: n for n, p in enumerate(passages)}
    by_doc: dict[tuple[str, str], set[int]] = {}
    for n, p in enumerate(passages):
        by_doc.setdefault((p["source"], p["doc_id"]), set()).add(n)
    missing = [q["passage_id"] for q in pairs if q["passage_id"] not in row_of]
    if missing:
        raise EmbedtuneError(f"{len(missing)} training pairs name passages that are not in passages/ "
                             f"(e.g. {missing[0]}): rerun the pipeline from generate with force=true")
    excluded = {n for doc in held_out for n in by_doc.get(doc, ())}
    positives = torch.tensor([row_of[q["passage_id"]] for q in pairs], dtype=torch.long)
    positive_scores = (query_emb * passage_emb[positives]).sum(-1)
    allowed = torch.tensor([n for n in range(len(passages)) if n not in excluded], dtype=torch.long)
    scores, found = exact_search(query_emb, passage_emb[allowed], cfg.top_k + 1, cfg.index)
    indices = allowed[found]  # back to rows of `passages`
    rows = []
    for n, q in enumerate(pairs):
        pos = int(positives[n])
        p = passages[pos]
        neg_idx, neg_scores = select_negatives(pos, float(positive_scores[n]), indices[n].tolist(),
                                               scores[n].tolist(), by_doc[(p["source"], p["doc_id"])], cfg,
                                               key=q["query_id"])
        rows.append({"query_id": q["query_id"], "passage_id": q["passage_id"],
                     "positive_score": float(positive_scores[n]),
                     "negative_ids": [passages[i]["id"] for i in neg_idx], "negative_scores": neg_scores})
    return rows
