"""`embedtune plan`: the predicted training peak against the measured one (real training runs of tiny
decoders on this CPU), its model-state counts against DeepSpeed's own estimators, the launch configs it
reads, the depth extrapolation of its simulation, and the chunk-size search."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import build_tiny_decoder
from helpers import compose_config
from embedtune.errors import EmbedtuneError
from embedtune.memory_plan import (
    ParamCounts,
    PlanConfig,
    Simulator,
    Target,
    _chunks,
    make_plan,
    model_states,
    target_of,
)

HERE = Path(__file__).parent
ROOT = HERE.parent
# big enough that model states and activations, not the interpreter, make the peak (~25M parameters)
MEMORY_SHAPE = dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=8,
                    num_key_value_heads=4, head_dim=64, vocab_size=8192)
COMMON = ["model.pooling=last", "model.query_max_length=32", "model.passage_max_length=128", "train.batch_size=4",
          "train.hard_negatives=1", "train.chunk_size=8", "train.max_steps=2", "train.mixed_precision=no",
          "train.log_every=1", "logger=none", "train.save_every=null"]


@pytest.fixture(scope="module")
def memory_decoders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("memory_decoders")
    return {family: build_tiny_decoder(root / family, family, seed=3, **MEMORY_SHAPE) for family in ("llama", "qwen3")}


CASES = {
    "llama-full-gradcache-checkpointing": ("llama", ["train.grad_cache=true", "train.gradient_checkpointing=true"]),
    "qwen3-lora-gradcache": ("qwen3", ["train.grad_cache=true", "peft=lora"]),
    "qwen3-full-no-gradcache": ("qwen3", ["train.grad_cache=false", "train.chunk_size=4"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_predicted_peak_is_within_25_percent_of_the_measured_peak(case, memory_decoders, tmp_path):
    """Two real training steps (the second with AdamW's state) in a fresh process: the growth of its resident
    set over its size just before training, against the plan's prediction for this CPU."""
    family, extra = CASES[case]
    overrides = [f"model.name={memory_decoders[family]}", *COMMON, *extra]
    cfg = compose_config(*overrides)
    plan = make_plan(cfg, PlanConfig(device="cpu", gpus=1, zero_stage=0))
    predicted = plan.peak(cfg.train.gradient_checkpointing)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "WANDB_MODE": "offline"}  # freed blocks go back at once
    out = subprocess.run([sys.executable, str(HERE / "measure_train_peak.py"), str(tmp_path / "ckpt"), *overrides],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    growth = measured["peak"] - measured["baseline"]
    assert growth > 300 * 2 ** 20  # the run is big enough for the comparison to mean something
    assert abs(predicted - growth) <= 0.25 * growth, (predicted / 2 ** 20, growth / 2 ** 20)


def _counts(params: int, largest: int) -> ParamCounts:
    return ParamCounts(frozen=0, trainable=params, adapters=0, largest_module=largest,
                       largest_trainable_module=largest, largest_trainable=largest)


@pytest.mark.parametrize("stage,gpus,offload_optimizer,offload_params", [
    (2, 8, False, False), (2, 16, True, False), (3, 8, False, False), (3, 32, True, False), (3, 32, True, True)])
def test_model_states_agree_with_deepspeeds_estimators(stage, gpus, offload_optimizer, offload_params):
    """bf16 under ZeRO-2/3, all weights trained: the plan's weights + gradients + optimizer state per GPU equal
    DeepSpeed's own estimate_zero{2,3}_model_states_mem_needs (which know no activations and no LoRA)."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params, largest = 7_000_000_000, 600_000_000
    t = Target(gpus=gpus, zero_stage=stage, offload_optimizer=offload_optimizer, offload_params=offload_params,
               precision="bf16", device="cuda")
    cfg = compose_config("peft=none")
    s = model_states(cfg, _counts(params, largest), t, stage)
    ours = s["weights"] + s["gradients"] + s["optimizer"]
    if stage == 2:
        _, theirs = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=gpus,
                                                           cpu_offload=offload_optimizer)
    else:
        _, theirs, _ = estimate_zero3_model_states_mem_needs(params, largest, num_gpus_per_node=gpus,
                                                              cpu_offload=offload_optimizer,
                                                              cpu_offload_params=offload_params)
    assert abs(ours - theirs) <= 16, (ours, theirs)  # integer rounding only


def test_model_states_outside_deepspeed_count_lora_in_fp32_and_ddp_buckets():
    cfg = compose_config("peft=lora")
    counts = ParamCounts(frozen=1000, trainable=10, adapters=10, largest_module=500, largest_trainable_module=5,
                         largest_trainable=5)
    one = model_states(cfg, counts, Target(1, 0, False, False, "bf16", "cuda"), 0)
    two = model_states(cfg, counts, Target(2, 0, False, False, "bf16", "cuda"), 0)
    assert one["weights"] == 1000 * 2 + 10 * 4  # a bf16 base, fp32 adapters
    assert (one["gradients"], one["optimizer"]) == (40, 80)
    assert two["gradients"] == 80  # DDP's bucket copy of the gradients


def test_launch_configs_give_the_target(monkeypatch):
    multinode = target_of(PlanConfig(launch=str(ROOT / "launch/multinode-zero3.yaml")), "bf16")
    assert (multinode.gpus, multinode.zero_stage, multinode.offload_optimizer) == (32, 3, False)
    monkeypatch.chdir(ROOT)  # the launch file names its DeepSpeed JSON relative to the repository root
    offload = target_of(PlanConfig(launch="launch/zero3-offload.yaml"), "auto")
    assert (offload.zero_stage, offload.offload_optimizer, offload.offload_params, offload.precision) == \
        (3, True, True, "bf16")
    ddp = target_of(PlanConfig(launch=str(ROOT / "launch/ddp.yaml"), gpus=4), "no")
    assert (ddp.gpus, ddp.zero_stage, ddp.precision) == (4, 0, "no")  # plan.gpus wins over the file


def test_unreadable_launch_config_is_a_clear_error(tmp_path):
    bad = tmp_path / "launch.yaml"
    bad.write_text("distributed_type: [unclosed\n")
    with pytest.raises(EmbedtuneError, match="plan.launch=.*launch.yaml"):
        target_of(PlanConfig(launch=str(bad)), "bf16")


def test_deep_models_are_extrapolated_from_two_and_three_blocks(memory_decoders):
    """A 6-block decoder simulated with 2 and 3 blocks and extrapolated equals its simulation in full (within
    2%: the first block's input and the pooled output do not repeat), with and without checkpointing."""
    cfg = compose_config(f"model.name={memory_decoders['qwen3']}", *COMMON, "train.grad_cache=true")
    t = Target(1, 0, False, False, "no", "cpu")
    chunks = _chunks(cfg, 4, cfg.train.chunk_size, 1)
    for checkpointing in (False, True):
        extrapolated = Simulator(cfg, t, checkpointing, depth=6)
        assert set(extrapolated.sims) == {2, 3}
        whole = Simulator(cfg, t, checkpointing, depth=None)  # depth unknown: the model as it is (6 blocks)
        assert set(whole.sims) == {None}
        a, b = extrapolated(chunks), whole(chunks)
        assert abs(a.peak - b.peak) <= 0.02 * b.peak and a.grads == b.grads > 0, (a, b)


def test_chunks_are_cut_as_the_trainer_cuts_them():
    """40 candidates in chunks of at most 32: the trainer makes two runs of 20 (gradcache.length_chunks)."""
    cfg = compose_config("train.hard_negatives=4", "train.grad_cache=false", "model.query_max_length=30",
                         "model.passage_max_length=100")
    assert _chunks(cfg, 8, 32, 8) == [(8, 32), (20, 104), (20, 104)]  # padded to multiples of 8 on GPUs
    cached = compose_config("train.hard_negatives=4", "train.grad_cache=true")
    assert _chunks(cached, 8, 32, 1) == [(8, 32), (20, 256)]  # one of each lives at a time


def test_largest_chunk_size_fits_and_one_more_does_not(tiny_qwen3_dir):
    cfg = compose_config(f"model.name={tiny_qwen3_dir}", "model.pooling=last", "model.passage_max_length=256",
                         "train.batch_size=32", "train.hard_negatives=3", "train.grad_cache=true",
                         "train.chunk_size=16", "plan.device=cuda", "plan.gpus=1", "plan.reserve=0",
                         "plan.gpu_memory_gb=0.05")
    plan = make_plan(cfg, cfg.plan)
    simulate = Simulator(cfg, plan.target, checkpointing=False, depth=2)
    size = plan.fits[False]
    assert 1 < size < 32 * 4

    def peak(chunk_size: int) -> int:
        return plan.peak(False, activations=simulate(_chunks(cfg, 32, chunk_size, 8)))

    assert peak(size) <= plan.budget < peak(size + 1)
    assert plan.fits[True] > size  # checkpointing keeps less, so larger chunks fit


def test_plan_command_prints_the_table(tiny_llama_dir, capsys):
    """What `embedtune plan ...` prints (cli.py hands the composed config to run_plan)."""
    from embedtune.memory_plan import run_plan

    cfg = compose_config(f"model.name={tiny_llama_dir}", "model.pooling=last", "peft=lora", "train.grad_cache=true",
                         "train.batch_size=16", "plan.gpus=8", "plan.zero_stage=3", "plan.gpu_memory_gb=0.02")
    run_plan(cfg)
    text = capsys.readouterr().out
    assert "| per GPU, GiB | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 |" in text
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ")[1:] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line}
    for row in ("weights", "gradients", "optimizer state", "of which LoRA adapters",
                "activations + loss, checkpointing on", "**peak**, checkpointing off"):
        assert len(rows[row]) == 4, row
    assert "8 GPUs, ZeRO-3" in text and "largest train.chunk_size=" in text


@pytest.mark.slow
def test_plan_command_names_a_bad_launch_config(tiny_llama_dir, tmp_path):
    """`embedtune plan` goes through the CLI like every stage: a bad plan.launch is one clear error."""
    from helpers import assert_clean_error, embedtune

    bad = tmp_path / "launch.yaml"
    bad.write_text("distributed_type: [unclosed\n")
    result = embedtune("plan", f"model.name={tiny_llama_dir}", f"plan.launch={bad}", cwd=tmp_path)
    assert_clean_error(result, "embedtune plan: error: plan.launch=", "launch.yaml")
