"""Gradient caching: cached gradients equal full-batch gradients, on 1 process, DDP x2 and DeepSpeed
ZeRO-1/2/3 x2 (gloo on CPU), with LoRA and with Matryoshka, for the tiny BERT and for a tiny Llama and a tiny
Qwen3 (last-token pooling, left padding, LoRA on every projection), and with distillation (MarginMSE + listwise
KL on teacher scores beside InfoNCE: each rank's lists point into the gathered candidates); RNG replay
reproduces dropout.

Each distributed case runs tests/dist_gradcheck.py under `accelerate launch` with the repository's launch
configs: one step of SGD with lr=1 and no clipping, so every parameter moves by minus its gradient, which
is compared with one process computing the whole global batch (8 queries, 0-3 hard negatives each, so
ranks hold different numbers of candidates) in a single forward per side. The DDP and ZeRO-3 launches each
run all their cases (BERT and both decoders, with and without LoRA) in one process start.

Tolerance: relative error of the whole update vector <= 1e-5 and every element within 1e-4. Measured here:
about 1e-6 relative (float32 summation order and padding differences); a wrong scale or a lost micro-step
is off by O(1).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from helpers import REPO, accelerate_launch
import dist_gradcheck
from dist_gradcheck import compare
from embedtune.gradcache import RngState, length_chunks
from embedtune.model import Encoder, ModelConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def no_dropout_model(tiny_model_dir, tmp_path_factory):
    """The tiny BERT with dropout off: cached and full-batch forwards then see the same network."""
    folder = tmp_path_factory.mktemp("nodrop") / "model"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def check_update(out, model, lora=False, matryoshka=False, decoder=False, distill=False) -> dict:
    result = compare(out, str(model), lora, matryoshka, decoder, distill)
    grads, params = result["grads"], result["params"]
    assert result["grad_norm"] > 1e-3, "the reference gradient is (near) zero: the comparison would prove nothing"
    if lora:
        assert any("lora_A" in n and grads[n].abs().max() > 0 for n in grads)
        assert not any("lora" not in n for n in params), "LoRA: only adapter weights are trained"
    assert result["loss_diff"] < 1e-5
    assert result["relative"] <= 1e-5, f"relative error {result['relative']:.2e} ({result['max_element']:.2e})"
    assert result["max_element"] <= 1e-4
    return result["info"]


def run_gradcheck(tmp_path, model, *flags, processes=1, stage=0):
    args = [str(REPO / "tests" / "dist_gradcheck.py"), "--model", str(model), "--out", str(tmp_path), *flags]
    if processes == 1 and not stage:  # in this process: one process needs no launcher
        dist_gradcheck.main(args[1:])
        return tmp_path
    else:
        # --gradient_clipping: the DeepSpeed config must agree with the script's train.grad_clip (no clipping)
        extra = ["--mixed_precision", "no"] + (["--gradient_clipping", "1000000"] if stage else [])
        proc = accelerate_launch(extra + args, processes=processes, deepspeed_stage=stage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp_path


# ---------------------------------------------------------------- pieces

def test_length_chunks_sort_by_length_and_cover_every_index():
    lengths = [5, 1, 9, 3, 3, 7, 2]
    chunks = length_chunks(lengths, 3)
    assert sorted(i for c in chunks for i in c) == list(range(7))
    flat = [lengths[i] for c in chunks for i in c]
    assert flat == sorted(flat)
    assert [len(c) for c in chunks] == [2, 3, 2]
    assert length_chunks([4], 3) == [[], [0], []]  # fewer texts than chunks: empty runs (stand-in forwards)


def test_rng_replay_reproduces_dropout(tiny_model_dir):
    encoder = Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="mean")).train()  # dropout 0.1 on
    batch = encoder.tokenize(["the heart of the gene", "blood cell"], "passage")
    state = RngState(torch.device("cpu"))
    with torch.no_grad():
        first = encoder(batch)
    fresh = encoder(batch)  # other dropout masks
    state.restore()
    replayed = encoder(batch)
    assert not torch.allclose(first, fresh)
    assert torch.equal(first, replayed)


# ---------------------------------------------------------------- one process

@pytest.mark.parametrize("flags", [[], ["--matryoshka"], ["--lora"], ["--no-cache"], ["--lora", "--checkpointing"],
                                   ["--distill"], ["--distill", "--matryoshka"]],
                         ids=["cached", "matryoshka", "lora", "length-chunks-no-cache", "lora-grad-checkpointing",
                              "distill", "distill-matryoshka"])
def test_one_process_equals_full_batch(tmp_path, no_dropout_model, flags):
    out = run_gradcheck(tmp_path, no_dropout_model, *flags)
    info = check_update(out, no_dropout_model, lora="--lora" in flags, matryoshka="--matryoshka" in flags,
                        distill="--distill" in flags)
    assert info["processes"] == 1


def test_chunk_of_one_text_still_matches(tmp_path, no_dropout_model):
    check_update(run_gradcheck(tmp_path, no_dropout_model, "--chunk", "1"), no_dropout_model)


@pytest.mark.parametrize("family", ["tiny_llama_dir", "tiny_qwen3_dir"])
@pytest.mark.parametrize("flags", [[], ["--lora"], ["--lora", "--checkpointing"]],
                         ids=["full", "lora", "lora-grad-checkpointing"])
def test_one_process_decoder_equals_full_batch(tmp_path, family, flags, request):
    model = request.getfixturevalue(family)
    info = check_update(run_gradcheck(tmp_path, model, "--decoder", *flags), model, lora="--lora" in flags,
                        decoder=True)
    assert info["pooling"] == "last" and info["padding_side"] == "left"


# ---------------------------------------------------------------- two processes: DDP, ZeRO-1/2/3

CASES = {  # name -> (model fixture, flags); each launch below runs the cases it names in one process start
    "bert": ("no_dropout_model", []),
    "bert-lora": ("no_dropout_model", ["--lora"]),
    "llama": ("tiny_llama_dir", ["--decoder"]),
    "qwen3": ("tiny_qwen3_dir", ["--decoder"]),
    "llama-lora": ("tiny_llama_dir", ["--decoder", "--lora"]),
    "qwen3-lora": ("tiny_qwen3_dir", ["--decoder", "--lora"]),
    "bert-distill": ("no_dropout_model", ["--distill"]),  # MarginMSE + KL + InfoNCE on teacher scores
}
LAUNCHES = {"ddp": (0, ["bert", "bert-lora", "llama", "qwen3", "bert-distill"]), "zero3": (3, list(CASES))}


@pytest.fixture(scope="module")
def launched(request, tmp_path_factory):
    """Each launch of LAUNCHES run once for the module (on first use): {launch: {case: (out folder, model)}}."""
    done = {}

    def run(launch: str) -> dict:
        if launch not in done:
            stage, names = LAUNCHES[launch]
            root = tmp_path_factory.mktemp(launch)
            cases, folders = [], {}
            for name in names:
                fixture, flags = CASES[name]
                model = request.getfixturevalue(fixture)
                folders[name] = (root / name, model)
                cases.append(["--model", str(model), "--out", str(root / name), *flags])
            (root / "cases.json").write_text(json.dumps(cases))
            extra = ["--mixed_precision", "no"] + (["--gradient_clipping", "1000000"] if stage else [])
            proc = accelerate_launch(extra + [str(REPO / "tests" / "dist_gradcheck.py"), "--cases",
                                              str(root / "cases.json")], processes=2, deepspeed_stage=stage,
                                     timeout=600)
            assert proc.returncode == 0, proc.stderr[-3000:]
            done[launch] = folders
        return done[launch]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("launch,case", [(launch, case) for launch, (_, names) in LAUNCHES.items() for case in names])
def test_two_processes_equal_full_batch(launched, launch, case):
    out, model = launched(launch)[case]
    flags = CASES[case][1]
    info = check_update(out, model, lora="--lora" in flags, decoder="--decoder" in flags, distill="--distill" in flags)
    assert info["processes"] == 2
    if launch == "ddp":
        assert info["distributed_type"].endswith("MULTI_CPU")
    else:
        assert info["deepspeed"] and info["zero_stage"] == 3
    if "--decoder" in flags:
        assert info["backbone"] in ("LlamaModel", "Qwen3Model") and info["padding_side"] == "left"


@pytest.mark.parametrize("stage,flags", [(1, []), (2, ["--matryoshka"])], ids=["zero1", "zero2-matryoshka"])
@pytest.mark.slow
def test_deepspeed_two_processes_equals_full_batch(tmp_path, no_dropout_model, stage, flags):
    out = run_gradcheck(tmp_path, no_dropout_model, *flags, processes=2, stage=stage)
    info = check_update(out, no_dropout_model, lora="--lora" in flags, matryoshka="--matryoshka" in flags)
    assert info["deepspeed"] and info["zero_stage"] == stage and info["processes"] == 2


@pytest.mark.slow
def test_zero3_cpu_offload_from_a_deepspeed_json_equals_full_batch(tmp_path, no_dropout_model):
    """launch/zero3-offload.yaml names launch/deepspeed/zero3-offload.json, whose "auto" values embedtune
    fills (precision, clipping, micro-batch, bucket sizes): parameters and optimizer state on the CPU."""
    args = [str(REPO / "tests" / "dist_gradcheck.py"), "--model", str(no_dropout_model), "--out", str(tmp_path)]
    proc = accelerate_launch(args, processes=2, deepspeed_config="zero3-offload.yaml")
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = check_update(tmp_path, no_dropout_model)
    assert info["deepspeed"] and info["zero_stage"] == 3 and info["processes"] == 2
    assert info["offload"] == {"offload_optimizer": "cpu", "offload_param": "cpu"}
