"""Who am I among the workers? The only module that reads torchrun, accelerate or SLURM variables."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

from embedtune.errors import EmbedtuneError


@dataclass
class ShardConfig:
    index: Optional[int] = None  # this worker's shard; None = from RANK / SLURM_PROCID / SLURM_ARRAY_TASK_ID
    count: Optional[int] = None  # number of shards; None = from WORLD_SIZE / SLURM_NTASKS / array size


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError as e:
                raise EmbedtuneError(f"environment variable {name}={value!r} is not an integer") from e
    return None


def rank() -> int:
    """Global rank of this process (0 when not launched by torchrun, accelerate or srun)."""
    return _env_int("RANK", "SLURM_PROCID") or 0


def world_size() -> int:
    return _env_int("WORLD_SIZE", "SLURM_NTASKS") or 1


def local_rank() -> int:
    """Rank of this process on its node (picks its GPU)."""
    return _env_int("LOCAL_RANK", "SLURM_LOCALID") or 0


def is_main() -> bool:
    return rank() == 0


def shard_of_worker(cfg: ShardConfig) -> tuple[int, int]:
    """(index, count) of the shard this worker owns: explicit config, then SLURM array, then ranks."""
    if cfg.index is not None or cfg.count is not None:
        index, count = cfg.index, cfg.count
        if index is None or count is None:
            raise EmbedtuneError("set both shard.index and shard.count, or neither")
    elif _env_int("SLURM_ARRAY_TASK_COUNT") is not None:
        task = _env_int("SLURM_ARRAY_TASK_ID")
        if task is None:
            raise EmbedtuneError("SLURM_ARRAY_TASK_COUNT is set but SLURM_ARRAY_TASK_ID is not")
        # --array=0-6:2 runs tasks 0, 2, 4, 6: shards 0..3
        index = (task - (_env_int("SLURM_ARRAY_TASK_MIN") or 0)) // (_env_int("SLURM_ARRAY_TASK_STEP") or 1)
        count = _env_int("SLURM_ARRAY_TASK_COUNT")
        # several ranks inside one array task split that task's shard further
        index, count = index * world_size() + rank(), count * world_size()
    else:
        index, count = rank(), world_size()
    if not 0 <= index < count:
        raise EmbedtuneError(f"shard.index={index} is outside 0..{count - 1} (shard.count={count})")
    return index, count


def launcher_settings() -> dict:
    """What `accelerate launch` (its config file or flags) asked for, as it passes it on in the environment.
    Values are strings; a key is absent when the launcher did not set it."""
    names = {"mixed_precision": "ACCELERATE_MIXED_PRECISION",
             "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
             "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING",
             "deepspeed": "ACCELERATE_USE_DEEPSPEED",
             "deepspeed_config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE",
             "use_cpu": "ACCELERATE_USE_CPU"}
    return {key: os.environ[name] for key, name in names.items() if os.environ.get(name) not in (None, "")}


def init_process_group_from_env() -> bool:
    """Join the process group that `accelerate launch`/torchrun describe in the environment (gloo on CPU,
    NCCL on GPUs), for stages that split work across ranks; False when there is only one process."""
    import torch
    import torch.distributed as dist

    if world_size() <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend=backend)
    return True


def group_size() -> int:
    """Processes in the torch.distributed group this process has joined (1 when it has joined none)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
