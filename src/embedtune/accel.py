"""The Accelerator for training, and the check that the launch config agrees with the Hydra config.

Precision, clipping and batch sizes are decided by `train.*`; a launch config (accelerate or DeepSpeed) may
repeat them but not contradict them. Gradient accumulation is the gradient-caching step's business
(train.grad_cache, train.chunk_size): a launch config that asks for accumulation is refused.
"""

from __future__ import annotations

import dataclasses

import torch

from embedtune.distributed import launcher_settings, world_size
from embedtune.errors import EmbedtuneError
from embedtune.precision import train_precision

MICRO_STEPS = 2  # accumulate entries per optimizer step (see gradcache.py)


def _refuse(what: str, launch_value, hydra_key: str, hydra_value) -> None:
    raise EmbedtuneError(
        f"the launch config sets {what}={launch_value} but {hydra_key}={hydra_value}: make them agree "
        f"(edit the accelerate/DeepSpeed config or pass {hydra_key}=...); embedtune will not guess which wins")


def check_launch(cfg, settings: dict) -> None:
    """Refuse launch settings that contradict train.* (settings as from distributed.launcher_settings)."""
    precision = settings.get("mixed_precision", "no")
    if precision != "no" and precision != cfg.mixed_precision:
        _refuse("mixed_precision", precision, "train.mixed_precision", cfg.mixed_precision)
    accumulation = settings.get("gradient_accumulation_steps", "1")
    if accumulation not in ("1", "auto"):
        raise EmbedtuneError(
            f"the launch config sets gradient_accumulation_steps={accumulation}: embedtune accumulates "
            "inside each step through gradient caching (train.grad_cache=true, train.chunk_size=...; "
            "train.batch_size is the whole contrastive batch); set it to 1 in the launch config")
    clipping = settings.get("gradient_clipping", "auto")
    if clipping != "auto" and float(clipping) != float(cfg.grad_clip):
        _refuse("gradient_clipping", clipping, "train.grad_clip", cfg.grad_clip)


def _check_deepspeed_config(cfg, ds: dict, local_batch: int) -> None:
    """Check a DeepSpeed config (also one from a json file) and fill what train.* decides."""
    accumulation = ds.get("gradient_accumulation_steps", "auto")
    if accumulation not in ("auto", 1, "1"):
        check_launch(cfg, {"gradient_accumulation_steps": str(accumulation)})
    ds["gradient_accumulation_steps"] = MICRO_STEPS
    clipping = ds.get("gradient_clipping", "auto")
    if clipping != "auto" and float(clipping) != float(cfg.grad_clip):
        _refuse("gradient_clipping", clipping, "train.grad_clip", cfg.grad_clip)
    ds["gradient_clipping"] = float(cfg.grad_clip)
    for name in ("bf16", "fp16"):
        enabled = ds.get(name, {}).get("enabled", "auto")
        if enabled is True and cfg.mixed_precision != name:
            _refuse(f"{name}.enabled", True, "train.mixed_precision", cfg.mixed_precision)
        if enabled is False and cfg.mixed_precision == name:
            _refuse(f"{name}.enabled", False, "train.mixed_precision", cfg.mixed_precision)
    if ds.get("optimizer") or ds.get("scheduler"):
        raise EmbedtuneError("the DeepSpeed config names an optimizer or scheduler: embedtune builds AdamW and "
                             "its schedule from train.* (remove them from the DeepSpeed config)")
    for key in ("train_micro_batch_size_per_gpu", "train_batch_size"):
        if ds.get(key, "auto") != "auto":
            ds.pop(key)  # sizes come from train.batch_size; DeepSpeed only checks them for consistency
    ds["train_micro_batch_size_per_gpu"] = local_batch


def make_accelerator(cfg):
    """An Accelerator for the training loop: train.mixed_precision, two micro-steps per optimizer step,
    the LR schedule stepped once per optimizer step, gloo when there is no GPU."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, GradientAccumulationPlugin, InitProcessGroupKwargs

    settings = launcher_settings()
    cfg = dataclasses.replace(cfg, mixed_precision=train_precision(cfg.mixed_precision,
                                                                   settings.get("mixed_precision", "no")))
    use_cpu = settings.get("use_cpu", "false").lower() == "true" or not torch.cuda.is_available()
    if cfg.mixed_precision == "fp16" and use_cpu:
        raise EmbedtuneError("train.mixed_precision=fp16 needs a GPU; use bf16 or no on CPU")
    check_launch(cfg, settings)
    handlers = [InitProcessGroupKwargs(backend="gloo")] if use_cpu and world_size() > 1 else []
    deepspeed = settings.get("deepspeed", "false").lower() == "true"
    # cpu=True would switch DeepSpeed off; DeepSpeed finds the CPU itself (DS_ACCELERATOR=cpu)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=use_cpu and not deepspeed,
                              kwargs_handlers=handlers,
                              gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=MICRO_STEPS),
                              step_scheduler_with_optimizer=False)
    if cfg.batch_size % accelerator.num_processes:
        raise EmbedtuneError(f"train.batch_size={cfg.batch_size} is not divisible by the "
                             f"{accelerator.num_processes} training processes")
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin  # one per process: a second training in it sees it filled
        filled, wanted = getattr(plugin, "embedtune_filled", None), (cfg.batch_size, cfg.grad_clip, cfg.mixed_precision)
        if filled is None:
            _check_deepspeed_config(cfg, plugin.deepspeed_config, cfg.batch_size // accelerator.num_processes)
            plugin.embedtune_filled = wanted
        elif filled != wanted:
            raise EmbedtuneError("a second training in this process with other train.batch_size, grad_clip or "
                                 "mixed_precision: DeepSpeed's config is per process; start a new process")
    return accelerator


def fill_bucket_sizes(accelerator, hidden_size: int) -> None:
    """DeepSpeed JSON "auto" bucket sizes from the encoder's hidden size (accelerate fills them only for a
    model with a top-level .config; ours wraps the backbone): the sizes HF's integration uses."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    sizes = {"reduce_bucket_size": hidden_size * hidden_size,
             "stage3_prefetch_bucket_size": int(0.9 * hidden_size * hidden_size),
             "stage3_param_persistence_threshold": 10 * hidden_size}
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value


def zero_stage(accelerator) -> int:
    """The DeepSpeed ZeRO stage (0 when not under DeepSpeed)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return int(plugin.zero_stage) if plugin is not None else 0
