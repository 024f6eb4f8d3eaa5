"""train: the one explicit contrastive training loop (Accelerate; one process here, more under `accelerate launch`).

train -> train_step; checkpointing is called explicitly in the loop. Batches are a pure function of
(seed, step), so a run's data order does not depend on how it was started.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from embedtune.errors import EmbedtuneError
from embedtune.io import write_json
from embedtune.loss import LossConfig, info_nce, passage_hash
from embedtune.model import Encoder, ModelConfig, PeftConfig
from embedtune.tracking import LoggerConfig, Tracker


@dataclass
class TrainConfig:
    batch_size: int = 32              # queries per optimizer step
    hard_negatives: int = 1           # mined negatives per query in each step (0: in-batch only)
    epochs: float = 1.0               # passes over the training pairs (ignored when max_steps is set)
    max_steps: Optional[int] = None   # stop after this many steps
    lr: float = 3e-5                  # peak learning rate (LoRA usually wants ~10x more)
    weight_decay: float = 0.01        # AdamW decay (not on biases and norms)
    warmup_ratio: float = 0.1         # share of steps with linear warmup, then cosine decay to 0
    grad_clip: float = 1.0            # max global grad norm
    mixed_precision: str = "bf16"     # no | bf16 | fp16 (fp16 on GPU only); bf16 autocast also helps on CPU
    seed: int = 42                    # data order, hard-negative choice and dropout
    log_every: int = 5                # steps between logged metrics (the loss is their mean)
    save_every: Optional[int] = None  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2         # older checkpoints are deleted


class TrainData:
    """Training rows + passage texts; batch(step) is deterministic in (seed, step)."""

    def __init__(self, rows: list[dict], queries: dict[str, str], passages: dict[str, str], cfg: TrainConfig):
        if not rows:
            raise EmbedtuneError("no training pairs: the filter/split stage kept none (see pairs/manifest.json)")
        self.rows, self.queries, self.passages, self.cfg = rows, queries, passages, cfg
        self.steps_per_epoch = math.ceil(len(rows) / cfg.batch_size)
        self._perm_epoch, self._perm = -1, None

    def total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def batch(self, step: int) -> dict:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.rows), generator=g).tolist(), epoch
        idx = self._perm[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        rows = [self.rows[i] for i in idx]
        negatives = []
        for r in rows:
            ids = list(r["negative_ids"])
            if len(ids) > self.cfg.hard_negatives:
                pick = torch.randperm(len(ids), generator=g)[:self.cfg.hard_negatives].tolist()
                ids = [ids[i] for i in sorted(pick)]
            negatives.extend(ids)
        candidate_ids = [r["passage_id"] for r in rows] + negatives
        return {"queries": [self.queries[r["query_id"]] for r in rows],
                "candidates": [self.passages[p] for p in candidate_ids],
                "query_pids": torch.tensor([passage_hash(r["passage_id"]) for r in rows]),
                "candidate_pids": torch.tensor([passage_hash(p) for p in candidate_ids])}


def lr_lambda(total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def train_step(encoder, batch: dict, loss_cfg: LossConfig, device) -> torch.Tensor:
    unwrapped = getattr(encoder, "module", encoder)
    q = encoder({k: v.to(device) for k, v in unwrapped.tokenize(batch["queries"], "query").items()})
    d = encoder({k: v.to(device) for k, v in unwrapped.tokenize(batch["candidates"], "passage").items()})
    positive = torch.arange(len(batch["queries"]), device=device)
    return info_nce(q.float(), d.float(), positive, batch["query_pids"].to(device),
                    batch["candidate_pids"].to(device), loss_cfg.temperature, loss_cfg.symmetric)


def save_checkpoint(accelerator, encoder, out_dir: Path, step: int, keep: int) -> Path:
    """checkpoints/step-<n>/: accelerate state, the encoder (LoRA merged) and train_state.json; atomic."""
    final = out_dir / f"step-{step}"
    tmp = out_dir / f".step-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    if accelerator.is_main_process:
        accelerator.unwrap_model(encoder).save(tmp / "encoder")
        write_json({"step": step}, tmp / "train_state.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        old = sorted(out_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def run_training(model_cfg: ModelConfig, peft_cfg: PeftConfig, loss_cfg: LossConfig, cfg: TrainConfig,
                 logger_cfg: LoggerConfig, data: TrainData, out_dir: Path, run_name: str,
                 config_dict: dict) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.mixed_precision not in ("no", "bf16", "fp16"):
        raise EmbedtuneError(f"train.mixed_precision={cfg.mixed_precision} is not one of no, bf16, fp16")
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise EmbedtuneError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    encoder = Encoder.load(model_cfg)
    if peft_cfg.enabled:
        encoder.apply_lora(peft_cfg)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    total = data.total_steps()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, cfg.warmup_ratio))
    encoder, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    tracker = Tracker(logger_cfg, out_dir, run_name, config_dict, enabled=accelerator.is_main_process)
    encoder.train()
    started, pairs_done = time.time(), 0
    loss_sum, loss_steps = torch.zeros((), device=accelerator.device), 0  # mean loss since the last log
    bar = tqdm(range(total), desc="train", unit="step", disable=not accelerator.is_main_process)
    for step in bar:
        batch = data.batch(step)
        loss = train_step(encoder, batch, loss_cfg, accelerator.device)
        if not torch.isfinite(loss):
            raise EmbedtuneError(f"train: loss is {loss.item()} at step {step}; lower train.lr or raise "
                                 "loss.temperature (the last checkpoint is intact)")
        accelerator.backward(loss)
        grad_norm = accelerator.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pairs_done += len(batch["queries"])
        loss_sum += loss.detach()
        loss_steps += 1
        if (step + 1) % cfg.log_every == 0 or step == total - 1:
            loss_value = loss_sum.item() / loss_steps  # a sync point: only on logging steps
            loss_sum.zero_()
            loss_steps = 0
            elapsed = time.time() - started
            tracker.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                         "train/grad_norm": float(grad_norm), "train/pairs_per_s": pairs_done / elapsed,
                         "train/epoch": (step + 1) / data.steps_per_epoch}, step + 1)
            bar.set_postfix(loss=f"{loss_value:.3f}")
        if cfg.save_every and (step + 1) % cfg.save_every == 0 and step + 1 < total:
            save_checkpoint(accelerator, encoder, out_dir, step + 1, cfg.keep_checkpoints)
    last = save_checkpoint(accelerator, encoder, out_dir, total, cfg.keep_checkpoints)
    tracker.close()
    seconds = time.time() - started
    accelerator.end_training()
    return {"final": last.name, "steps": total, "pairs": pairs_done, "seconds": round(seconds, 1),
            "pairs_per_s": round(pairs_done / seconds, 2)}
