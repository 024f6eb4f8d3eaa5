"""Training throughput and memory of `embedtune train` against sentence-transformers, on this machine.

    python bench/train.py [--steps 20] [--big-steps 4] [--seeds 0,1,2] [--out bench/results]

Same model (the packaged all-MiniLM-L6-v2), same data (HPO pairs: an exact or layperson synonym as the
query, the term's name + definition as the passage; in-batch negatives only), max length 128, same
learning rate, and the same batches: for each data seed both sides read the pairs in one seeded order
(sentence-transformers through a sequential batch sampler, embedtune by placing the rows where its own
seeded epoch order puts them). Every measurement runs in its own process (peak RSS is per run); the two
sides alternate, once per data seed, so drift on a shared machine hits both. pairs/s counts the `--steps`
steps after a first (warm-up) step and includes data preparation, forward, backward and the optimizer
step. Tables give the median over seeds and the min-max range. The header names the CPU: bf16 rows are
measured only where bf16 is native (AVX512-BF16/AMX); an AVX2-only CPU emulates it, so it is timed in fp32.

Tables:
  1. batch 64: embedtune (length-grouped chunks of 32, graph kept) vs SentenceTransformerTrainer +
     MultipleNegativesRankingLoss, at fp32 and (native bf16 only) at bf16 autocast.
  2. batch 1024, chunk 32: embedtune gradient caching vs CachedMultipleNegativesRankingLoss
     (mini_batch_size=32).
  3. memory of embedtune with gradient caching, chunk 32, at global batch 64 / 256 / 1024 / 4096: RSS
     before the first step and the peak, and one uncached run at batch 1024 beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAX_LENGTH = 128


def hpo_pairs(seed: int) -> list[tuple[str, str]]:
    """Every HPO (synonym, term text) pair, in an order seeded by `seed` (the batches both sides train on)."""
    import random

    from embedtune.hpo import build_queries, load_terms
    from embedtune.model import passage_text

    _, terms = load_terms()
    text = {t.id: passage_text(t.name, t.definition) for t in terms}
    queries, qrels = build_queries(terms)
    by_id = {q["_id"]: q["text"] for q in queries}
    pairs = sorted((by_id[q], text[min(docs)]) for split in qrels.values() for q, docs in sorted(split.items()))
    random.Random(seed).shuffle(pairs)
    return pairs


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_ours(a) -> dict:
    from embedtune.loss import LossConfig
    from embedtune.model import ModelConfig, PeftConfig
    from embedtune.tracking import LoggerConfig, read_metrics
    from embedtune.train import TrainConfig, TrainData, TrainJob, run_training

    pairs = hpo_pairs(a.seed)
    cfg = TrainConfig(batch_size=a.batch, hard_negatives=0, chunk_size=a.chunk, grad_cache=a.cache,
                      max_steps=a.steps, lr=3e-5, mixed_precision="bf16" if a.precision == "bf16" else "no",
                      log_every=1, save_every=None, seed=0, resume=False)
    placeholder = [{"query_id": "", "passage_id": "", "negative_ids": []}] * len(pairs)
    order = TrainData(placeholder, {}, {}, cfg).order(0)
    rows = list(placeholder)
    for k, i in enumerate(order):  # the k-th row embedtune trains on is the k-th pair in the seeded order
        rows[i] = {"query_id": f"q{k}", "passage_id": f"p{k}", "negative_ids": []}
    data = TrainData(rows, {f"q{k}": q for k, (q, _) in enumerate(pairs)},
                     {f"p{k}": p for k, (_, p) in enumerate(pairs)}, cfg)
    before = rss_now_mb()
    with tempfile.TemporaryDirectory() as out:
        job = TrainJob(ModelConfig(query_max_length=MAX_LENGTH, passage_max_length=MAX_LENGTH), PeftConfig(),
                       LossConfig(temperature=0.05), cfg, LoggerConfig(kind="none"), "bench")
        run_training(job, data, Path(out))
        windows = [m["train/pairs_per_s"] for m in read_metrics(Path(out) / "metrics.jsonl")][1:]
    seconds = sum(a.batch / r for r in windows)
    rate = len(windows) * a.batch / seconds if windows else float("nan")  # one step: memory only
    return {"pairs_per_s": rate, "peak_rss_mb": peak_rss_mb(), "rss_before_mb": before, "timed_steps": len(windows)}


def child_st(a) -> dict:
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss
    from torch.utils.data import SequentialSampler
    from transformers import TrainerCallback

    from embedtune.assets import resolve_model

    class Clock(TrainerCallback):
        ends: list = []

        def on_step_end(self, args, state, control, **kwargs):
            Clock.ends.append(time.perf_counter())

    def in_order(dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        return DefaultBatchSampler(SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last)

    pairs = hpo_pairs(a.seed)
    model = SentenceTransformer(str(resolve_model("minilm-l6").path), device="cpu")
    model.max_seq_length = MAX_LENGTH
    loss = (CachedMultipleNegativesRankingLoss(model, mini_batch_size=a.chunk, show_progress_bar=False)
            if a.cache else MultipleNegativesRankingLoss(model))
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=a.batch, max_steps=a.steps, learning_rate=3e-5,
            warmup_ratio=0.1, bf16=a.precision == "bf16", use_cpu=True, report_to="none", save_strategy="no",
            logging_steps=10_000, dataloader_drop_last=True, seed=0, disable_tqdm=True, batch_sampler=in_order)
        SentenceTransformerTrainer(model=model, args=args, loss=loss, callbacks=[Clock()],
                                   train_dataset=Dataset.from_dict({"anchor": [q for q, _ in pairs],
                                                                    "positive": [p for _, p in pairs]})).train()
    steps = Clock.ends
    return {"pairs_per_s": (len(steps) - 1) * a.batch / (steps[-1] - steps[0]), "peak_rss_mb": peak_rss_mb(),
            "timed_steps": len(steps) - 1}


def run(impl: str, **kw) -> dict:
    args = [sys.executable, __file__, "child", "--impl", impl] + [
        x for k, v in kw.items() for x in ((f"--{k}", str(v)) if not isinstance(v, bool) else ((f"--{k}",) if v else ()))]
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {impl:5s} {kw}: {result['pairs_per_s']:.1f} pairs/s, peak RSS {result['peak_rss_mb']:.0f} MB",
          flush=True)
    return result


def cpu_kind() -> tuple[str, bool]:
    """What the timings ran on, and whether bf16 is native (AVX512-BF16/AMX) or emulated (then fp32 is the fair
    precision: an AVX2-only CPU runs bf16 autocast slower than fp32)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU", False
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "CPU")
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    kind = ", ".join(native) if native else ("AVX-512, no bf16" if "avx512f" in flags else "AVX2 only, no bf16")
    return f"{model} ({kind})", bool(native)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def spread(xs) -> str:
    return f"{median(xs):.1f} ({min(xs):.1f}-{max(xs):.1f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="mode")
    child = sub.add_parser("child")
    child.add_argument("--impl", choices=["ours", "st"], required=True)
    child.add_argument("--batch", type=int, required=True)
    child.add_argument("--chunk", type=int, default=32)
    child.add_argument("--steps", type=int, required=True)
    child.add_argument("--precision", default="fp32")
    child.add_argument("--cache", action="store_true")
    child.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per batch-64 run (after one warm-up step)")
    ap.add_argument("--big-steps", type=int, default=4, help="timed steps per batch-1024 run")
    ap.add_argument("--seeds", default="0,1,2", help="data seeds: one alternating repeat each")
    ap.add_argument("--out", default=None, help="folder for train.md and train.png")
    ap.add_argument("--parts", default="small,big,rss", help="which tables: small (batch 64), big (1024), rss")
    ap.add_argument("--precisions", default=None,
                    help="batch-64 precisions (default: fp32,bf16 where the CPU has native bf16, else fp32)")
    ap.add_argument("--big-precision", default=None,
                    help="precision of the batch-1024 and memory runs (default: bf16 if native, else fp32)")
    a = ap.parse_args()
    if a.mode == "child":
        print(json.dumps(child_ours(a) if a.impl == "ours" else child_st(a)))
        return

    import datetime

    import torch
    seeds = [int(x) for x in a.seeds.split(",")]
    cpu, native_bf16 = cpu_kind()
    precisions = (a.precisions or ("fp32,bf16" if native_bf16 else "fp32")).split(",")
    big_precision = a.big_precision or ("bf16" if native_bf16 else "fp32")
    lines = [f"`python bench/train.py {' '.join(sys.argv[1:])}`, {datetime.date.today()}, on {cpu}: MiniLM-L6, HPO "
             f"pairs, max length {MAX_LENGTH}, {torch.get_num_threads()} threads; both sides train on the same batches; "
             f"median (min-max) over {len(seeds)} data seeds, sides alternating\n"]
    parts = a.parts.split(",")
    small, big, rss = {}, {}, {}
    if "small" in parts:
        for precision in precisions:
            for seed in seeds:
                for impl in ("ours", "st"):
                    small.setdefault((precision, impl), []).append(
                        run(impl, batch=64, chunk=32, steps=a.steps + 1, precision=precision, seed=seed)["pairs_per_s"])
        lines += [f"| batch 64, {a.steps} timed steps | embedtune pairs/s | sentence-transformers MNRL pairs/s | speed-up |",
                  "| --- | ---: | ---: | ---: |"]
        for precision in precisions:
            ours, st = small[(precision, "ours")], small[(precision, "st")]
            ratios = [o / t for o, t in zip(ours, st)]
            lines.append(f"| {precision} | {spread(ours)} | {spread(st)} | {median(ratios):.2f}x "
                         f"({min(ratios):.2f}-{max(ratios):.2f}) |")
    if "big" in parts:
        for seed in seeds:
            for impl in ("ours", "st"):
                big.setdefault(impl, []).append(run(impl, batch=1024, chunk=32, steps=a.big_steps + 1, precision=big_precision,
                                                    cache=True, seed=seed)["pairs_per_s"])
        ratios = [o / t for o, t in zip(big["ours"], big["st"])]
        lines += ["", f"| batch 1024, chunk 32, {big_precision}, {a.big_steps} timed steps | embedtune grad cache pairs/s | "
                      "CachedMNRL pairs/s | speed-up |", "| --- | ---: | ---: | ---: |",
                  f"| | {spread(big['ours'])} | {spread(big['st'])} | {median(ratios):.2f}x "
                  f"({min(ratios):.2f}-{max(ratios):.2f}) |"]
    memory = []
    if "rss" in parts:
        # the same 4,096 pairs at every batch size (peak memory follows the longest chunk a run meets)
        rss = {(b, True): run("ours", batch=b, chunk=32, steps=4096 // b, precision=big_precision, cache=True)
               for b in (64, 256, 1024, 4096)}
        rss[(1024, False)] = run("ours", batch=1024, chunk=32, steps=4, precision=big_precision)
        base = rss[(64, True)]["peak_rss_mb"] - rss[(64, True)]["rss_before_mb"]
        memory += [f"| global batch (chunk 32, {big_precision}; same 4,096 pairs) | gradient caching | RSS before the first "
                   "step MB | peak RSS MB | training's share (peak - before) | vs batch 64 |",
                   "| ---: | --- | ---: | ---: | ---: | ---: |"]
        for (b, cached), m in rss.items():
            grown = m["peak_rss_mb"] - m["rss_before_mb"]
            memory.append(f"| {b} | {'yes' if cached else 'no'} | {m['rss_before_mb']:,.0f} | {m['peak_rss_mb']:,.0f} | "
                          f"{grown:,.0f} | {grown / base:.2f}x |")
    print("\n" + "\n".join(lines + [""] + memory))
    if a.out:  # throughput in train.md/png, memory in train_memory.md/png: each part can be rerun alone
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        if small or big:
            (out / "train.md").write_text("\n".join(lines) + "\n")
        if small and big:
            plot_throughput(small, big, precisions, big_precision, out / "train.png")
        if rss:
            header = (f"{datetime.date.today()}, on {cpu}: MiniLM-L6, HPO pairs, max length {MAX_LENGTH}, {torch.get_num_threads()} threads; one run "
                      "per row (data seed 0), each in its own process\n")
            (out / "train_memory.md").write_text("\n".join([header] + memory) + "\n")
            plot_memory(rss, big_precision, out / "train_memory.png")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_throughput(small, big, precisions, big_precision, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [f"b64 {p}" for p in precisions] + [f"b1024 cached {big_precision}"]
    ours = [median(small[(p, "ours")]) for p in precisions] + [median(big["ours"])]
    st = [median(small[(p, "st")]) for p in precisions] + [median(big["st"])]
    x = range(len(labels))
    ax.bar([i - 0.2 for i in x], ours, 0.4, label="embedtune")
    ax.bar([i + 0.2 for i in x], st, 0.4, label="sentence-transformers")
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("pairs/s (median over data seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_memory(rss, precision: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    cached = {b: m["peak_rss_mb"] - m["rss_before_mb"] for (b, c), m in rss.items() if c}
    uncached = {b: m["peak_rss_mb"] - m["rss_before_mb"] for (b, c), m in rss.items() if not c}
    ax.plot(list(cached), list(cached.values()), marker="o", label="gradient caching")
    ax.plot(list(uncached), list(uncached.values()), marker="x", linestyle="none", markersize=10, label="no caching")
    ax.legend(loc="upper left")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"global batch (chunk 32, {precision})")
    ax.set_ylabel("peak RSS - RSS before the first step (MB)")
    ax.set_ylim(0, max([*cached.values(), *uncached.values()]) * 1.2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
