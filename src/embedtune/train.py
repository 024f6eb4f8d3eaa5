"""train: the one explicit contrastive training loop (Accelerate: one process, DDP or DeepSpeed ZeRO).

run_training: batch -> gradcache.contrastive_step (forward + backward, cached or not) -> finite check ->
clip, optimizer and schedule steps -> log -> eval -> checkpoint or stop. Batches are a pure function of
(seed, step) and the number of processes, so a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate.utils import set_seed
from tqdm import tqdm

from embedtune.accel import fill_bucket_sizes, make_accelerator, zero_stage
from embedtune.checkpoint import (
    TrainState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from embedtune.errors import EmbedtuneError
from embedtune.gradcache import contrastive_step
from embedtune.loss import LossConfig, passage_hash
from embedtune.manifest import not_in_key
from embedtune.model import Encoder, ModelConfig, PeftConfig
from embedtune.preemption import StopRequests
from embedtune.store import MappedTable, texts_of
from embedtune.tracking import LoggerConfig, Tracker


@dataclass
class TrainConfig:
    batch_size: int = 32              # queries per optimizer step, over all processes (the contrastive batch)
    hard_negatives: int = 3           # mined negatives per query in each step (0: in-batch only); config.yaml
                                      # sets it to mining.num_negatives, all that mining keeps: +0.006
                                      # [+0.004, +0.008] HPO dev nDCG@10 over 1 of 3 (README)
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
    init: str = "base"                # base | previous: a refresh starts from the previous version's weights and
                                      # reads the pairs of new and changed passages + a replay share (refresh.py)
    replay: float = 0.5               # with init=previous: share of the training rows drawn from earlier pairs
    log_every: int = not_in_key(5)    # steps between logged metrics (the loss is their mean)
    eval_every: Optional[int] = not_in_key(None)  # steps between dev-set evaluations logged during training
    save_every: Optional[int] = not_in_key(None)  # steps between checkpoints (the last step is always saved)
    keep_checkpoints: int = not_in_key(2)  # older checkpoints are deleted
    resume: bool = not_in_key(True)   # continue from this run's newest checkpoint of the same config
    halt_at_step: Optional[int] = not_in_key(None)  # save and stop after this step (a time-limited job); rerun resumes


class TrainData:
    """Training rows + query and passage texts. batch(step, rank, world) is deterministic in (seed, step,
    world): the global batch is the same whatever the rank; each rank takes every world-th row of it.

    `rows` is a list of dicts or a MappedTable (the run's, memory-mapped: a step copies out only its own
    rows), and `queries`/`passages` map ids to texts (dicts, or the run's memory-mapped TextLookups)."""

    def __init__(self, rows: list[dict] | MappedTable, queries: Mapping[str, str], passages: Mapping[str, str],
                 cfg: TrainConfig, world: int = 1):
        if not len(rows):
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

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.rows), generator=g)[:self.per_epoch]  # a tensor: 8 bytes per row

    def order(self, epoch: int) -> list[int]:
        """The rows of one epoch, in training order: a permutation seeded by (seed, epoch)."""
        return self._permutation(epoch).tolist()

    def global_rows(self, step: int) -> list[dict]:
        epoch, pos = divmod(step, self.steps_per_epoch)
        if epoch != self._perm_epoch:
            self._perm, self._perm_epoch = self._permutation(epoch), epoch
        chosen = self._perm[pos * self.cfg.batch_size:(pos + 1) * self.cfg.batch_size].tolist()
        if isinstance(self.rows, MappedTable):
            return self.rows.take(chosen).to_pylist()
        return [self.rows[i] for i in chosen]

    def batch(self, step: int, rank: int = 0) -> dict:
        rows = self.global_rows(step)
        global_size = len(rows)
        g = torch.Generator().manual_seed(self.cfg.seed * 7919 + step)
        picks = []  # drawn for the whole global batch, so the draw does not depend on the rank
        for r in rows:
            pick = list(range(len(r["negative_ids"])))
            if len(pick) > self.cfg.hard_negatives:
                pick = sorted(torch.randperm(len(pick), generator=g)[:self.cfg.hard_negatives].tolist())
            picks.append(pick)
        share = range(rank, len(rows), self.world)  # this rank's rows of the global batch
        rows, picks = [rows[i] for i in share], [picks[i] for i in share]
        negatives = [r["negative_ids"][i] for r, pick in zip(rows, picks) for i in pick]
        candidate_ids = [r["passage_id"] for r in rows] + negatives
        batch = {"queries": texts_of(self.queries, [r["query_id"] for r in rows]),
                 "candidates": texts_of(self.passages, candidate_ids),
                 "query_pids": torch.tensor([passage_hash(r["passage_id"]) for r in rows]),
                 "candidate_pids": torch.tensor([passage_hash(p) for p in candidate_ids]),
                 "global_size": global_size}
        if rows and rows[0].get("negative_teacher_scores") is not None:  # the score stage ran
            batch.update(teacher_lists(rows, picks, self.cfg.hard_negatives))
        return batch


def teacher_lists(rows: list[dict], picks: list[list[int]], hard_negatives: int) -> dict:
    """Per query of this rank: teacher scores of its positive and its chosen negatives ([B, 1 + H], nan
    where it has fewer) and their indices among this rank's candidates (positives first, then every row's
    negatives in row order; -1 where absent)."""
    width = 1 + hard_negatives
    scores = torch.full((len(rows), width), float("nan"))
    columns = torch.full((len(rows), width), -1, dtype=torch.long)
    next_negative = len(rows)
    for n, (r, pick) in enumerate(zip(rows, picks)):
        scores[n, 0], columns[n, 0] = r["positive_teacher_score"], n
        for j, i in enumerate(pick):
            scores[n, 1 + j], columns[n, 1 + j] = r["negative_teacher_scores"][i], next_negative + j
        next_negative += len(pick)
    return {"teacher": scores, "teacher_columns": columns}


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
    """Peak memory so far: allocated GPU memory on CUDA, resident set size of the process on CPU. On Linux the
    peak is the kernel's high-water mark of this program's memory (VmHWM), not getrusage's ru_maxrss, which
    survives exec and so starts at the peak of whatever process launched this one (a big launcher's size)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class TrainJob:
    """Everything that decides a training run: the config sections the loop reads, typed, in one object."""
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run_name: str = "embedtune"   # names the W&B run
    init_from: Optional[str] = None  # a saved encoder folder to start from (a refresh); None: the base model


@dataclass
class TrainResult:
    final: str                    # the newest checkpoint's folder name (step-<n>)
    steps: int                    # steps of the whole run
    pairs: int                    # pairs trained on in this call
    seconds: float
    processes: int
    main_process: bool
    pairs_dropped_per_epoch: int  # to give every process as many
    stop_reason: Optional[str] = None  # None: all steps done; else halt_at_step or the signal's name

    @property
    def halted(self) -> bool:
        return self.stop_reason is not None

    @property
    def pairs_per_s(self) -> float:
        return round(self.pairs / max(self.seconds, 1e-9), 2)

    def manifest(self) -> dict:
        """What the train stage's manifest records (halted runs also say why they stopped)."""
        out = {"final": self.final, "steps": self.steps, "pairs": self.pairs, "seconds": round(self.seconds, 1),
               "pairs_per_s": self.pairs_per_s, "processes": self.processes,
               "pairs_dropped_per_epoch": self.pairs_dropped_per_epoch}
        return {**out, "halted": True, "stop_reason": self.stop_reason} if self.halted else out

    def line(self) -> str:
        """What train prints at its end."""
        if self.halted:
            why = "halted" if self.stop_reason == "halt_at_step" else f"stopped by {self.stop_reason}"
            return f"train: {why}; saved {self.final} of {self.steps} steps; the same command resumes it"
        return (f"train: {self.steps} steps, {self.pairs:,} pairs in {self.seconds:.0f}s ({self.pairs_per_s:.1f} "
                f"pairs/s, {self.processes} process(es)); {self.pairs_dropped_per_epoch} pair(s) per epoch left out "
                "to give every process as many")


class MetricsWindow:
    """Loss, tokens and pairs summed since the last flush; `flush` turns them into the logged means/rates.
    The loss stays a device tensor until then: reading it is a sync point, so only logging steps pay it."""

    def __init__(self, device):
        self.loss, self.tokens = torch.zeros((), device=device), torch.zeros((), device=device)
        self.steps, self.pairs, self.started = 0, 0, time.time()

    def update(self, loss: torch.Tensor, tokens: int, pairs: int) -> None:
        self.loss += loss
        self.tokens += tokens
        self.steps, self.pairs = self.steps + 1, self.pairs + pairs

    def flush(self, accelerator) -> dict:
        elapsed = max(time.time() - self.started, 1e-9)
        metrics = {"train/loss": self.loss.item() / max(self.steps, 1),
                   "train/pairs_per_s": self.pairs / elapsed,
                   "train/tokens_per_s": float(accelerator.reduce(self.tokens, reduction="sum")) / elapsed}
        self.__init__(self.loss.device)
        return metrics


def check_finite(step: int, newest: Optional[Path], **values) -> None:
    """Stop before the update when the loss or gradient norm is NaN/inf (the same on every rank)."""
    for what, value in values.items():
        if value is not None and not torch.isfinite(torch.as_tensor(value)):
            raise EmbedtuneError(
                f"train: {what.replace('_', ' ')} is {float(value)} in step {step + 1}; stopped before applying it, "
                f"the newest checkpoint ({newest.name if newest else 'none yet'}) is intact; lower train.lr or "
                "raise loss.temperature")


def run_training(job: TrainJob, data: TrainData, out_dir: Path, key: str = "",
                 evaluator: Optional[Callable] = None) -> TrainResult:
    """Train `job` on `data`, checkpointing into `out_dir`. `key` names this configuration (a checkpoint is
    resumed only by the same key); evaluator(encoder) -> {metric: value} runs on the main process every
    train.eval_every steps."""
    cfg = job.train
    accelerator = make_accelerator(cfg)
    if data.world != accelerator.num_processes:
        data = TrainData(data.rows, data.queries, data.passages, cfg, accelerator.num_processes)
    if evaluator is not None and cfg.eval_every and zero_stage(accelerator) == 3:
        raise EmbedtuneError("train.eval_every is not supported under ZeRO-3 (weights are partitioned); "
                             "evaluate the checkpoints with `embedtune eval`")
    set_seed(cfg.seed)
    # full fine-tuning outside DeepSpeed keeps fp32 weights (AdamW on bf16 weights loses small updates)
    encoder = Encoder.load(job.model, path=job.init_from,
                           full_weights_training=not job.peft.enabled and zero_stage(accelerator) == 0)
    if cfg.gradient_checkpointing:
        encoder.enable_gradient_checkpointing()
    if job.peft.enabled:
        encoder.apply_lora(job.peft)
    fill_bucket_sizes(accelerator, encoder.backbone.config.hidden_size)
    state = TrainState(step=0, total=data.total_steps(), key=key)
    optimizer, scheduler = build_optimizer(encoder, cfg, state.total)
    encoder, optimizer, scheduler = accelerator.prepare(encoder, optimizer, scheduler)
    resumed = latest_checkpoint(out_dir, key) if cfg.resume else None
    if resumed is not None:
        # the saved state says why that run stopped there; this one goes on
        state = dataclasses.replace(load_checkpoint(accelerator, resumed), total=state.total, stop_reason=None)
        if accelerator.is_main_process:
            print(f"train: resuming from {resumed} (step {state.step} of {state.total})")
    main = accelerator.is_main_process
    tracker = Tracker(job.logger, out_dir, job.run_name, dataclasses.asdict(job), enabled=main)
    normalize = accelerator.unwrap_model(encoder).cfg.normalize
    window, started, pairs_done, newest = MetricsWindow(accelerator.device), time.time(), 0, resumed
    encoder.train()
    bar = tqdm(range(state.step, state.total), desc="train", unit="step", total=state.total - state.step,
               disable=not main)
    with StopRequests() as stop:  # SIGTERM/SIGUSR1: checkpoint after this step and stop
        for step in bar:
            batch = data.batch(step, accelerator.process_index)
            loss, tokens = contrastive_step(encoder, batch, job.loss, accelerator, cfg.chunk_size, cfg.grad_cache,
                                            normalize)
            grad_norm = accelerator.clip_grad_norm_(encoder.parameters(), cfg.grad_clip)
            check_finite(step, newest, loss=loss, gradient_norm=grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            window.update(loss, tokens, batch["global_size"])
            pairs_done += batch["global_size"]
            state.step = step + 1
            if cfg.log_every and (state.step % cfg.log_every == 0 or state.step == state.total):
                metrics = window.flush(accelerator)
                tracker.log({**metrics, "train/lr": scheduler.get_last_lr()[0],
                             "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                             "train/memory_mb": memory_mb(accelerator.device),
                             "train/epoch": state.step / data.steps_per_epoch}, state.step)
                bar.set_postfix(loss=f"{metrics['train/loss']:.3f}")
            if evaluator is not None and cfg.eval_every and state.step % cfg.eval_every == 0:
                maybe_evaluate(accelerator, encoder, evaluator, tracker, state.step)
            if state.step < state.total:
                if cfg.halt_at_step == state.step:
                    state.stop_reason = "halt_at_step"
                elif stop.agreed(accelerator):
                    state.stop_reason = stop.received or "a signal on another rank"
            periodic = cfg.save_every and state.step % cfg.save_every == 0
            if state.step == state.total or state.stop_reason or periodic:
                newest = save_checkpoint(accelerator, encoder, out_dir, state, cfg.keep_checkpoints)
                state.last_checkpoint = newest.name
            if state.stop_reason:
                break
    bar.close()
    tracker.close()
    seconds = time.time() - started
    accelerator.end_training()
    return TrainResult(final=newest.name, steps=state.total, pairs=pairs_done, seconds=seconds,
                       processes=accelerator.num_processes, main_process=main,
                       pairs_dropped_per_epoch=len(data.rows) - data.per_epoch,
                       stop_reason=state.stop_reason)


def maybe_evaluate(accelerator, encoder, evaluator: Callable, tracker: Tracker, step: int) -> None:
    """Dev-set metrics of the current weights, on the main process (the others wait)."""
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(encoder)
        unwrapped.eval()
        metrics = evaluator(unwrapped)
        tracker.log({f"dev/{k}": v for k, v in metrics.items() if k not in ("queries", "documents")}, step)
        encoder.train()
    accelerator.wait_for_everyone()
