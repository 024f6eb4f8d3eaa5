"""Training checkpoints: checkpoints/step-<n>/ holds the accelerate state (model, optimizer, scheduler,
every process's RNG), the encoder (LoRA merged, what eval/export read) and train_state.json (the
TrainState: step, total, the stage key it belongs to, why training stopped there). Written under a temporary
name and renamed, so a crash never leaves half of one."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from embedtune.accel import zero_stage
from embedtune.errors import EmbedtuneError
from embedtune.io import write_json


@dataclass
class TrainState:
    """Where a training run stands; saved with every checkpoint, so a resume knows its step and key (the
    model, optimizer, schedule and RNG are in the accelerate state beside it)."""
    step: int = 0                 # optimizer steps done
    total: int = 0                # steps of the whole run
    key: str = ""                 # the train stage's key: only the same configuration resumes from it
    last_checkpoint: Optional[str] = None  # the newest checkpoint before this one (step-<n>)
    stop_reason: Optional[str] = None      # why training stopped at this step: halt_at_step, SIGTERM, ...


def _steps(out_dir: Path) -> list[Path]:
    return sorted((p for p in Path(out_dir).glob("step-*") if (p / "train_state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def _by_age(out_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest written first: another training of the run (a refresh, a new config) may
    have stopped at a higher step than this one's newest."""
    return sorted(_steps(out_dir), key=lambda p: (p / "train_state.json").stat().st_mtime_ns)


def save_checkpoint(accelerator, encoder, out_dir: Path, state: TrainState, keep: int) -> Path:
    """checkpoints/step-<state.step>/ on every rank's behalf; the `keep` last written are kept."""
    final = out_dir / f"step-{state.step}"
    tmp = out_dir / f".step-{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp / "state"))
    accelerator.wait_for_everyone()  # every rank's RNG file is in tmp before rank 0 renames it
    unwrapped = accelerator.unwrap_model(encoder)
    if zero_stage(accelerator) == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None):
            if accelerator.is_main_process:
                unwrapped.save(tmp / "encoder")
    elif accelerator.is_main_process:
        unwrapped.save(tmp / "encoder")
    if accelerator.is_main_process:
        write_json(dataclasses.asdict(state), tmp / "train_state.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for path in _by_age(out_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out_dir: Path, key: str) -> Optional[Path]:
    """The newest finished checkpoint of the training run with stage key `key`, if any."""
    for path in reversed(_steps(out_dir)):
        if json.loads((path / "train_state.json").read_text()).get("key") == key:
            return path
    return None


def load_checkpoint(accelerator, path: Path) -> TrainState:
    """Restore model, optimizer, scheduler and RNG from `path`; returns its TrainState. Every file is
    read as plain tensors (torch's weights_only): a checkpoint holding other pickled objects is refused."""
    rng = path / "state" / f"random_states_{accelerator.process_index}.pkl"
    if not rng.exists():  # accelerate would skip it without a word
        print(f"train: warning: {path} has no RNG state for process {accelerator.process_index} (saved with fewer "
              "processes?); dropout will not match an uninterrupted run", flush=True)
    try:
        accelerator.load_state(str(path / "state"))
    except pickle.UnpicklingError as e:
        raise EmbedtuneError(f"{path}: a file of this checkpoint holds more than tensors; refusing to unpickle it "
                             f"({str(e).splitlines()[0]}). Delete the checkpoint to resume from an earlier one") from e
    return TrainState(**json.loads((path / "train_state.json").read_text()))
