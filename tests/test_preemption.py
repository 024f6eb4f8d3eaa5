"""SIGTERM / SIGUSR1 (SLURM preemption, scancel, `--signal` before a time limit) make training checkpoint
after the current step and exit cleanly; the same command resumes and ends with the weights of a run that
was never stopped. Real signals, sent to real processes (1 process, and 2 under `accelerate launch`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers import REPO, accelerate_launch_command
from helpers import weights

SCRIPT = str(REPO / "tests" / "dist_train.py")
STEPS = 60


def start(model, out, processes: int, *extra: str) -> subprocess.Popen:
    args = [SCRIPT, "--model", str(model), "--out", str(out), "--steps", str(STEPS), "--rows", "40", *extra]
    if processes == 1:
        command, env = [sys.executable, *args], {**os.environ, "OMP_NUM_THREADS": "1"}
    else:
        command, env = accelerate_launch_command(args, processes)
    return subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group: kill -9 hits every process


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant at once (torch's launcher starts its workers in their own
    process groups, so a group kill would leave them running)."""
    from pathlib import Path

    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents[int(stat.parent.name)] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    tree, grew = {pid}, True
    while grew:
        more = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def logged_steps(out) -> int:
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"train/loss"' in line)


# accelerate's launcher passes SIGTERM on to its workers but dies of SIGUSR1, so under a launcher the
# preemption signal is SIGTERM (slurm/train.sbatch turns its USR1 into a TERM for the job step)
# 2 processes under the launcher (the harder case); SIGUSR1 on one process: test_stop_requests_... below and
# the SLURM preemption test (tests/test_slurm.py)
@pytest.mark.slow
@pytest.mark.parametrize("processes,sig", [(2, signal.SIGTERM)], ids=["2-SIGTERM"])
def test_signal_checkpoints_and_the_rerun_resumes_to_the_same_weights(tmp_path, tiny_model_dir, processes, sig):
    whole, split = tmp_path / "whole", tmp_path / "split"
    proc = start(tiny_model_dir, split, processes)
    deadline = time.time() + 240
    while logged_steps(split) < 3 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before the signal was sent"
    proc.send_signal(sig)  # to the training process, or to the launcher, which passes SIGTERM on
    out, err = proc.communicate(timeout=240)
    stopped = json.loads((split / "result.json").read_text())
    assert stopped["halted"] and stopped["stop_reason"] == sig.name
    step = int(stopped["final"].split("-")[1])
    assert 3 <= step < STEPS and (split / stopped["final"] / "train_state.json").exists()
    if processes == 1:
        assert proc.returncode == 0, err[-3000:]  # a clean exit; under the launcher, the launcher's own code
    logs = {}
    for out_dir in (split, whole):  # the same command again resumes; then an uninterrupted run to compare
        again = start(tiny_model_dir, out_dir, processes)
        logs[out_dir] = again.communicate(timeout=300)
        assert again.returncode == 0, logs[out_dir][1][-3000:]
    assert f"train: resuming from {split / stopped['final']} (step {step} of {STEPS})" in "".join(logs[split])
    a, b = weights(whole / f"step-{STEPS}"), weights(split / f"step-{STEPS}")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-6, f"resumed run differs by {diff:.2e}"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1])  # 2 processes resume exactly in the SIGTERM and halted-run tests
def test_kill_9_mid_step_then_the_same_command_completes_with_the_same_weights(tmp_path, tiny_model_dir, processes):
    """SIGKILL to every process (no handler runs, a checkpoint may be half written): the rerun resumes from
    the newest complete checkpoint and ends where a run that was never killed ends."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    proc = start(tiny_model_dir, split, processes, "--save-every", "3")
    deadline = time.time() + 240
    while logged_steps(split) < 8 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before it was killed"
    kill_tree(proc.pid)
    proc.communicate(timeout=60)
    assert not (split / "result.json").exists()  # it did not finish
    killed_at = logged_steps(split)
    assert 8 <= killed_at < STEPS
    logs = {}
    for out_dir in (split, whole):
        again = start(tiny_model_dir, out_dir, processes, "--save-every", "3")
        logs[out_dir] = "".join(again.communicate(timeout=300))
        assert again.returncode == 0, logs[out_dir][-3000:]
    resumed = int(logs[split].split("train: resuming from ")[1].split("(step ")[1].split(" ")[0])
    assert resumed % 3 == 0 and 6 <= resumed <= killed_at
    assert not list(split.glob(".step-*.tmp"))  # a half-written checkpoint does not survive the next save
    a, b = weights(whole / f"step-{STEPS}"), weights(split / f"step-{STEPS}")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff <= 1e-6, f"resumed run differs by {diff:.2e}"


@pytest.mark.slow
def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, tiny_model_dir):
    """lr=1e4 blows the weights up within a few steps: training stops at the first non-finite loss or
    gradient norm, before the update, naming the step; every checkpoint left holds finite weights."""
    out = tmp_path / "nan"
    proc = start(tiny_model_dir, out, 1, "--save-every", "1", "--lr", "1e4")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    message = err.strip().splitlines()[-1]
    assert "EmbedtuneError: train: " in message and (" is nan in step " in message or " is inf in step " in message)
    failed_at = int(message.split(" in step ")[1].split(";")[0])
    newest = message.split("newest checkpoint (")[1].split(")")[0]
    assert newest == f"step-{failed_at - 1}" and 2 <= failed_at < STEPS
    assert not (out / f"step-{failed_at}").exists()
    kept = sorted(out.glob("step-*"))
    assert kept and newest in [p.name for p in kept]
    for checkpoint in kept:
        tensors = weights(checkpoint)
        assert all(bool(t.isfinite().all()) for t in tensors.values()), checkpoint


def test_stop_requests_catch_sigusr1_and_sigterm_then_restore_the_handlers():
    """SLURM's warning before a time limit is SIGUSR1 (`--signal=B:USR1@300`), scancel's is SIGTERM: inside
    StopRequests either one is recorded by name instead of ending the process; outside, the old handlers."""
    from accelerate import Accelerator

    from embedtune.preemption import StopRequests

    one_process = Accelerator(cpu=True)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        with StopRequests() as stop:
            assert not stop.agreed(one_process)
            os.kill(os.getpid(), sig)  # a real signal to this process
            time.sleep(0.05)
            assert stop.received == sig.name and stop.agreed(one_process)
    assert {sig: signal.getsignal(sig) for sig in before} == before
