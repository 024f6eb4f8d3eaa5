"""export: a sentence-transformers folder (LoRA already merged), checked against the trained encoder."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from embedtune.errors import EmbedtuneError
from embedtune.model import Encoder


@dataclass
class ExportConfig:
    max_abs_diff: float = 1e-4        # export fails if its embeddings differ more from the trained encoder's
    onnx: bool = True                 # also onnx/sentence_embedding.onnx (needs the onnx + onnxruntime packages)
    merge_alpha: Optional[str] = None  # export alpha x tuned + (1 - alpha) x base weights (WiSE-FT): a number in
                                      # [0, 1], auto (the best of merge.GRID on the synthetic dev queries) or null
    promote: str = "gate"             # gate: model/ keeps the previous version when eval found the new one
                                      # significantly worse on a judged set (version_history.py) | always
    dataset: bool = False             # also dataset/: the training pairs with their texts (and teacher scores) as
                                      # a Hugging Face dataset folder with a dataset card


class _Embedder(torch.nn.Module):
    """input_ids, attention_mask -> sentence embedding (pooling and normalisation inside the graph)."""

    def __init__(self, encoder: Encoder):
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder({"input_ids": input_ids, "attention_mask": attention_mask})


def export_onnx(encoder: Encoder, path: Path, sample_texts: list[str], external_data: Optional[bool] = None) -> float:
    """Write an ONNX graph of the whole embedder (dynamic batch and length) and return the largest absolute
    difference between onnxruntime's embeddings and the encoder's on `sample_texts`."""
    try:
        import onnxruntime
    except ImportError as e:
        raise EmbedtuneError("export.onnx=true needs onnx and onnxruntime: pip install onnx onnxruntime "
                             "(or export.onnx=false)") from e
    if not encoder.cfg.pool_prefix:
        raise EmbedtuneError("export.onnx: the graph takes input_ids and attention_mask only, so it cannot leave the "
                             "prompt out of mean pooling (model.pool_prefix=false); set export.onnx=false")
    encoder = encoder.eval()
    batch = encoder.tokenize(sample_texts, "passage")
    inputs = (batch["input_ids"], batch["attention_mask"])
    path.parent.mkdir(parents=True, exist_ok=True)
    # the torch.export-based exporter: the TorchScript one traced MiniLM's attention masks into constants
    # (embeddings off by ~0.07, even on the traced inputs)
    batch_dim, tokens_dim = torch.export.Dim("batch"), torch.export.Dim("tokens")
    shapes = {"input_ids": {0: batch_dim, 1: tokens_dim}, "attention_mask": {0: batch_dim, 1: tokens_dim}}
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(_Embedder(encoder), inputs, input_names=["input_ids", "attention_mask"],
                                    output_names=["sentence_embedding"], dynamo=True, dynamic_shapes=shapes,
                                    verbose=False)
    # weights as external data beside the graph (<name>.data) when over protobuf's 2 GB limit (None: torch
    # decides), which onnxruntime finds from the graph's path
    program.save(str(path), external_data=external_data)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    # the traced batch, and one text alone (another length, no padding): a shape or mask decision traced
    # into a constant shows up as a difference on the second
    for check in (batch, encoder.tokenize(sample_texts[-1:], "passage")):
        feed = {"input_ids": check["input_ids"].numpy(), "attention_mask": check["attention_mask"].numpy()}
        (theirs,) = session.run(None, feed)
        with torch.no_grad():
            ours = _Embedder(encoder)(check["input_ids"], check["attention_mask"])
        worst = max(worst, float((ours - torch.from_numpy(theirs)).abs().max()))
    return worst


def build_sentence_transformer(encoder_dir: Path, encoder: Encoder):
    """The sentence-transformers modules of the saved encoder: its tokenizer (padding side, EOS appending and
    all), pooling, normalisation, and the query/passage prefixes as prompts (left out of mean pooling where
    model.pool_prefix=false, sentence-transformers' include_prompt=False)."""
    from sentence_transformers import SentenceTransformer, models

    cfg = encoder.cfg
    word = models.Transformer(str(encoder_dir), max_seq_length=cfg.passage_max_length)
    mode = {"mean": "mean", "cls": "cls", "last": "lasttoken"}[encoder.pooling]
    pool = models.Pooling(word.get_embedding_dimension(), pooling_mode=mode, include_prompt=cfg.pool_prefix)
    modules = [word, pool] + ([models.Normalize()] if cfg.normalize else [])
    prompts = {"query": encoder.prefix("query"), "passage": encoder.prefix("passage")}
    return SentenceTransformer(modules=modules, prompts=prompts, device="cpu")


def parity(encoder: Encoder, st_model, texts: list[str]) -> float:
    """Max abs difference between the trained encoder and the exported model on `texts`, as passages and as
    queries (each with its own prompt and length limit)."""
    worst = 0.0
    for kind, limit in (("passage", encoder.cfg.passage_max_length), ("query", encoder.cfg.query_max_length)):
        with torch.no_grad():
            ours = encoder.eval()(encoder.tokenize(texts, kind)).float()
        st_model.max_seq_length = limit
        theirs = st_model.encode(texts, prompt_name=kind, convert_to_tensor=True, batch_size=32).float().cpu()
        worst = max(worst, float((ours - theirs).abs().max()))
    st_model.max_seq_length = encoder.cfg.passage_max_length
    return worst


def _left_padding_hint(encoder: Encoder) -> str:
    if encoder.tokenizer.padding_side != "left":
        return ""
    return (": the tokenizer pads on the left, and sentence-transformers passes no position ids, which only "
            "rotary-position models (Llama, Qwen, Mistral, Gemma) do not need; try model.padding_side=right")


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
                             f"(> export.max_abs_diff={cfg.max_abs_diff}){_left_padding_hint(encoder)}; nothing was "
                             "written")
    result = {"max_abs_diff": diff, "texts_checked": len(sample_texts)}
    if cfg.onnx:
        onnx_diff = export_onnx(encoder, tmp / "onnx" / "sentence_embedding.onnx", sample_texts)
        if onnx_diff > cfg.max_abs_diff:
            shutil.rmtree(tmp, ignore_errors=True)
            raise EmbedtuneError(f"export: the ONNX graph's embeddings differ from the trained encoder's by "
                                 f"{onnx_diff:.2e} (> export.max_abs_diff={cfg.max_abs_diff}); nothing was written")
        result["onnx_max_abs_diff"] = onnx_diff
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return result
