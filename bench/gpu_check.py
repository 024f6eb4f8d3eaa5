"""The GPU check of the trainer (issue 4) and of generation (issue 3), as one script for a CUDA machine.

    python bench/gpu_assets.py .gpu          # here: configs, tokenizers, HPO pairs (no weights)
    python bench/gpu_check.py --assets .gpu  # there

1. Gradient equality on CUDA: tests/dist_gradcheck.py (one step, SGD lr=1, cached chunks of 3) against the
   fp32 full-batch reference on CPU, in bf16 and fp32, on one GPU and under DeepSpeed ZeRO-2 with one
   process (launch/zero2.yaml). bf16 differs from the fp32 reference by bf16 rounding; the cached step
   must not differ more than the uncached one.
2. Training pairs/s at global batch 4096 with gradient caching (bf16), for MiniLM-L6 and for a BERT-base
   sized encoder (12 x 768) built from config. Weights are random: throughput does not depend on them.
3. Generation queries/s of the transformers backend on CUDA with SmolLM2-135M's architecture and tokenizer
   (random bf16 weights, so every completion runs to max_new_tokens: an upper bound on the work).
   vLLM is not run: its wheels (~400 MB with their CUDA libraries) exceed what can be carried to the machine.
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


def gradient_equality(work: Path) -> list[tuple]:
    from conftest import build_tiny_model
    from dist_gradcheck import compare

    model = build_tiny_model(work / "tiny")
    config = json.loads((model / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (model / "config.json").write_text(json.dumps(config))
    script = [str(REPO / "tests" / "dist_gradcheck.py"), "--model", str(model)]
    cases = [("1 GPU", "bf16", []), ("1 GPU", "bf16", ["--no-cache"]), ("1 GPU", "fp16", []),
             ("1 GPU", "fp16", ["--no-cache"]), ("1 GPU", "no", []),
             ("ZeRO-2, 1 process", "bf16", []), ("ZeRO-2, 1 process", "bf16", ["--no-cache"]),
             ("ZeRO-2, 1 process", "no", [])]
    rows, outs = [], {}
    for n, (where, precision, flags) in enumerate(cases):
        out = work / f"case{n}"
        out.mkdir()
        args = [*script, "--out", str(out), "--precision", precision, *flags]
        if where.startswith("ZeRO"):
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/zero2.yaml"),
                   "--num_processes", "1", "--mixed_precision", precision, "--gradient_clipping", "1000000", *args]
        else:
            cmd = [sys.executable, *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
                                  [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])})
        if proc.returncode:
            rows.append((where, precision, "no" if flags else "yes", "FAILED: " + proc.stderr[-800:].replace("\n", " | ")))
            continue
        r = compare(out, str(model))
        outs[(where, precision, bool(flags))] = (out, r["grad_norm"])
        rows.append((where, precision, "no" if flags else "yes", f"{r['relative']:.2e}", f"{r['max_element']:.2e}",
                     f"{r['loss_diff']:.1e}", r["info"]["device"]))
    # the cached step against the uncached one at the same precision: what caching itself changes
    from safetensors.torch import load_file
    for (where, precision, no_cache), (out, norm) in outs.items():
        if no_cache or (where, precision, True) not in outs:
            continue
        a = load_file(str(out / "after.safetensors"))
        b = load_file(str(outs[(where, precision, True)][0] / "after.safetensors"))
        rel = sum(float((a[k] - b[k]).pow(2).sum()) for k in a) ** 0.5 / norm
        rows.append((where, precision, "cached vs uncached", f"{rel:.2e}", "", "", ""))
    return rows


def training_speed(assets: Path, work: Path, batch: int, chunk: int, steps: int) -> list[tuple]:
    from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig

    from embedtune.loss import LossConfig
    from embedtune.model import ModelConfig, PeftConfig
    from embedtune.tracking import LoggerConfig, read_metrics
    from embedtune.train import TrainConfig, TrainData, TrainJob, run_training

    pairs = json.loads((assets / "hpo.json").read_text())["pairs"]
    tokenizer = AutoTokenizer.from_pretrained(assets / "minilm")
    minilm = AutoConfig.from_pretrained(assets / "minilm")
    base = BertConfig(vocab_size=minilm.vocab_size)  # 12 layers, 768 wide, 12 heads: BERT-base
    rows = []
    for name, config in (("MiniLM-L6 (6 x 384)", minilm), ("BERT-base size (12 x 768)", base)):
        folder = work / name.split()[0]
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        rows_ = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": []} for i in range(len(pairs))]
        cfg = TrainConfig(batch_size=batch, hard_negatives=0, chunk_size=chunk, grad_cache=True, max_steps=steps,
                          mixed_precision="bf16", log_every=1, resume=False, lr=1e-5)
        data = TrainData(rows_, {f"q{i}": q for i, (q, _) in enumerate(pairs)},
                         {f"p{i}": p for i, (_, p) in enumerate(pairs)}, cfg)
        out = work / (folder.name + "-run")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        job = TrainJob(ModelConfig(name=str(folder), pooling="mean", query_max_length=128, passage_max_length=128),
                       PeftConfig(), LossConfig(), cfg, LoggerConfig(kind="none"), "gpu")
        run_training(job, data, out)
        metrics = read_metrics(out / "metrics.jsonl")[1:]  # steps after the first
        seconds = sum(batch / m["train/pairs_per_s"] for m in metrics)
        rows.append((name, batch, chunk, f"{len(metrics) * batch / seconds:,.0f}",
                     f"{max(m['train/memory_mb'] for m in metrics) / 1024:.1f}"))
    return rows


def generation_speed(assets: Path, work: Path, n: int, batch_sizes: list[int], max_new_tokens: int) -> list[tuple]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from embedtune.generate.backends import BackendConfig, TransformersBackend
    from embedtune.generate.prompts import PromptConfig, passage_for_prompt, render

    folder = work / "smollm2-random"
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(assets / "smollm2"),
                                     dtype=torch.bfloat16).save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets / "smollm2").save_pretrained(folder)
    backend = TransformersBackend(BackendConfig(model=str(folder), dtype="bfloat16", device="auto",
                                                max_new_tokens=max_new_tokens))
    prompt_cfg = PromptConfig(domain="human phenotypes (clinical signs, symptoms and abnormalities)")
    passages = json.loads((assets / "hpo.json").read_text())["passages"][:n]
    prompts = [render("keyword", passage_for_prompt(p["title"], p["text"], prompt_cfg.passage_max_chars), prompt_cfg,
                      max_new_tokens) for p in passages]
    backend.generate(prompts[:8])  # warm-up
    rows = []
    for b in batch_sizes:
        backend.cfg.batch_size = b
        sync()
        started = time.perf_counter()
        backend.generate(prompts)
        sync()
        rows.append((b, f"{len(prompts) / (time.perf_counter() - started):,.1f}"))
    return rows


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def table(header: tuple, rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".gpu")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=512)
    ap.add_argument("--skip", default="", help="comma list of parts to skip: grad,train,gen")
    a = ap.parse_args()
    assets = Path(a.assets)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (a smoke run on CPU)"
    print(f"torch {torch.__version__}, {gpu}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "grad" not in a.skip:
            rows = gradient_equality(work)
            print("\n## Gradient equality on CUDA (cached step vs fp32 full-batch reference)\n")
            print(table(("where", "precision", "grad cache", "relative error", "max element", "loss diff", "device"),
                        rows), flush=True)
        if "train" not in a.skip:
            rows = training_speed(assets, work, a.batch, a.chunk, a.steps)
            print("\n## Training throughput, gradient caching, bf16\n")
            print(table(("encoder", "global batch", "chunk", "pairs/s", "peak GPU memory GB"), rows), flush=True)
        if "gen" not in a.skip:
            rows = generation_speed(assets, work, a.prompts, [16, 64, 256], 24)
            print(f"\n## Generation, transformers backend on CUDA, SmolLM2-135M architecture, {a.prompts} prompts, "
                  "24 new tokens\n")
            print(table(("batch size", "queries/s"), rows), flush=True)


if __name__ == "__main__":
    main()
