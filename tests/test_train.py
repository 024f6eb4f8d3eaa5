"""train.py: deterministic batches, the LR schedule, and short real runs of the loop on the tiny BERT."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from embedtune.encode import encode
from embedtune.errors import EmbedtuneError
from embedtune.loss import passage_hash
from embedtune.model import Encoder, ModelConfig, PeftConfig
from embedtune.tracking import read_metrics
from embedtune.train import TrainConfig, TrainData, lr_lambda

from helpers import PASSAGES, WORDS, train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def toy_data(n: int = 10, negatives: int = 3, **cfg) -> TrainData:
    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}",
             "negative_ids": [f"p{(i + k) % n}" for k in range(1, negatives + 1)]} for i in range(n)]
    queries = {f"q{i}": f"query {i}" for i in range(n)}
    passages = {f"p{i}": f"passage {i}" for i in range(n)}
    return TrainData(rows, queries, passages, TrainConfig(**{"batch_size": 3, **cfg}))


# ---------------------------------------------------------------- TrainData

def test_batch_is_a_pure_function_of_seed_and_step():
    a, b = toy_data(seed=7), toy_data(seed=7)
    steps = [5, 0, 3, 9, 1]
    first = {s: a.batch(s) for s in steps}
    second = {s: b.batch(s) for s in reversed(steps)}  # another order, crossing epochs both ways
    for s in steps:
        assert first[s]["queries"] == second[s]["queries"]
        assert first[s]["candidates"] == second[s]["candidates"]
        assert torch.equal(first[s]["candidate_pids"], second[s]["candidate_pids"])
    other_seed = toy_data(seed=8)
    assert [other_seed.batch(s)["queries"] for s in range(4)] != [a.batch(s)["queries"] for s in range(4)]


def test_every_row_appears_once_per_epoch():
    data = toy_data(n=10, seed=3)
    assert data.steps_per_epoch == 4  # 3 + 3 + 3 + 1
    epochs = []
    for epoch in range(2):
        seen = [q for s in range(epoch * 4, epoch * 4 + 4) for q in data.batch(s)["queries"]]
        assert sorted(seen) == sorted(f"query {i}" for i in range(10))
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # reshuffled each epoch


def test_batch_candidates_are_positives_then_sampled_hard_negatives():
    data = toy_data(n=10, negatives=3, hard_negatives=2, seed=1)
    rows = {f"query {i}": i for i in range(10)}
    batch = data.batch(2)
    idx = [rows[q] for q in batch["queries"]]
    n = len(idx)
    assert batch["candidates"][:n] == [f"passage {i}" for i in idx]
    assert len(batch["candidates"]) == n + 2 * n
    for k, i in enumerate(idx):
        picked = batch["candidates"][n + 2 * k:n + 2 * k + 2]
        allowed = [f"passage {(i + j) % 10}" for j in range(1, 4)]
        assert all(p in allowed for p in picked) and len(set(picked)) == 2
        assert picked == [p for p in allowed if p in picked]  # kept in mined order
    assert batch["query_pids"].tolist() == [passage_hash(f"p{i}") for i in idx]
    assert batch["candidate_pids"][:n].tolist() == batch["query_pids"].tolist()


def test_total_steps_from_epochs_or_max_steps():
    assert toy_data(n=10, epochs=2.0).total_steps() == 8
    assert toy_data(n=10, epochs=0.5).total_steps() == 2
    assert toy_data(n=10, epochs=2.0, max_steps=5).total_steps() == 5


def test_no_rows_is_an_embedtune_error():
    with pytest.raises(EmbedtuneError, match="no training pairs"):
        TrainData([], {}, {}, TrainConfig())


# ---------------------------------------------------------------- lr_lambda

def test_lr_lambda_warms_up_linearly_then_decays_by_cosine_to_zero():
    f = lr_lambda(100, 0.1)
    warmup = [f(s) for s in range(10)]
    assert warmup == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.5)  # half way through the 90 decay steps
    assert f(10 + 90 * 0.25) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    decay = [f(s) for s in range(10, 100)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert f(99) < 1e-3
    assert f(100) == pytest.approx(0.0) and f(150) == pytest.approx(0.0)


def test_lr_lambda_without_warmup_starts_at_the_peak():
    f = lr_lambda(10, 0.0)
    assert f(0) == pytest.approx(1.0)
    assert f(9) < 0.05


# ---------------------------------------------------------------- run_training

@pytest.fixture(scope="module")
def full_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "checkpoints"
    return train(tiny_model_dir, out), out


def test_run_training_lowers_the_loss(full_run):
    result, out = full_run
    assert result["steps"] == 30 and result["pairs"] == 240 and result["final"] == "step-30"
    losses = [m["train/loss"] for m in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5


def test_run_training_writes_checkpoints_and_keeps_the_last_ones(full_run):
    _, out = full_run
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("step-")) == ["step-20", "step-30"]
    assert not list(out.glob(".step-*"))
    assert json.loads((out / "step-30" / "train_state.json").read_text())["step"] == 30
    assert (out / "step-30" / "state").is_dir()
    assert (out / "step-30" / "encoder" / "model.safetensors").exists()


def test_trained_encoder_retrieves_its_memorised_passages(full_run, tiny_model_dir):
    _, out = full_run

    def top1(encoder):
        scores = encode(encoder, WORDS, "query") @ encode(encoder, PASSAGES, "passage").T
        return scores.argmax(dim=1).tolist()

    trained = Encoder.load(None, path=str(out / "step-30" / "encoder"))
    base = Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="mean"))
    assert sum(a == b for a, b in zip(top1(trained), range(8))) >= 7
    assert sum(a == b for a, b in zip(top1(base), range(8))) <= 3  # the base model could not already do it


def test_run_training_with_peft_changes_only_lora_targets(tiny_model_dir, tmp_path):
    peft = PeftConfig(enabled=True, r=4, alpha=8, dropout=0.0, target_modules=["query", "value"])
    train(tiny_model_dir, tmp_path, peft=peft, max_steps=5, lr=1e-2, save_every=None)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    tuned = load_file(str(tmp_path / "step-5" / "encoder" / "model.safetensors"))  # LoRA merged on save
    assert set(base) == set(tuned)
    targets = {k for k in base if k.endswith(("query.weight", "value.weight"))}
    assert len(targets) == 4
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed == targets
