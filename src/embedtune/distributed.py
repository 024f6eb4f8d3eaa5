"""Who am I among the workers, and the collectives they share. The only module that reads torchrun,
accelerate or SLURM variables, and the only one that calls torch.distributed's collectives."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

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
    """The one process that writes shared files: rank 0 of the joined process group, else of the launcher."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
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
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def group_rank() -> int:
    """This process's rank in the joined torch.distributed group (0 when it has joined none)."""
    return dist.get_rank() if group_size() > 1 else 0


def barrier() -> None:
    """Wait until every rank of the joined group gets here (nothing without a group)."""
    if group_size() > 1:
        dist.barrier()


def collective_device() -> torch.device:
    """Where tensors must sit for this group's collectives: the current GPU under NCCL, else the CPU."""
    if group_size() > 1 and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_max(value: int, device) -> int:
    """The largest `value` over the group's ranks."""
    if group_size() <= 1:
        return value
    tensor = torch.tensor([value], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor)


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum over the group's ranks (a new tensor; `tensor` itself when there is one process)."""
    if group_size() <= 1:
        return tensor
    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def gather_sizes(rows: int, device) -> list[int]:
    """Every rank's row count (ranks may hold different numbers of rows)."""
    if group_size() <= 1:
        return [rows]
    sizes = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([rows], dtype=torch.long, device=device))
    return [int(s) for s in sizes]


def all_gather_rows(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's rows (rank r holds sizes[r] of them, this one `local`), concatenated in rank order;
    no gradient."""
    pad = max(sizes) - local.shape[0]
    padded = torch.cat([local, local.new_zeros((pad, *local.shape[1:]))]) if pad else local.contiguous()
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[:n] for p, n in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    """All-gather rows; backward sums every rank's gradient for a row and hands it to the row's owner."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes, ctx.rank = sizes, dist.get_rank()
        return all_gather_rows(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = sum(ctx.sizes[:ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None


def gather_with_grad(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Rows of every rank, in rank order (`local` itself with one process). Differentiable for float rows:
    the gradient each rank computes for a row is summed and returned to the rank that owns the row."""
    if group_size() <= 1:
        return local
    if local.is_floating_point():
        return _GatherWithGrad.apply(local, sizes)
    return all_gather_rows(local, sizes)
