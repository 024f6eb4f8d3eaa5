"""Training at scale on this CPU: exact resume on 1 and 2 processes, uneven last batches on 2 processes,
launch configs that contradict train.* refused, metrics logged during training (W&B offline)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from helpers import REPO, accelerate_launch, weights
from embedtune.accel import _check_deepspeed_config, check_launch
from embedtune.errors import EmbedtuneError
from embedtune.train import TrainConfig

SCRIPT = str(REPO / "tests" / "dist_train.py")


def run(model, out, *flags, processes=1, env=None, launch_flags=()):
    args = [SCRIPT, "--model", str(model), "--out", str(out), *flags]
    if processes == 1 and not launch_flags:
        proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1", **(env or {})})
    else:
        proc = accelerate_launch([*launch_flags, *args], processes=processes, env=env)
    return proc


# one process resumes exactly in test_preemption (kill -9); 2 processes with gradient caching there too (SIGTERM)
@pytest.mark.slow
@pytest.mark.parametrize("processes", [2])
@pytest.mark.parametrize("flags", [["--lora", "--no-cache"]], ids=["lora"])
def test_halted_and_resumed_run_ends_with_the_same_weights(tmp_path, tiny_model_dir, processes, flags):
    """Dropout is on (the tiny BERT's 0.1): equal weights need model, optimizer, schedule, RNG and data
    position back. Stopped after step 3 of 6 (train.halt_at_step, as a time-limited job), then rerun."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    for out, extra in ((whole, []), (split, ["--halt", "3"]), (split, [])):
        proc = run(tiny_model_dir, out, "--steps", "6", *flags, *extra, processes=processes)
        assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((split / "step-3" / "train_state.json").read_text())
    assert first["step"] == 3 and first["key"] == "k"
    assert "train: resuming from" in proc.stdout + proc.stderr
    # every rank's RNG state is in the checkpoint (a slow rank once wrote it after rank 0 had renamed the folder)
    assert len(list((split / "step-3" / "state").glob("random_states_*.pkl"))) == processes
    assert "no RNG state" not in proc.stdout + proc.stderr
    a, b = weights(whole / "step-6"), weights(split / "step-6")
    assert set(a) == set(b)
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-6, f"resumed run differs by {diff:.2e}"
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    assert max(float((a[k] - base[k]).abs().max()) for k in a) > 1e-4  # training did move the weights


@pytest.mark.slow
def test_uneven_last_batches_do_not_hang_two_processes(tmp_path, tiny_model_dir):
    """11 pairs, batch 4, 2 processes: epochs of 10 pairs (4 + 4 + 2), ranks hold different numbers of
    candidates (0-2 hard negatives per pair), chunk 3 leaves one rank a stand-in forward."""
    proc = run(tiny_model_dir, tmp_path, "--rows", "11", "--batch", "4", "--epochs", "2", processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["processes"] == 2 and result["steps"] == 6 and result["pairs"] == 20


@pytest.mark.slow
def test_batch_not_divisible_by_processes_is_refused(tmp_path, tiny_model_dir):
    proc = run(tiny_model_dir, tmp_path, "--batch", "5", "--steps", "1", processes=2)
    assert proc.returncode != 0
    assert "train.batch_size=5 is not divisible by the 2 training processes" in proc.stderr


@pytest.mark.slow
def test_launch_precision_that_contradicts_train_config_is_refused(tmp_path, tiny_model_dir):
    proc = run(tiny_model_dir, tmp_path, "--steps", "1", launch_flags=["--mixed_precision", "bf16"])
    assert proc.returncode != 0
    assert "the launch config sets mixed_precision=bf16 but train.mixed_precision=no" in proc.stderr
    assert not (tmp_path / "step-1").exists()


@pytest.mark.slow
def test_launch_gradient_accumulation_is_refused(tmp_path, tiny_model_dir):
    proc = run(tiny_model_dir, tmp_path, "--steps", "1", env={"ACCELERATE_GRADIENT_ACCUMULATION_STEPS": "4"},
               launch_flags=["--mixed_precision", "no"])
    assert proc.returncode != 0
    assert "gradient_accumulation_steps=4" in proc.stderr and "train.grad_cache" in proc.stderr


def test_check_launch_accepts_agreeing_or_unset_settings():
    cfg = TrainConfig(mixed_precision="bf16", grad_clip=1.0)
    check_launch(cfg, {})
    check_launch(cfg, {"mixed_precision": "no", "gradient_accumulation_steps": "1", "gradient_clipping": "auto"})
    check_launch(cfg, {"mixed_precision": "bf16", "gradient_clipping": "1.0"})
    with pytest.raises(EmbedtuneError, match="mixed_precision=fp16 but train.mixed_precision=bf16"):
        check_launch(cfg, {"mixed_precision": "fp16"})
    with pytest.raises(EmbedtuneError, match="gradient_clipping=0.5 but train.grad_clip=1.0"):
        check_launch(cfg, {"gradient_clipping": "0.5"})


def test_deepspeed_config_is_checked_and_filled_from_train_config():
    cfg = TrainConfig(mixed_precision="bf16", grad_clip=2.0, batch_size=64)
    ds = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "bf16": {"enabled": "auto"},
          "train_micro_batch_size_per_gpu": 16, "zero_optimization": {"stage": 2}}
    _check_deepspeed_config(cfg, ds, 32)
    assert ds["gradient_accumulation_steps"] == 2 and ds["gradient_clipping"] == 2.0
    assert ds["train_micro_batch_size_per_gpu"] == 32 and ds["zero_optimization"] == {"stage": 2}
    for bad, message in (({"fp16": {"enabled": True}}, "fp16.enabled=True but train.mixed_precision=bf16"),
                         ({"bf16": {"enabled": False}}, "bf16.enabled=False"),
                         ({"gradient_accumulation_steps": 8}, "gradient_accumulation_steps=8"),
                         ({"gradient_clipping": 1.0}, "gradient_clipping=1.0 but train.grad_clip=2.0"),
                         ({"optimizer": {"type": "Adam"}}, "names an optimizer")):
        with pytest.raises(EmbedtuneError, match=message):
            _check_deepspeed_config(cfg, dict(bad), 32)


SECRET = "0123456789abcdef0123456789abcdef0do0not"  # 40 characters, the shape of a W&B key


@pytest.mark.slow
def test_metrics_reach_wandb_offline_with_dev_evaluation(tmp_path, tiny_model_dir):
    """2 processes, W&B offline: one run (rank 0) with loss, lr, grad norm, pairs/s, tokens/s, memory and
    the dev-set metrics of train.eval_every; metrics.jsonl holds the same numbers."""
    proc = run(tiny_model_dir, tmp_path, "--steps", "4", "--eval-every", "2", "--logger", "wandb", processes=2,
               env={"WANDB_MODE": "offline", "WANDB_API_KEY": SECRET})  # a secret the tracker itself reads
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert r["train/grad_norm"] > 0 and r["train/pairs_per_s"] > 0 and r["train/tokens_per_s"] > 0
        assert r["train/memory_mb"] > 50 and 0 <= r["train/lr"] <= 1e-3
    assert max(r["train/lr"] for r in train) > 0
    dev = [r for r in rows if "dev/nDCG@10" in r]
    assert [r["step"] for r in dev] == [2, 4] and all(0 <= r["dev/nDCG@10"] <= 1 for r in dev)
    runs = list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1  # rank 1 logs nothing
    blob = runs[0].read_bytes()
    for key in (b"train/loss", b"train/grad_norm", b"train/tokens_per_s", b"train/memory_mb", b"dev/nDCG@10"):
        assert key in blob
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 5 and any("wandb" in p.parts for p in written)
    assert not [p for p in written if SECRET.encode() in p.read_bytes()]  # W&B's key is in no file it wrote
