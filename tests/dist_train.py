"""A short real training run through run_training, for tests/test_train_scale.py (1 process, or 2 under
`accelerate launch`). Data: `--rows` query/passage pairs with 0-2 hard negatives; the tiny BERT keeps its
dropout, so exact resume needs the RNG state back too."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from embedtune.beir import RetrievalSet
from embedtune.evaluate import EvalConfig, training_evaluator
from embedtune.loss import LossConfig
from embedtune.model import ModelConfig, PeftConfig
from embedtune.tracking import LoggerConfig
from embedtune.train import TrainConfig, TrainData, TrainJob, run_training

WORDS = "cat dog fish bird apple bread river music gene protein heart lung kidney liver brain blood".split()


def data(rows: int, cfg: TrainConfig) -> TrainData:
    queries = {f"q{i}": " ".join(WORDS[(i + k) % 8] for k in range(1 + i % 3)) for i in range(rows)}
    passages = {f"p{i}": " ".join(WORDS[8 + (i + k) % 8] for k in range(2 + i % 5)) for i in range(rows)}
    pairs = [{"query_id": f"q{i}", "passage_id": f"p{i}",
              "negative_ids": [f"p{(i + k) % rows}" for k in range(1, 1 + i % 3)]} for i in range(rows)]
    return TrainData(pairs, queries, passages, cfg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--halt", type=int, default=None)
    ap.add_argument("--chunk", type=int, default=3)
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--lora", action="store_true")
    ap.add_argument("--precision", default="no")
    ap.add_argument("--logger", default="none")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--save-every", type=int, default=None)
    ap.add_argument("--lr", type=float, default=1e-3)
    args = ap.parse_args()
    cfg = TrainConfig(batch_size=args.batch, hard_negatives=2, max_steps=args.steps, epochs=args.epochs,
                      halt_at_step=args.halt, chunk_size=args.chunk, grad_cache=not args.no_cache,
                      lr=args.lr, warmup_ratio=0.2, mixed_precision=args.precision, log_every=1, seed=3,
                      eval_every=args.eval_every, save_every=args.save_every, keep_checkpoints=2)
    peft = PeftConfig(enabled=args.lora, r=4, alpha=8, dropout=0.1, target_modules=["query", "value"])
    train = data(args.rows, cfg)
    dev = RetrievalSet("dev", train.passages, train.queries,
                       {r["query_id"]: {r["passage_id"]: 1} for r in train.rows})  # seen pairs: a smoke check
    job = TrainJob(ModelConfig(name=args.model, pooling="mean", passage_max_length=64), peft,
                   LossConfig(temperature=0.1), cfg, LoggerConfig(kind=args.logger), "dist-train")
    result = run_training(job, train, Path(args.out), key="k",
                          evaluator=training_evaluator(dev, EvalConfig(precision="fp32")))
    if result.main_process:
        (Path(args.out) / "result.json").write_text(json.dumps(result.manifest()))


if __name__ == "__main__":
    main()
