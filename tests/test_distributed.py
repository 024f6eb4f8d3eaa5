"""distributed.py: which shard this worker owns, from config, torchrun/accelerate or SLURM variables."""

from __future__ import annotations

import pytest

from embedtune.distributed import ShardConfig, is_main, rank, shard_of_worker, world_size
from embedtune.errors import EmbedtuneError

LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS",
                 "SLURM_LOCALID", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                 "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP", "SLURM_ARRAY_JOB_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Each test starts as a plain single process, whatever launched pytest."""
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def setenv(monkeypatch, **values):
    for name, value in values.items():
        monkeypatch.setenv(name, str(value))


def test_single_process_defaults():
    assert (rank(), world_size(), is_main()) == (0, 1, True)
    assert shard_of_worker(ShardConfig()) == (0, 1)


def test_explicit_config_wins_over_environment(monkeypatch):
    setenv(monkeypatch, RANK=1, WORLD_SIZE=2, SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_COUNT=4)
    assert shard_of_worker(ShardConfig(index=2, count=5)) == (2, 5)


def test_torchrun_ranks(monkeypatch):
    setenv(monkeypatch, RANK=3, WORLD_SIZE=4, LOCAL_RANK=1)
    assert (rank(), world_size(), is_main()) == (3, 4, False)
    assert shard_of_worker(ShardConfig()) == (3, 4)


def test_slurm_tasks(monkeypatch):
    setenv(monkeypatch, SLURM_PROCID=1, SLURM_NTASKS=2)
    assert (rank(), world_size()) == (1, 2)
    assert shard_of_worker(ShardConfig()) == (1, 2)


def test_torchrun_inside_srun_uses_torchrun_ranks(monkeypatch):
    # one srun task per node launches torchrun: RANK/WORLD_SIZE are the global process numbers
    setenv(monkeypatch, RANK=5, WORLD_SIZE=8, SLURM_PROCID=1, SLURM_NTASKS=2)
    assert shard_of_worker(ShardConfig()) == (5, 8)


def test_empty_variables_are_ignored(monkeypatch):
    setenv(monkeypatch, RANK="", WORLD_SIZE="", SLURM_PROCID=1, SLURM_NTASKS=3)
    assert shard_of_worker(ShardConfig()) == (1, 3)


def test_slurm_array_task(monkeypatch):
    # sbatch --array=5-8: task ids 5..8, four shards
    setenv(monkeypatch, SLURM_ARRAY_TASK_ID=7, SLURM_ARRAY_TASK_MIN=5, SLURM_ARRAY_TASK_MAX=8,
           SLURM_ARRAY_TASK_COUNT=4, SLURM_PROCID=0, SLURM_NTASKS=1)
    assert shard_of_worker(ShardConfig()) == (2, 4)


def test_slurm_array_without_min_starts_at_zero(monkeypatch):
    setenv(monkeypatch, SLURM_ARRAY_TASK_ID=2, SLURM_ARRAY_TASK_COUNT=3)
    assert shard_of_worker(ShardConfig()) == (2, 3)


def test_slurm_array_with_ranks_inside_covers_every_shard_once(monkeypatch):
    # --array=0-2 with 2 processes per task: 6 shards, each (task, rank) owns a different one
    owned = []
    for task in range(3):
        for r in range(2):
            setenv(monkeypatch, SLURM_ARRAY_TASK_ID=task, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_COUNT=3,
                   RANK=r, WORLD_SIZE=2)
            owned.append(shard_of_worker(ShardConfig()))
    assert {count for _, count in owned} == {6}
    assert sorted(index for index, _ in owned) == list(range(6))


def test_slurm_array_with_step(monkeypatch):
    owned = []
    for task in (0, 2, 4, 6):
        setenv(monkeypatch, SLURM_ARRAY_TASK_ID=task, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_MAX=6,
               SLURM_ARRAY_TASK_STEP=2, SLURM_ARRAY_TASK_COUNT=4)
        owned.append(shard_of_worker(ShardConfig()))
    assert owned == [(0, 4), (1, 4), (2, 4), (3, 4)]


@pytest.mark.parametrize("index, count, match", [
    (1, None, "set both shard.index and shard.count"),
    (None, 3, "set both shard.index and shard.count"),
    (3, 3, r"shard.index=3 is outside 0..2"),
    (-1, 3, r"shard.index=-1 is outside 0..2"),
    (0, 0, r"shard.index=0 is outside"),
])
def test_invalid_explicit_shards(index, count, match):
    with pytest.raises(EmbedtuneError, match=match):
        shard_of_worker(ShardConfig(index=index, count=count))


def test_rank_outside_world_is_an_error(monkeypatch):
    setenv(monkeypatch, RANK=4, WORLD_SIZE=4)
    with pytest.raises(EmbedtuneError, match="shard.index=4 is outside 0..3"):
        shard_of_worker(ShardConfig())


def test_array_task_below_min_is_an_error(monkeypatch):
    setenv(monkeypatch, SLURM_ARRAY_TASK_ID=1, SLURM_ARRAY_TASK_MIN=2, SLURM_ARRAY_TASK_COUNT=3)
    with pytest.raises(EmbedtuneError, match="outside"):
        shard_of_worker(ShardConfig())
