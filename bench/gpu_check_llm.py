"""The GPU check of decoder embedders (issue 15), as one script for a CUDA machine:

    python bench/gpu_assets.py .gpu              # here: configs, tokenizers, HPO pairs (no weights)
    python bench/gpu_check_llm.py --assets .gpu  # there (a few minutes, estimated: not yet run on a GPU)
    python bench/gpu_check_llm.py --assets .gpu --smoke   # here, on CPU: tiny sizes, every code path

1. Gradient equality on CUDA for a tiny Qwen3 (last-token pooling, left padding): tests/dist_gradcheck.py's
   one cached step against the fp32 full-batch reference on CPU, on one GPU and under DeepSpeed ZeRO-3 with
   one process, fp32 and bf16, with and without LoRA.
2. bf16 training throughput and MFU of a Qwen3-0.6B-shaped model (random weights from its config; speed does
   not depend on their values) at batch 4,096 with gradient caching. MFU counts 6 x parameters (without the
   embedding table) + attention per token, the model's own FLOPs: caching's second forward is not credited.
3. The memory plan against the measurement: `embedtune plan`'s predicted peak for that model and a run whose
   texts are all longer than the max lengths (the plan's worst case), against torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "tests")]
from gpu_check import table  # noqa: E402  (bench/gpu_check.py, beside this script)

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151669, max_position_embeddings=32768)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=49152, max_position_embeddings=2048)
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0}  # dense, SXM


def gradient_equality(work: Path) -> list[tuple]:
    from conftest import build_tiny_decoder
    from dist_gradcheck import compare

    model = build_tiny_decoder(work / "tiny-qwen3", "qwen3", seed=6)
    script = [str(REPO / "tests" / "dist_gradcheck.py"), "--model", str(model), "--decoder"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    rows = []
    for where in ("1 GPU", "ZeRO-3, 1 process"):
        for precision in ("no", "bf16"):
            for lora in (False, True):
                out = work / f"{where[:4]}-{precision}-{lora}".replace(" ", "").replace(",", "")
                out.mkdir()
                args = [*script, "--out", str(out), "--precision", precision, *(["--lora"] if lora else [])]
                if where.startswith("ZeRO"):
                    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "launch/zero3.yaml"), "--num_processes", "1", "--mixed_precision", precision,
                           "--gradient_clipping", "1000000", *args]
                else:
                    cmd = [sys.executable, *args]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                label = (where, precision, "LoRA" if lora else "full")
                if proc.returncode:
                    rows.append((*label, "FAILED: " + proc.stderr[-600:].replace("\n", " | "), "", "", ""))
                    continue
                r = compare(out, str(model), lora=lora, decoder=True)
                rows.append((*label, f"{r['relative']:.2e}", f"{r['max_element']:.2e}", f"{r['loss_diff']:.1e}",
                             r["info"]["device"]))
    return rows


def build_model(work: Path, assets: Path, shape: dict) -> Path:
    """A random Qwen3 of `shape` with SmolLM2's tokenizer (its ids fit the vocabulary), saved in bf16."""
    from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

    folder = work / "qwen3-shape"
    torch.manual_seed(0)
    Qwen3Model(Qwen3Config(**shape)).to(torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets / "smollm2").save_pretrained(folder)
    return folder


def model_flops_per_token(shape: dict, tokens_per_text: float) -> float:
    """Forward + backward FLOPs per token: 6 x non-embedding parameters + the attention matmuls."""
    h, i, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    params = layers * (h * q + 2 * h * kv + q * h + 3 * h * i)
    attention = layers * 2 * 2 * q * tokens_per_text  # QK^T and AV, forward; x3 with backward
    return 6 * params + 3 * attention


def train_run(folder: Path, texts: list[tuple[str, str]], out: Path, batch: int, chunk: int, steps: int,
              max_length: int, precision: str):
    from embedtune.loss import LossConfig
    from embedtune.model import ModelConfig, PeftConfig
    from embedtune.tracking import LoggerConfig, read_metrics
    from embedtune.train import TrainConfig, TrainData, TrainJob, run_training

    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": []} for i in range(len(texts))]
    cfg = TrainConfig(batch_size=batch, hard_negatives=0, chunk_size=chunk, grad_cache=True, max_steps=steps,
                      mixed_precision=precision, log_every=1, resume=False, lr=1e-5)
    data = TrainData(rows, {f"q{i}": q for i, (q, _) in enumerate(texts)},
                     {f"p{i}": p for i, (_, p) in enumerate(texts)}, cfg)
    model = ModelConfig(name=str(folder), pooling="last", padding_side="left", query_max_length=max_length,
                        passage_max_length=max_length)
    job = TrainJob(model, PeftConfig(), LossConfig(), cfg, LoggerConfig(kind="none"), "gpu")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run_training(job, data, out)
    return job, read_metrics(out / "metrics.jsonl")


def throughput(folder: Path, shape: dict, pairs: list, work: Path, batch: int, chunk: int, steps: int,
               precision: str) -> list[tuple]:
    texts = (pairs * (1 + batch // len(pairs)))[:max(batch, len(pairs))]
    _, metrics = train_run(folder, texts, work / "speed", batch, chunk, steps, 128, precision)
    later = metrics[1:] or metrics  # the first step builds kernels
    pairs_s = len(later) * batch / sum(batch / m["train/pairs_per_s"] for m in later)
    tokens_s = sum(m["train/tokens_per_s"] for m in later) / len(later)
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    per_token = model_flops_per_token(shape, tokens_s / max(pairs_s * 2, 1e-9))
    achieved = per_token * tokens_s / 1e12
    mfu = f"{achieved / peak:.1%}" if peak else "n/a (unknown peak)"
    return [(f"{batch:,}", chunk, f"{pairs_s:,.0f}", f"{tokens_s:,.0f}", f"{achieved:.1f}", mfu,
             f"{max(m['train/memory_mb'] for m in metrics) / 1024:.1f}")]


def plan_vs_measured(folder: Path, work: Path, batch: int, chunk: int, precision: str, device: str) -> list[tuple]:
    from embedtune.config import Config
    from embedtune.memory_plan import PlanConfig, make_plan

    long_text = "the heart and the blood of the patient " * 80  # longer than max_length: every chunk full
    texts = [(f"{i} {long_text}", f"{i} {long_text}") for i in range(batch)]
    job, metrics = train_run(folder, texts, work / "memory", batch, chunk, 2, 256, precision)
    cfg = Config(model=job.model, peft=job.peft, train=job.train, loss=job.loss)  # exactly the run's settings
    plan = make_plan(cfg, PlanConfig(device=device, gpus=1, zero_stage=0))
    predicted = plan.peak(False) / 2 ** 30
    measured = max(m["train/memory_mb"] for m in metrics) / 1024
    return [(f"{batch} x 256 tokens, chunk {chunk}", f"{predicted:.2f}", f"{measured:.2f}",
             f"{predicted / measured:.3f}")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".gpu")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: check the script, not the GPU")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: grad,speed,plan")
    a = ap.parse_args()
    assets, cuda = Path(a.assets), torch.cuda.is_available()
    shape, batch, chunk = (TINY, 16, 4) if a.smoke else (QWEN3_06B, a.batch, a.chunk)
    precision = "bf16" if cuda else "no"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0) if cuda else 'CPU (smoke run)'}", flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "grad" not in a.skip:
            print("\n## Gradient equality, tiny Qwen3, last token, left padding (cached step vs fp32 CPU full "
                  "batch)\n")
            print(table(("where", "precision", "weights", "relative error", "max element", "loss diff", "device"),
                        gradient_equality(work)), flush=True)
        folder = build_model(work, assets, shape)
        if "speed" not in a.skip:
            pairs = [tuple(p) for p in json.loads((assets / "hpo.json").read_text())["pairs"]]
            print(f"\n## Training throughput, Qwen3-0.6B shape, {precision}, gradient caching, 128 tokens max\n")
            print(table(("global batch", "chunk", "pairs/s", "tokens/s", "model TFLOP/s", "MFU", "peak GB"),
                        throughput(folder, shape, pairs, work, batch, chunk, a.steps, precision)), flush=True)
        if "plan" not in a.skip:
            print("\n## embedtune plan vs measured peak (GiB; max_memory_allocated on CUDA, RSS on CPU)\n")
            rows = plan_vs_measured(folder, work, 64 if not a.smoke else 8, 16 if not a.smoke else 4, precision,
                                    "cuda" if cuda else "cpu")
            print(table(("run", "predicted", "measured", "ratio"), rows), flush=True)
    print(f"\n{time.time() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
