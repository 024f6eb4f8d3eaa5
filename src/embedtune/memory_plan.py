"""`embedtune plan`: the predicted per-GPU memory peak of `embedtune train` for the composed config, and the
largest train.chunk_size that fits a GPU.

Model states (weights, gradients, optimizer) are counted from the real parameter shapes (LoRA adapters
included) with the bytes each ZeRO stage keeps per GPU; DeepSpeed's own estimators use the same counts
(tests/test_memory_plan.py checks they agree). Activations are not a formula: memory_sim.py runs the real
encoder's forward and backward on fake tensors and counts what lives. Predictions are tensor bytes, what
`torch.cuda.max_memory_allocated` reports; plan.reserve keeps the rest of the GPU for the CUDA context,
communication buffers and allocator fragmentation.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from embedtune.backbone import auto_dtype
from embedtune.errors import EmbedtuneError
from embedtune.gradcache import length_chunks
from embedtune.memory_sim import StepActivations, fake_copy, layer_count, meta_backbone, simulate_step
from embedtune.model import Encoder
from embedtune.precision import train_precision

GIB = 2 ** 30


@dataclass
class PlanConfig:
    launch: Optional[str] = None      # an accelerate launch config (launch/*.yaml): ZeRO stage, offload, processes
    gpus: Optional[int] = None        # training processes; null: the launch config's num_processes, else 1
    zero_stage: Optional[int] = None  # 0 (one GPU or DDP) | 1 | 2 | 3; null: the launch config's, else 0
    gpu_memory_gb: float = 80.0       # one GPU's memory (GiB): the largest chunk_size that fits it is searched
    reserve: float = 0.1              # share of it kept free (CUDA context, NCCL buffers, fragmentation)
    device: str = "cuda"              # cuda (a bf16 GPU) | cpu (this machine: what the tests measure)


@dataclass
class Target:
    """Where the training runs, as the plan assumes it."""
    gpus: int
    zero_stage: int
    offload_optimizer: bool
    offload_params: bool
    precision: str                   # no | bf16 | fp16
    device: str


def _launch_settings(path: str) -> dict:
    """zero_stage, offload flags, num_processes and mixed_precision from an accelerate launch config (and the
    DeepSpeed JSON it names)."""
    try:
        launch = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise EmbedtuneError(f"plan.launch={path}: cannot read it as an accelerate config: {e}") from e
    out = {"gpus": int(launch.get("num_processes", 1)), "precision": launch.get("mixed_precision"),
           "zero_stage": 0, "offload_optimizer": False, "offload_params": False}
    if launch.get("distributed_type") != "DEEPSPEED":
        return out
    ds = launch.get("deepspeed_config") or {}
    if ds.get("deepspeed_config_file"):
        file = Path(ds["deepspeed_config_file"])
        try:
            zero = json.loads(file.read_text()).get("zero_optimization", {})
        except (OSError, ValueError) as e:
            raise EmbedtuneError(f"plan.launch={path} names the DeepSpeed config {file}: {e}") from e
        ds = {"zero_stage": zero.get("stage", 0),
              "offload_optimizer_device": zero.get("offload_optimizer", {}).get("device", "none"),
              "offload_param_device": zero.get("offload_param", {}).get("device", "none")}
    out.update(zero_stage=int(ds.get("zero_stage", 0)),
               offload_optimizer=ds.get("offload_optimizer_device", "none") not in ("none", None),
               offload_params=ds.get("offload_param_device", "none") not in ("none", None))
    return out


def target_of(plan: PlanConfig, mixed_precision: str) -> Target:
    if plan.device not in ("cuda", "cpu"):
        raise EmbedtuneError(f"plan.device={plan.device} is not cuda or cpu")
    found = _launch_settings(plan.launch) if plan.launch else {}
    gpus = plan.gpus if plan.gpus is not None else found.get("gpus", 1)
    stage = plan.zero_stage if plan.zero_stage is not None else found.get("zero_stage", 0)
    if stage not in (0, 1, 2, 3) or gpus < 1:
        raise EmbedtuneError(f"plan.zero_stage={stage} / plan.gpus={gpus}: the stage is 0-3, at least one GPU")
    precision = mixed_precision
    if precision == "auto":
        precision = found.get("precision") or ("bf16" if plan.device == "cuda" else train_precision("auto"))
    return Target(gpus, stage, found.get("offload_optimizer", False), found.get("offload_params", False),
                  precision, plan.device)


@dataclass
class ParamCounts:
    frozen: int
    trainable: int
    adapters: int              # LoRA parameters (trainable), 0 without LoRA
    largest_module: int        # the most parameters any one module holds itself (what ZeRO-3 gathers at once)
    largest_trainable_module: int  # the same over modules with trainable parameters (their gradients gathered)
    largest_trainable: int     # the largest trainable tensor (CPU AdamW's temporaries)


def count_params(encoder) -> ParamCounts:
    params = {id(p): p for p in encoder.parameters()}.values()  # tied weights once
    trainable = [p for p in params if p.requires_grad]
    frozen = [p for p in params if not p.requires_grad]
    adapters = sum(p.numel() for n, p in encoder.named_parameters() if "lora_" in n)
    own = [[p for p in m.parameters(recurse=False)] for m in encoder.modules()]
    largest = max(sum(p.numel() for p in ps) for ps in own)
    largest_trainable = max((sum(p.numel() for p in ps if p.requires_grad) for ps in own), default=0)
    return ParamCounts(frozen=sum(p.numel() for p in frozen), trainable=sum(p.numel() for p in trainable),
                       adapters=adapters, largest_module=largest, largest_trainable_module=largest_trainable,
                       largest_trainable=max((p.numel() for p in trainable), default=0))


def weight_dtype(cfg, t: Target, stage: int) -> str:
    """The dtype the weights are trained in on the target (what model.dtype=auto and DeepSpeed make of it)."""
    half = t.precision in ("bf16", "fp16")
    if stage > 0 and half:
        return "bfloat16"  # DeepSpeed runs the module in 16 bits (fp32 masters sit in the optimizer)
    if cfg.model.dtype != "auto":
        return cfg.model.dtype
    auto = auto_dtype(on_bf16_gpu=t.device == "cuda", full_weights_training=not cfg.peft.enabled and stage == 0)
    return "bfloat16" if auto == torch.bfloat16 else "float32"


def model_states(cfg, c: ParamCounts, t: Target, stage: int) -> dict[str, int]:
    """Bytes per GPU of weights, gradients, optimizer state and the optimizer step's temporaries.
    Outside DeepSpeed: weights as loaded, gradients and AdamW's two moments in the trainable dtype (DDP adds
    a bucket copy of the gradients). Under DeepSpeed with bf16/fp16: 16-bit weights and gradients, plus fp32
    master weights, fp32 gradients and both moments (16 bytes per trainable parameter), partitioned over GPUs
    from stage 1 (optimizer), 2 (+ gradients), 3 (+ weights; the largest module is gathered whole)."""
    n = t.gpus
    loaded = 2 if weight_dtype(cfg, t, stage) == "bfloat16" else 4
    if stage == 0:
        b = 4 if cfg.peft.enabled else loaded  # PEFT keeps adapters in fp32 on a 16-bit base
        step = c.trainable * b if t.device == "cuda" else 2 * c.largest_trainable * b  # foreach vs per tensor
        return {"weights": c.frozen * loaded + c.trainable * b,
                "gradients": c.trainable * b * (2 if n > 1 else 1),
                "optimizer": 2 * c.trainable * b, "step": step}
    half = loaded
    states = 16 if half == 2 else 8  # fp32 master, gradients, two moments (fp32 training: the moments only)
    total = c.frozen + c.trainable
    gathered = c.largest_module * half if stage == 3 else 0
    gathered_grads = c.largest_trainable_module * half if stage == 3 else 0
    weights = (0 if t.offload_params else total * half / n) if stage == 3 else total * half
    if t.offload_optimizer:
        gradients, optimizer, step = 0, 0, 0  # gradients go to the CPU optimizer as they are reduced
    else:
        # stage 3 reduces 16-bit gradients straight into the fp32 partition (DeepSpeed's own estimate: 18 bytes
        # per parameter over the GPUs); stage 2 keeps a 16-bit partition too (2 + 18 / GPUs)
        gradients = 0 if stage == 3 else c.trainable * half / (n if stage == 2 else 1)
        optimizer, step = states * c.trainable / n, 4 * c.trainable / n
    return {"weights": int(weights + gathered), "gradients": int(gradients + gathered_grads),
            "optimizer": int(optimizer), "step": int(step)}


def _encoder(cfg, t: Target, checkpointing: bool, layers: Optional[int] = None):
    """The encoder train would build, on the meta device (no weights): dtype as on the target, LoRA,
    checkpointing; with only `layers` blocks when given."""
    half_deepspeed = t.zero_stage > 0 and t.precision in ("bf16", "fp16")
    model_cfg = dataclasses.replace(cfg.model, dtype=weight_dtype(cfg, t, t.zero_stage))
    encoder = Encoder.load(model_cfg, backbone_loader=functools.partial(meta_backbone, layers=layers))
    if checkpointing:
        encoder.enable_gradient_checkpointing()
    if cfg.peft.enabled:
        with torch.device("meta"):
            encoder.apply_lora(cfg.peft)
        if half_deepspeed:
            encoder.to(torch.bfloat16)  # DeepSpeed casts the adapters too
    return encoder


class Simulator:
    """Activations of a training step of the full-depth encoder. Blocks repeat, so what a step keeps and its
    peak grow by the same amount per block: a model deeper than 3 blocks is simulated with 2 and with 3 and
    the difference extrapolated (an 8B model in a second, not minutes)."""

    def __init__(self, cfg, t: Target, checkpointing: bool, depth: Optional[int]):
        from torch._subclasses.fake_tensor import FakeTensorMode

        self.depth = depth
        self.grad_cache = cfg.train.grad_cache
        self.autocast = t.zero_stage == 0 and t.precision in ("bf16", "fp16")
        self.grads_in_step = t.zero_stage == 0  # DeepSpeed keeps gradients in its own partitions
        self.sims = {}
        for layers in ((2, 3) if depth is not None and depth > 3 else (None,)):
            fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
            self.sims[layers] = (fake_copy(_encoder(cfg, t, checkpointing, layers), fake_mode), fake_mode)

    def __call__(self, chunks: list[tuple[int, int]]) -> StepActivations:
        runs = {k: simulate_step(e, m, chunks, self.grad_cache, self.autocast, self.grads_in_step)
                for k, (e, m) in self.sims.items()}
        if None in runs:
            return runs[None]
        more = self.depth - 2
        return StepActivations(peak=runs[2].peak + more * (runs[3].peak - runs[2].peak),
                               grads=runs[2].grads + more * (runs[3].grads - runs[2].grads))


@dataclass
class Plan:
    target: Target
    counts: ParamCounts
    states: dict[int, dict[str, int]]          # ZeRO stage -> model states
    activations: dict[bool, StepActivations]   # checkpointing -> activations of the step's chunks
    loss_bytes: int                            # embeddings cached for the loss, scores, their gradients
    chunks: list[tuple[int, int]]              # (texts, tokens) of the chunks simulated
    fits: dict[bool, int]                      # checkpointing -> largest chunk_size that fits (0: not even 1)
    budget: int

    def peak(self, checkpointing: bool, stage: Optional[int] = None,
             activations: Optional[StepActivations] = None) -> int:
        """The larger of the backward peak and the optimizer step's, for `stage` (default: the target's)."""
        stage = self.target.zero_stage if stage is None else stage
        s, a = self.states[stage], activations or self.activations[checkpointing]
        states = s["weights"] + s["gradients"] + s["optimizer"]
        # a.grads: gradients the simulation counted as they grew (outside DeepSpeed); not counted twice
        backward = states - a.grads + a.peak + self.loss_bytes
        return max(backward, states + s["step"])


def _chunks(cfg, local_queries: int, chunk_size: int, multiple: int) -> list[tuple[int, int]]:
    """(texts, tokens) of the chunks one step embeds on one GPU, cut as gradcache.plan cuts them (nearly equal
    runs), every text at its max length (the worst case) padded to `multiple`; with gradient caching only the
    largest query and passage chunk (one lives at a time)."""
    out = []
    for n, tokens in ((local_queries, cfg.model.query_max_length),
                      (local_queries * (1 + cfg.train.hard_negatives), cfg.model.passage_max_length)):
        sizes = [len(run) for run in length_chunks([0] * n, math.ceil(n / chunk_size))]
        padded = -(-tokens // multiple) * multiple
        out += [(max(sizes), padded)] if cfg.train.grad_cache else [(size, padded) for size in sizes]
    return out


def _loss_bytes(cfg, t: Target, hidden: int, local_queries: int) -> int:
    """fp32 embeddings of the step (local, and gathered across GPUs for the loss), their gradients, and the
    local queries' score matrix against every candidate (and query) with its softmax and gradient: an upper
    bound (with gradient caching the scores are freed before the chunks are replayed)."""
    local = local_queries * (2 + cfg.train.hard_negatives)
    gathered = t.gpus * local if t.gpus > 1 else 0
    candidates = t.gpus * local_queries * (1 + cfg.train.hard_negatives)
    embeddings = 4 * hidden * 2 * (local + gathered)
    return int(embeddings + 3 * 4 * local_queries * (candidates + t.gpus * local_queries))


def make_plan(cfg, plan_cfg: PlanConfig) -> Plan:
    t = target_of(plan_cfg, cfg.train.mixed_precision)
    if cfg.train.batch_size % t.gpus:
        raise EmbedtuneError(f"train.batch_size={cfg.train.batch_size} is not divisible by {t.gpus} GPUs")
    local_queries = cfg.train.batch_size // t.gpus
    multiple = 8 if t.device == "cuda" else 1  # gradcache pads chunks to a multiple of 8 on GPUs
    whole = _encoder(cfg, t, checkpointing=False)
    counts = count_params(whole)
    depth = layer_count(whole.backbone.config)
    states = {stage: model_states(cfg, counts, t, stage) for stage in (0, 1, 2, 3)}
    budget = int(plan_cfg.gpu_memory_gb * GIB * (1 - plan_cfg.reserve))
    chunks = _chunks(cfg, local_queries, cfg.train.chunk_size, multiple)
    plan = Plan(t, counts, states, {}, _loss_bytes(cfg, t, int(whole.backbone.config.hidden_size), local_queries),
                chunks, {}, budget)
    for checkpointing in (True, False):
        simulate = Simulator(cfg, t, checkpointing, depth)
        plan.activations[checkpointing] = simulate(chunks)
        if t.device == "cuda" and cfg.train.grad_cache:
            plan.fits[checkpointing] = _largest_chunk(cfg, plan, simulate, local_queries, checkpointing, multiple)
    return plan


def _largest_chunk(cfg, plan: Plan, simulate: Simulator, local_queries: int, checkpointing: bool,
                   multiple: int) -> int:
    """The largest chunk_size whose predicted peak fits the budget (0: not even 1). The peak grows with the
    chunk, nearly on a line (every tensor is per text): the line's answer, then bisection to the exact one."""
    most = local_queries * (1 + cfg.train.hard_negatives)  # larger chunks change nothing

    @functools.lru_cache(maxsize=None)
    def peak(size: int) -> int:
        return plan.peak(checkpointing, activations=simulate(_chunks(cfg, local_queries, size, multiple)))

    def fits(size: int) -> bool:
        return peak(size) <= plan.budget

    if not fits(1):
        return 0
    at = min(cfg.train.chunk_size, most)
    slope = (plan.peak(checkpointing) - peak(1)) / (at - 1) if at > 1 else 0
    guess = min(most, max(1, int(1 + (plan.budget - peak(1)) / slope))) if slope > 0 else most
    lo, hi = (guess, most + 1) if fits(guess) else (1, guess)  # fits(lo); hi does not fit (or is past most)
    if lo < most and not fits(lo + 1):  # the line is nearly exact: usually its answer is the answer
        return lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def format_plan(cfg, p: Plan) -> str:
    t, c = p.target, p.counts
    where = (f"{t.gpus} GPU{'s' if t.gpus > 1 else ''}" if t.device == "cuda" else "this CPU") + \
        (f", ZeRO-{t.zero_stage}" if t.zero_stage else (", DDP" if t.gpus > 1 else ""))
    offload = ", ".join(x for x, on in (("optimizer", t.offload_optimizer), ("parameters", t.offload_params)) if on)
    adapters = f", LoRA r={cfg.peft.r}: {c.adapters / 1e6:.2f}M trainable" if cfg.peft.enabled else ""
    (q_texts, q_tokens), (p_texts, p_tokens) = p.chunks[0], p.chunks[-1]
    lines = [f"embedtune plan: {cfg.model.name}: {(c.frozen + c.trainable) / 1e6:.1f}M parameters{adapters}; "
             f"{where}{', offloaded: ' + offload if offload else ''}; precision {t.precision}",
             f"one step per GPU: {cfg.train.batch_size // t.gpus} queries x (1 positive + "
             f"{cfg.train.hard_negatives} hard negatives); chunks of {q_texts} queries x {q_tokens} tokens and "
             f"{p_texts} passages x {p_tokens} tokens (every text at its max length); gradient caching "
             f"{'on' if cfg.train.grad_cache else 'off'}",
             "", "| per GPU, GiB | ZeRO-0 | ZeRO-1 | ZeRO-2 | ZeRO-3 |", "| --- | ---: | ---: | ---: | ---: |"]
    for key, label in (("weights", "weights"), ("gradients", "gradients"), ("optimizer", "optimizer state")):
        lines.append(f"| {label} | " + " | ".join(_gib(p.states[s][key]) for s in range(4)) + " |")
    if cfg.peft.enabled:
        only = dataclasses.replace(c, frozen=0, trainable=c.adapters, largest_module=0, largest_trainable_module=0)
        rows = [model_states(cfg, only, t, s) for s in range(4)]
        lines.append("| of which LoRA adapters | " +
                     " | ".join(_gib(x["weights"] + x["gradients"] + x["optimizer"]) for x in rows) + " |")
    for ck in (True, False):
        a = p.activations[ck]
        lines.append(f"| activations + loss, checkpointing {'on' if ck else 'off'} | " +
                     " | ".join([_gib(a.peak - a.grads + p.loss_bytes)] * 4) + " |")
    for ck in (True, False):
        lines.append(f"| **peak**, checkpointing {'on' if ck else 'off'} | " +
                     " | ".join(_gib(p.peak(ck, s)) for s in range(4)) + " |")
    chosen = cfg.train.gradient_checkpointing
    lines += ["", f"activations are simulated for ZeRO-{t.zero_stage}'s dtypes (the other columns reuse them)",
              f"this config (checkpointing {'on' if chosen else 'off'}, chunk_size {cfg.train.chunk_size}): "
              f"predicted peak {_gib(p.peak(chosen))} GiB per GPU"]
    if t.device == "cuda" and not cfg.train.grad_cache:
        lines.append("train.grad_cache=false: memory grows with train.batch_size, whatever the chunk_size")
    for ck, size in p.fits.items():
        runs = _chunks(cfg, cfg.train.batch_size // t.gpus, size, 8)[-1][0] if size else 0
        what = (f"largest train.chunk_size={size} (the trainer then embeds passages {runs} at a time)" if size
                else "does not fit even at chunk_size=1")
        lines.append(f"in {_gib(p.budget)} GiB usable of each GPU, checkpointing {'on' if ck else 'off'}: {what}")
    return "\n".join(lines)


def run_plan(cfg) -> None:
    print(format_plan(cfg, make_plan(cfg, cfg.plan)))
