"""Top-k inner-product search over a corpus's vectors: exact (block by block, on the GPU when there is one) or
approximate with faiss (IVF or HNSW, fp16 codes), some rows excluded (held-out documents).

An approximate index is built once per model fingerprint and corpus and kept in the embedding cache's folder;
`recall_against_exact` measures what it misses on a sample of queries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import torch
from tqdm import tqdm

from embedtune.distributed import local_rank
from embedtune.embedding_cache import CorpusVectors
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path
from embedtune.manifest import not_in_key
from embedtune.store import build_lock

SEARCH_BLOCK = 16_384   # corpus rows scored at once by exact search
QUERY_BLOCK = 2_048     # queries scored at once
Vectors = Union[CorpusVectors, torch.Tensor, np.ndarray]


@dataclass
class IndexConfig:
    index: str = "auto"               # auto (exact on a GPU or below ann_min_passages, else ivf) | exact | ivf | hnsw
    ann_min_passages: int = 250_000   # auto switches from exact search to IVF at this many passages (CPU only)
    ivf_lists: Optional[int] = None   # IVF cells (null: sqrt(passages), at most passages / 39)
    ivf_probe: Optional[int] = None   # IVF cells searched per query (null: an eighth of the cells; more: higher
                                      # recall, slower)
    ivf_refine: int = 8               # IVF: top_k x this candidates (4-bit PQ scores) re-scored with fp16 vectors
    hnsw_m: int = 32                  # HNSW links per node
    hnsw_ef_construction: int = 80    # HNSW candidate list while building
    hnsw_ef_search: int = 128         # HNSW candidate list while searching (at least top_k)
    recall_sample: int = not_in_key(1000)  # queries whose ANN results are checked against exact search
    seed: int = 0                     # IVF training sample and the recall sample


def index_kind(cfg: IndexConfig, passages: int) -> str:
    """auto: exact search on a GPU (20,000 queries against 1M passages in under a second on an H200:
    bench/results/gpu_search.md) or below ann_min_passages; IVF on CPUs above it."""
    if cfg.index == "auto":
        return "exact" if torch.cuda.is_available() or passages < cfg.ann_min_passages else "ivf"
    return cfg.index


def _device() -> torch.device:
    if torch.cuda.is_available():  # the process's own GPU, as model.on_device picks it
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def _blocks(vectors: Vectors, size: int) -> Iterator[tuple[int, np.ndarray | torch.Tensor]]:
    if isinstance(vectors, CorpusVectors):
        yield from vectors.blocks(size)
    else:
        for start in range(0, len(vectors), size):
            yield start, vectors[start:start + size]


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def exact_topk(queries: torch.Tensor | np.ndarray, vectors: Vectors, k: int,
               allowed: Optional[np.ndarray] = None, desc: str = "exact search") -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, rows), each [queries, k'] with k' = min(k, allowed rows), best first: every corpus block is read
    once and scored against every query (on the GPU when there is one), keeping a running top-k there."""
    device = _device()
    queries = _as_tensor(queries).float().to(device)
    n = len(vectors)
    k = min(k, n if allowed is None else int(allowed.sum()))
    best_s = torch.full((len(queries), k), -math.inf, device=device)
    best_i = torch.full((len(queries), k), -1, dtype=torch.long, device=device)
    if k == 0 or len(queries) == 0:
        return best_s.cpu(), best_i.cpu()
    with tqdm(total=n, desc=desc, unit="passage", leave=False, mininterval=1.0) as bar:
        for start, block in _blocks(vectors, SEARCH_BLOCK):
            block = _as_tensor(block).to(device).float()
            mask = None if allowed is None else torch.from_numpy(~allowed[start:start + len(block)]).to(device)
            for q in range(0, len(queries), QUERY_BLOCK):
                scores = queries[q:q + QUERY_BLOCK] @ block.T
                if mask is not None:
                    scores[:, mask] = -math.inf
                top_s, top_i = scores.topk(min(k, len(block)), dim=1)
                merged_s = torch.cat([best_s[q:q + QUERY_BLOCK], top_s], dim=1)
                merged_i = torch.cat([best_i[q:q + QUERY_BLOCK], top_i + start], dim=1)
                keep_s, at = merged_s.topk(k, dim=1)
                best_s[q:q + QUERY_BLOCK], best_i[q:q + QUERY_BLOCK] = keep_s, merged_i.gather(1, at)
            bar.update(len(block))
    return best_s.cpu(), best_i.cpu()


def standing_of_rows(queries: torch.Tensor, vectors: Vectors, rows: torch.Tensor,
                     twin_cosine: Optional[float] = None) -> tuple[list[int], list[float]]:
    """For query i and its own row rows[i]: (rank, gap). rank = 1 + the rows scoring strictly higher; gap = the
    best score of any other row minus the own row's (<= 0: nothing beats it). With `twin_cosine`, rows whose
    vector has at least this cosine with the own row's (near-duplicates of it) count for neither."""
    device = _device()
    queries = _as_tensor(queries).float().to(device)
    rows = rows.to(device)
    own_vectors = _as_tensor(take_vectors(vectors, rows.cpu().numpy())).float().to(device)
    own = (queries * own_vectors).sum(-1, keepdim=True)
    above = torch.zeros(len(queries), dtype=torch.long, device=device)
    best = torch.full((len(queries),), -math.inf, device=device)
    for start, block in _blocks(vectors, SEARCH_BLOCK):
        block = _as_tensor(block).to(device).float()
        for q in range(0, len(queries), QUERY_BLOCK):
            part = slice(q, q + QUERY_BLOCK)
            scores = queries[part] @ block.T
            others = torch.ones_like(scores, dtype=torch.bool)
            local = rows[part] - start
            inside = ((local >= 0) & (local < len(block))).nonzero().squeeze(1)
            others[inside, local[inside]] = False
            if twin_cosine is not None:
                others &= (own_vectors[part] @ block.T) < twin_cosine
            # 1e-6: the own row's matmul score may differ from `own` in the last bits; it must not outrank itself
            above[part] += ((scores > own[part] + 1e-6) & others).sum(1)
            best[part] = torch.maximum(best[part], scores.masked_fill(~others, -math.inf).max(1).values)
    gap = (best - own.squeeze(1)).clamp(min=-2.0)  # -2: no other row counted (cosines lie in [-1, 1])
    return (above + 1).cpu().tolist(), gap.cpu().tolist()


def take_vectors(vectors: Vectors, rows: np.ndarray) -> np.ndarray | torch.Tensor:
    """Vectors of some rows."""
    if isinstance(vectors, CorpusVectors):
        return vectors.take(rows)
    if isinstance(vectors, torch.Tensor):
        return vectors[torch.as_tensor(np.asarray(rows), dtype=torch.long)]
    return vectors[np.asarray(rows)]


# ---------------------------------------------------------------- approximate (faiss)

def _faiss():
    try:
        import faiss
    except ImportError as e:
        raise EmbedtuneError("mining.index=ivf/hnsw needs faiss: pip install faiss-cpu") from e
    return faiss


def ivf_lists(cfg: IndexConfig, n: int) -> int:
    lists = cfg.ivf_lists or int(math.sqrt(n))
    return max(1, min(lists, n // 39))  # faiss wants 39+ training points per cell


def ivf_probe(cfg: IndexConfig, n: int) -> int:
    return cfg.ivf_probe or max(1, ivf_lists(cfg, n) // 8)


def _pq_codes(dim: int) -> Optional[int]:
    """4-bit PQ sub-quantizers for fast-scan: one per 2 dimensions (None: an odd dimension, fp16 codes only)."""
    return dim // 2 if dim % 2 == 0 else None


def index_name(kind: str, cfg: IndexConfig, n: int, dim: int) -> str:
    if kind == "ivf":
        codes = f"pq{_pq_codes(dim)}x4fs-refine-fp16" if _pq_codes(dim) else "fp16"
        return f"ivf{ivf_lists(cfg, n)}-{codes}-seed{cfg.seed}"
    return f"hnsw{cfg.hnsw_m}-ef{cfg.hnsw_ef_construction}-fp16"


def _dim(vectors: Vectors) -> int:
    return vectors.dim if isinstance(vectors, CorpusVectors) else vectors.shape[1]


def build_index(kind: str, vectors: Vectors, cfg: IndexConfig):
    """A faiss index over every row, added block by block. IVF: cells from k-means on a seeded sample of 64 rows
    per cell, each row as a 4-bit product-quantized code (scanned with SIMD "fast scan") plus its fp16 vector,
    which re-scores the best top_k x ivf_refine candidates. HNSW: a graph over fp16 vectors."""
    faiss = _faiss()
    n, dim = len(vectors), _dim(vectors)
    fp16 = faiss.ScalarQuantizer.QT_fp16
    if kind == "ivf":
        lists, codes = ivf_lists(cfg, n), _pq_codes(dim)
        spec = f"IVF{lists},PQ{codes}x4fsr,Refine(SQfp16)" if codes else f"IVF{lists},SQfp16"
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        sample = np.sort(np.random.default_rng(cfg.seed).choice(n, size=min(n, 64 * lists), replace=False))
        index.train(np.ascontiguousarray(take_vectors(vectors, sample), dtype=np.float32))
    elif kind == "hnsw":
        index = faiss.IndexHNSWSQ(dim, fp16, cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = cfg.hnsw_ef_construction
        index.train(np.ascontiguousarray(take_vectors(vectors, np.arange(min(n, 10_000))), dtype=np.float32))
    else:
        raise EmbedtuneError(f"mining.index={kind} is not one of auto, exact, ivf, hnsw")
    with tqdm(total=n, desc=f"{kind} index", unit="passage", leave=False, mininterval=1.0) as bar:
        for _, block in _blocks(vectors, SEARCH_BLOCK):
            index.add(np.ascontiguousarray(block, dtype=np.float32))
            bar.update(len(block))
    return index


def cached_index(kind: str, vectors: Vectors, cfg: IndexConfig, path: Path):
    """The index at `path` (its name carries the settings, its folder the model and corpus), built first if it
    is not there; one process per node builds it while the others wait."""
    faiss = _faiss()
    path = Path(path)
    with build_lock(path):
        if not path.exists():
            index = build_index(kind, vectors, cfg)
            with atomic_path(path) as tmp:
                faiss.write_index(index, str(tmp))
            return index
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP)  # ranks of a node share the file's pages


class AnnSearch:
    """Search an IVF or HNSW index on the CPU, never returning excluded rows (a faiss ID selector).

    faiss's GPU indexes are not used: they take no ID selector, and the fast-scan + re-scoring index has no
    GPU form; on a GPU, `auto` searches exactly instead (torch), which is faster there."""

    def __init__(self, kind: str, index, cfg: IndexConfig, allowed: Optional[np.ndarray]):
        faiss = _faiss()
        self.kind, self.index, self.cfg, self.allowed = kind, index, cfg, allowed
        self._bits = None if allowed is None else np.packbits(allowed, bitorder="little")
        selector = None if allowed is None else faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(self._bits))
        if kind == "hnsw":
            self.params = faiss.SearchParametersHNSW(sel=selector, efSearch=cfg.hnsw_ef_search)
        else:
            base = faiss.SearchParametersIVF(sel=selector, nprobe=ivf_probe(cfg, index.ntotal))
            refining = isinstance(index, faiss.IndexRefine)
            self.params = faiss.IndexRefineSearchParameters(k_factor=cfg.ivf_refine, base_index_params=base) \
                if refining else base

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        k = min(k, self.index.ntotal if self.allowed is None else int(self.allowed.sum()))
        scores, rows = self.index.search(queries, k, params=self.params)
        return torch.from_numpy(scores), torch.from_numpy(rows).long()


class Searcher:
    """Top-k over a corpus's vectors by the configured kind (exact, ivf, hnsw; auto by corpus size), never
    returning a row outside `allowed`. ANN indexes are cached at `index_folder/<kind and settings>.faiss`."""

    def __init__(self, vectors: Vectors, cfg: IndexConfig, allowed: Optional[np.ndarray] = None,
                 index_folder: Optional[Path] = None):
        self.vectors, self.cfg, self.allowed = vectors, cfg, allowed
        self.kind = index_kind(cfg, len(vectors))
        self.ann = None
        if self.kind != "exact":
            if index_folder is None:
                index = build_index(self.kind, vectors, cfg)
            else:
                name = index_name(self.kind, cfg, len(vectors), _dim(vectors))
                index = cached_index(self.kind, vectors, cfg, Path(index_folder) / f"{name}.faiss")
            self.ann = AnnSearch(self.kind, index, cfg, allowed)

    def describe(self) -> str:
        if self.kind == "ivf":
            n = len(self.vectors)
            return (f"IVF index ({ivf_lists(self.cfg, n):,} lists, {ivf_probe(self.cfg, n):,} probed, "
                    f"{self.cfg.ivf_refine} x top_k re-scored in fp16)")
        if self.kind == "hnsw":
            return f"HNSW index (M {self.cfg.hnsw_m}, efSearch {self.cfg.hnsw_ef_search}, fp16)"
        return "exact search"

    def search(self, queries: torch.Tensor | np.ndarray, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ann is not None:
            return self.ann.search(queries, k)
        return exact_topk(queries, self.vectors, k, self.allowed)

    def recall(self, queries: Vectors, k: int) -> Optional[dict]:
        """recall@k of this search against exact search on a seeded sample of `queries` (None when exact)."""
        if self.ann is None or not len(queries):
            return None
        n = min(self.cfg.recall_sample, len(queries))
        sample = np.sort(np.random.default_rng(self.cfg.seed).choice(len(queries), size=n, replace=False))
        chosen = _as_tensor(take_vectors(queries, sample)).float()
        found = self.search(chosen, k)[1]
        exact = exact_topk(chosen, self.vectors, k, self.allowed, desc="recall check")[1]
        return {"index": self.describe(), "k": k, "sample": n, "recall": recall_against_exact(found, exact)}


def recall_against_exact(found: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean over queries of |found ∩ exact| / |exact| (rows of -1 do not count)."""
    hits, total = 0, 0
    for f, e in zip(found.tolist(), exact.tolist()):
        truth = {r for r in e if r >= 0}
        hits += len(truth & set(f))
        total += len(truth)
    return hits / total if total else 1.0
