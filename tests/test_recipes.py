"""The decoder recipes (conf/model/qwen3-embedding-*, llama-bidirectional, smollm2; conf/experiment/llm8b_zero3):
what they compose to, and the 8B recipe's CPU form trained on a tiny Qwen3 (same settings, tiny sizes)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from helpers import compose_config, memorisable_data

from embedtune.model import Encoder
from embedtune.pipeline import train_job
from embedtune.train import run_training

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("size", ["0.6b", "4b", "8b"])
def test_qwen3_embedding_recipes(size):
    cfg = compose_config(f"model=qwen3-embedding-{size}")
    model = cfg.model
    assert model.name == f"Qwen/Qwen3-Embedding-{size.upper()}"
    assert (model.pooling, model.padding_side, model.attention) == ("last", "left", "auto")
    assert model.query_prefix.format(task=model.task).startswith("Instruct: Given a web search query")
    assert model.passage_prefix == ""


def test_bidirectional_llama_recipe():
    model = compose_config("model=llama-bidirectional").model
    assert (model.attention, model.pooling, model.pool_prefix) == ("bidirectional", "mean", False)
    assert (model.query_prefix, model.passage_prefix) == ("query: ", "passage: ")


def test_llm8b_experiment_composes_zero3_lora_gradient_caching():
    cfg = compose_config("experiment=llm8b_zero3")
    assert cfg.model.name == "Qwen/Qwen3-Embedding-8B" and cfg.model.pooling == "last"
    assert cfg.peft.enabled and cfg.peft.target_modules is None  # every attention and MLP projection
    t = cfg.train
    assert (t.batch_size, t.grad_cache, t.gradient_checkpointing, t.mixed_precision) == (4096, True, True, "bf16")


def test_llm8b_experiment_cpu_form_trains_a_tiny_qwen3(tiny_qwen3_dir, tmp_path):
    """The recipe as composed, with only sizes, precision and the model swapped for CPU: LoRA on every
    projection, gradient caching in chunks, activation checkpointing, last-token pooling of left-padded
    texts with the Qwen3 instruction; the loss falls and the saved encoder keeps the recipe's settings."""
    cfg = compose_config("experiment=llm8b_zero3", f"model.name={tiny_qwen3_dir}", "train.batch_size=8",
                         "train.chunk_size=3", "train.max_steps=12", "train.mixed_precision=no", "train.lr=3e-3",
                         "train.hard_negatives=0", "train.save_every=null", "train.log_every=1",
                         "train.warmup_ratio=0.1", "logger=none")
    job = train_job(cfg)
    data = memorisable_data(**dataclasses.asdict(cfg.train))
    result = run_training(job, data, tmp_path / "ckpt")
    assert result.steps == 12 and not result.halted
    losses = [json.loads(line)["train/loss"] for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    first, last = losses[0], losses[-1]
    assert last < first, (first, last)
    encoder = Encoder.load(None, path=str(tmp_path / "ckpt" / result.final / "encoder"))
    assert encoder.pooling == "last" and encoder.tokenizer.padding_side == "left"
    assert encoder.prefix("query").startswith("Instruct: Given a web search query")
    assert not any("lora" in n for n, _ in encoder.named_parameters())  # adapters merged into the weights
    with torch.no_grad():
        q = encoder(encoder.tokenize(["cat"], "query"))
    assert q.shape == (1, 32) and torch.isfinite(q).all()
