"""train: the one explicit contrastive training loop (Accelerate: one process, DDP or DeepSpeed ZeRO).

run_training -> gradcache.contrastive_step (forward + backward, cached or not) -> clip, optimizer and
schedule steps -> metrics -> checkpoint. Batches are a pure function of (seed, step) and the number of
processes, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
from tqdm import tqdm

from embedtune.errors import EmbedtuneError
from embedtune.loss import LossConfig, passage_hash
from embedtune.model import Encoder, ModelConfig, PeftConfig
from embedtune.tracking import LoggerConfig, Tracker


@dataclass
class TrainConfig:
    batch_size: int = 32              # queries per optimizer step, over all processes (the contrastive batch)
    hard_negatives: int = 1           # mined negatives per query in each step (0: in-batch only)
    chunk_size: int = 32              # texts per forward pass, grouped by length (less padding)
    grad_cache: bool = False          # recompute chunks in backward: memory of one chunk, any batch size
    gradient_checkpointing: bool = False  # recompute activations inside each forward (less memory)
    epochs: float = 1.0               # passes over the training pairs (ignored when max_steps is set)
    max_steps: Optional[int] = None   # stop after this many steps
    lr: float = 3e-5                  # peak learning rate (LoRA usually wants ~10x more)
    weight_decay: float = 0.01        # AdamW decay (not on biases and norms)
    warmup_ratio: float = 0.1         # share of steps with linear warmup, then cosine decay to 0
    grad_clip: float = 1.0            # max global grad norm
    mixed_precision: str = "auto"     # auto (bf16 where the GPU/CPU computes it natively, else no) | no | bf16 | fp16 (GPU)
    seed: int = 42                    # data order, hard-negative choice, LoRA init and dropout
    log_every: int = 5                # steps between logged metrics (the loss is their mean)
    eval_every: Optional[int] = None  # steps between dev-set evaluations logged during training
    save_every: Optional[int] = None  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = 2         # older checkpoints are deleted
    resume: bool = True               # continue from this run's newest checkpoint of the same config
    halt_at_step: Optional[int] = None  # save and stop after this step (a time-limited job); rerun resumes


class TrainData:
    """Training rows + passage texts. batch(step, rank, world) is deterministic in (seed, step, world):
    the global batch is the same whatever the rank; each rank takes every world-th row of it."""

    def __init__(self, rows: list[dict], queries: dict[str, str], passages: dict[str, str], cfg: TrainConfig,
                 world: int = 1):
        if not rows:
            raise EmbedtuneError("no training pairs: the filter/split stage kept none (see pairs/manifest.json)")
        if len(rows) < world:
            raise EmbedtuneError(f"{len(rows)} training pairs cannot feed {world} processes: the "
                                 "filter/split stage kept too few (see pairs/manifest.json)")
        self.rows, self.queries, self.passages, self.cfg, self.world = rows, queries, passages, cfg, world
        # every epoch drops len % world rows (others each epoch), so every rank gets the same row count
        self.per_epoch = len(rows) - len(rows) % world
        self.steps_per_epoch = math.ceil(self.per_epoch / cfg.batch_size)
        self._perm_epoch, self._perm = -1, None

    def total_steps(self) -> int:
        if self.cfg.max_steps is not None:
            return self.cfg.max_steps
        return max(1, math.ceil(self.cfg.epochs * self.steps_per_epoch))

    def order(self, epoch: int) -> list[int]:
        """The rows of one epoch, in training order: a permutation seeded by (seed, epoch)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.rows), generator=g).tolist()[:self.per_epoch]

    def global_rows(self, step: int) -> list[dict]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm, self._perm_epoch = self.order(epoch), epoch
        return [self.rows[i] for i in self._perm[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size]]

    def batch(self, step: int, rank: int = 0) -> dict:
        rows = self.global_rows(step)
        global_size = len(rows)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        negatives = []  # drawn for the whole global batch, so the draw does not depend on the rank
        for r in rows:
            ids = list(r["negative_ids"])
            if len(ids) > self.cfg.hard_negatives:
                pick = torch.randperm(len(ids), generator=g)[:self.cfg.hard_negatives].tolist()
                ids = [ids[i] for i in sorted(pick)]
            negatives.append(ids)
        mine = range(rank, len(rows), self.world)
        rows, negatives = [rows[i] for i in mine], [n for i in mine for n in negatives[i]]
        candidate_ids = [r["passage_id"] for r in rows] + negatives
        return {"queries": [self.queries[r["query_id"]] for r in rows],
                "candidates": [self.passages[p] for p in candidate_ids],
                "query_pids": torch.tensor([passage_hash(r["passage_id"]) for r in rows]),
                "candidate_pids": torch.tensor([passage_hash(p) for p in candidate_ids]),
                "global_size": global_size}


def lr_lambda(total: int, warmup_ratio: float):
    warmup = int(total * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def build_optimizer(encoder, cfg: TrainConfig, total: int):
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")
    params = [(n, p) for n, p in encoder.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in params if not n.endswith(no_decay)], "weight_decay": cfg.weight_decay},
              {"params": [p for n, p in params if n.endswith(no_decay)], "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(total, cfg.warmup_ratio))


def memory_mb(device) -> float:
    """Peak memory so far: allocated GPU memory on CUDA, resident set size of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_training(model_cfg: ModelConfig, peft_cfg: PeftConfig, loss_cfg: LossConfig, cfg: TrainConfig,
                 logger_cfg: LoggerConfig, data: TrainData, out_dir: Path, run_name: str,
                 config_dict: dict, key: str = "", evaluator: Optional[Callable] = None) -> dict:
    """Train; `key` names this configuration (a checkpoint is resumed only by the same key);
    evaluator(encoder) -> {metric: value} is called on the main process every train.eval_every steps."""
    from accelerate.utils import set_seed

    from embedtune.accel import fill_bucket_sizes, make_accelerator, zero_stage
    from embedtune.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
    from embedtune.gradcache import contrastive_step
    from embedtune.preemption import StopRequests

    accelerator = make_accelerator(cfg)
    if data.world != accelerator.num_processes:
        data = TrainData(data.rows, data.queries, data.passages, cfg, accelerator.num_processes)
    if evaluator is not None and cfg.eval_every and zero_stage(accelerator) == 3:
        raise EmbedtuneError("train.eval_every is not supported under ZeRO-3 (weights are partitioned); "
                             "evaluate the checkpoints with `embedtune eval`")
    set_seed(cfg.seed)
    encoder = Encoder.load(model_cfg)
    if cfg.gradient_checkpointing:
        encoder.enable_gradient_checkpointing()
    if peft_cfg.enabled:
        encoder.apply_lora(peft_cfg)
    fill_bucket_sizes(accelerator, encoder.backbone.config.hidden_size)
    total = data.total_steps()
    optimizer, scheduler = build_optimizer(encoder, cfg, total)
    encoder, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    start = 0
    resumed = latest_checkpoint(out_dir, key) if cfg.resume else None
    if resumed is not None:
        start = load_checkpoint(accelerator, resumed)["step"]
        if accelerator.is_main_process:
            print(f"train: resuming from {resumed} (step {start} of {total})")
    tracker = Tracker(logger_cfg, out_dir, run_name, config_dict, enabled=accelerator.is_main_process)
    encoder.train()
    normalize = accelerator.unwrap_model(encoder).cfg.normalize
    started, pairs_done, window_pairs, window_start = time.time(), 0, 0, time.time()
    loss_sum, tokens = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    loss_steps, halted, last, stopped_by = 0, False, None, None
    bar = tqdm(range(start, total), desc="train", unit="step", initial=0, total=total - start,
               disable=not accelerator.is_main_process)
    with StopRequests() as stop:  # SIGTERM/SIGUSR1: checkpoint after this step and stop
        for step in bar:
            batch = data.batch(step, accelerator.process_index)
            loss, n_tokens = contrastive_step(encoder, batch, loss_cfg, accelerator, cfg.chunk_size,
                                              cfg.grad_cache, normalize)
            grad_norm = accelerator.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
            for what, value in (("loss", loss), ("gradient norm", grad_norm)):
                if value is not None and not torch.isfinite(torch.as_tensor(value)):  # the same on every rank
                    newest = last or resumed
                    raise EmbedtuneError(
                        f"train: {what} is {float(value)} in step {step + 1}; stopped before applying it, the newest "
                        f"checkpoint ({newest.name if newest else 'none yet'}) is intact; lower train.lr or raise "
                        "loss.temperature")
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            pairs_done += batch["global_size"]
            window_pairs += batch["global_size"]
            loss_sum += loss
            tokens += n_tokens
            loss_steps += 1
            if cfg.log_every and ((step + 1) % cfg.log_every == 0 or step == total - 1):
                loss_value = loss_sum.item() / loss_steps  # a sync point: only on logging steps
                all_tokens = float(accelerator.reduce(tokens, reduction="sum"))
                elapsed = max(time.time() - window_start, 1e-9)
                tracker.log({"train/loss": loss_value, "train/lr": scheduler.get_last_lr()[0],
                             "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                             "train/pairs_per_s": window_pairs / elapsed, "train/tokens_per_s": all_tokens / elapsed,
                             "train/memory_mb": memory_mb(accelerator.device),
                             "train/epoch": (step + 1) / data.steps_per_epoch}, step + 1)
                bar.set_postfix(loss=f"{loss_value:.3f}")
                loss_sum.zero_()
                tokens.zero_()
                loss_steps, window_pairs, window_start = 0, 0, time.time()
            if evaluator is not None and cfg.eval_every and (step + 1) % cfg.eval_every == 0:
                if accelerator.is_main_process:
                    unwrapped = accelerator.unwrap_model(encoder)
                    unwrapped.eval()
                    metrics = evaluator(unwrapped)
                    tracker.log({f"dev/{k}": v for k, v in metrics.items() if k not in ("queries", "documents")},
                                step + 1)
                    encoder.train()
                accelerator.wait_for_everyone()
            state = {"key": key, "total": total}
            halt = cfg.halt_at_step is not None and step + 1 == cfg.halt_at_step
            if step + 1 < total and (halt or stop.agreed(accelerator)):
                last = save_checkpoint(accelerator, encoder, out_dir, step + 1, cfg.keep_checkpoints, state)
                halted, stopped_by = True, None if halt else stop.received or "a signal on another rank"
                break
            if step + 1 == total or (cfg.save_every and (step + 1) % cfg.save_every == 0):
                last = save_checkpoint(accelerator, encoder, out_dir, step + 1, cfg.keep_checkpoints, state)
    bar.close()
    tracker.close()
    seconds = time.time() - started
    accelerator.end_training()
    if last is None:  # resumed from the last step: nothing left to do
        last = resumed
    return {"final": last.name, "steps": total, "pairs": pairs_done, "seconds": round(seconds, 1),
            "pairs_per_s": round(pairs_done / max(seconds, 1e-9), 2), "halted": halted, "stopped_by": stopped_by,
            "processes": accelerator.num_processes, "main_process": accelerator.is_main_process,
            "pairs_dropped_per_epoch": len(data.rows) - data.per_epoch}  # to give every process as many
