"""Baselines users already have (eval.baselines): any sentence-transformers model (local folder, built-in
alias or hub id) or any OpenAI-compatible embeddings endpoint (hosted APIs, `embedtune serve`), evaluated
on the same sets with the same metrics as base and tuned. Their vectors are cached under the run folder by
(baseline, text), so a re-evaluation sends nothing twice: a paid API is paid once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from embedtune.assets import folder_digest, resolve_model
from embedtune.distributed import is_main
from embedtune.embedding_cache import EmbeddingCache
from embedtune.endpoint import EndpointEncoder
from embedtune.errors import EmbedtuneError
from embedtune.io import read_json, write_json
from embedtune.manifest import fingerprint, not_in_key

RESERVED = ("base", "tuned", "merged", "bm25", "previous")  # the rows eval makes itself


@dataclass
class BaselineConfig:
    name: str = ""                    # the row's label in the report
    model: str = ""                   # a sentence-transformers model (folder, alias or hub id), or with url the
                                      # `model` sent to the endpoint (e.g. text-embedding-3-small)
    url: str = ""                     # an OpenAI-compatible endpoint's base (http://127.0.0.1:8000/v1); empty:
                                      # `model` runs here
    input_type: bool = False          # send NIM's input_type (query | passage) and truncate=END (long texts cut as
                                      # eval cuts them): embedtune serve and NIM read both
    query_prompt: Optional[str] = None  # prepended to every query (null: none, or a local model's own query prompt)
    passage_prompt: Optional[str] = None  # prepended to every passage (null: none, or a local model's own)
    dimensions: int = 0               # ask the endpoint for this many dimensions (0: the model's own)
    normalize: bool = True            # cosine similarity (false: dot product of the vectors as returned)
    api_key_env: str = not_in_key("")  # NAME of the environment variable holding the endpoint's key
    price_per_million_tokens: float = not_in_key(0.0)  # what the endpoint bills per 1M tokens (0: not costed)
    batch_size: int = not_in_key(64)  # texts per request (per encoding batch for a local model)
    concurrency: int = not_in_key(8)  # requests in flight at once
    max_retries: int = not_in_key(6)  # retries on 429/5xx/timeouts/malformed bodies
    timeout_s: float = not_in_key(120.0)  # per request
    backoff_s: float = not_in_key(1.0)  # first retry delay, doubled each retry (with jitter)
    backoff_max_s: float = not_in_key(30.0)  # longest retry delay


class LocalBaseline:
    """A sentence-transformers model run here, with its own prompts unless the baseline names others."""

    def __init__(self, cfg: BaselineConfig):
        from sentence_transformers import SentenceTransformer

        self.cfg = cfg
        self.model = SentenceTransformer(resolve_model(cfg.model).path,
                                         device="cuda" if torch.cuda.is_available() else "cpu")
        own = self.model.prompts or {}
        self.prompts = {"query": cfg.query_prompt if cfg.query_prompt is not None else own.get("query", ""),
                        "passage": cfg.passage_prompt if cfg.passage_prompt is not None
                        else own.get("passage", own.get("document", ""))}
        self.texts_sent = self.tokens_sent = 0  # nothing leaves the machine
        self.served_models: set[str] = set()

    def encode_texts(self, texts: list[str], kind: str, batch_size: int = 0, desc: str = "encode") -> torch.Tensor:
        vectors = self.model.encode(texts, prompt=self.prompts[kind] or None, batch_size=self.cfg.batch_size,
                                    convert_to_tensor=True, show_progress_bar=len(texts) > 1000).float().cpu()
        return torch.nn.functional.normalize(vectors, dim=-1) if self.cfg.normalize else vectors


def baseline_encoder(cfg: BaselineConfig) -> EndpointEncoder | LocalBaseline:
    return EndpointEncoder(cfg) if cfg.url else LocalBaseline(cfg)


def baseline_cache(cache_root: Path, cfg: BaselineConfig) -> EmbeddingCache:
    """The cache of one baseline's vectors: keyed by what changes them (endpoint, model, prompts, dimensions,
    normalisation; a local folder by its content), not by the row's name."""
    what = {k: getattr(cfg, k) for k in ("url", "model", "input_type", "query_prompt", "passage_prompt",
                                         "dimensions", "normalize")}
    local = Path(cfg.model).expanduser()
    if not cfg.url and local.is_dir():
        what["model"] = folder_digest(local)
    return EmbeddingCache(cache_root, "baseline:" + fingerprint(what))


def check_served_model(cfg: BaselineConfig, cache: EmbeddingCache, encoder) -> None:
    """The model an endpoint's responses name (embedtune serve: a hash of the weights) must be the one its
    cached vectors came from: otherwise the row would score two models as one."""
    seen = sorted(encoder.served_models - {""})
    record = cache.folder / "served_model.json"
    before = read_json(record)["served_models"] if record.exists() else seen
    if len(seen) > 1 or (seen and seen != before):
        raise EmbedtuneError(f"eval.baselines {cfg.name}: {cfg.url} answered as {', '.join(seen)}, but its cached vectors "
                             f"came from {', '.join(before)}: the model behind the endpoint changed. Delete {cache.folder} "
                             "to evaluate the new one from scratch")
    if seen and not record.exists() and is_main():
        write_json({"served_models": seen}, record)


def spend_line(cfg: BaselineConfig, encoder) -> dict:
    """What evaluating one baseline sent: texts (those not already cached), tokens, and their cost."""
    cost = encoder.tokens_sent * cfg.price_per_million_tokens / 1e6 if cfg.price_per_million_tokens else None
    return {"baseline": cfg.name, "where": cfg.url or "local", "texts_sent": encoder.texts_sent,
            "tokens_sent": encoder.tokens_sent, "cost_usd": cost, "served_models": sorted(encoder.served_models - {""})}


def spend_table(rows: list[dict]) -> str:
    lines = ["| baseline | where | texts sent | tokens sent | cost | served model |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for r in rows:
        cost = "not priced" if r["cost_usd"] is None else f"${r['cost_usd']:.4f}"
        lines.append(f"| {r['baseline']} | {r['where']} | {r['texts_sent']:,} | {r['tokens_sent']:,} | {cost} | "
                     f"{', '.join(r['served_models']) or '-'} |")
    return "\n".join(lines) + "\n"
