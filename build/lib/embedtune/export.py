"""export: a sentence-transformers folder (LoRA already merged), checked against the trained encoder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from embedtune.errors import EmbedtuneError
from embedtune.model import Encoder


@dataclass
class ExportConfig:
    max_abs_diff: float = 1e-4        # export fails if its embeddings differ more from the trained encoder's


def build_sentence_transformer(encoder_dir: Path, encoder: Encoder):
    from sentence_transformers import SentenceTransformer, models

    cfg = encoder.cfg
    word = models.Transformer(str(encoder_dir), max_seq_length=cfg.passage_max_length)
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode=encoder.pooling)
    modules = [word, pool] + ([models.Normalize()] if cfg.normalize else [])
    prompts = {"query": cfg.query_prefix, "passage": cfg.passage_prefix}
    return SentenceTransformer(modules=modules, prompts=prompts, device="cpu")


def parity(encoder: Encoder, st_model, texts: list[str]) -> float:
    """Max abs difference between the trained encoder and the exported model on `texts` (as passages)."""
    with torch.no_grad():
        ours = encoder.eval()(encoder.tokenize(texts, "passage")).float()
    theirs = st_model.encode(texts, prompt_name="passage", convert_to_tensor=True, batch_size=32).float().cpu()
    return float((ours - theirs).abs().max())


def export_model(encoder_dir: Path, out_dir: Path, sample_texts: list[str], cfg: ExportConfig,
                 card: str) -> dict:
    encoder = Encoder.load(None, path=str(encoder_dir))
    st_model = build_sentence_transformer(encoder_dir, encoder)
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    st_model.save(str(tmp))
    (tmp / "README.md").write_text(card, encoding="utf-8")
    from sentence_transformers import SentenceTransformer

    reloaded = SentenceTransformer(str(tmp), device="cpu")
    diff = parity(encoder, reloaded, sample_texts)
    if diff > cfg.max_abs_diff:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EmbedtuneError(f"export: the exported model differs from the trained encoder by {diff:.2e} "
                             f"(> export.max_abs_diff={cfg.max_abs_diff}); nothing was written")
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return {"max_abs_diff": diff, "texts_checked": len(sample_texts)}
