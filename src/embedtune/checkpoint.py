"""Training checkpoints: checkpoints/step-<n>/ holds the accelerate state (model, optimizer, scheduler,
every process's RNG), the encoder (LoRA merged, what eval/export read) and train_state.json (step, the
stage key it belongs to). Written under a temporary name and renamed, so a crash never leaves half of one."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Optional

from embedtune.errors import EmbedtuneError
from embedtune.io import write_json


def _steps(out_dir: Path) -> list[Path]:
    return sorted((p for p in Path(out_dir).glob("step-*") if (p / "train_state.json").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, encoder, out_dir: Path, step: int, keep: int, state: dict) -> Path:
    from embedtune.accel import zero_stage

    final = out_dir / f"step-{step}"
    tmp = out_dir / f".step-{step}.tmp"
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
        write_json({"step": step, **state}, tmp / "train_state.json")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for path in _steps(out_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out_dir: Path, key: str) -> Optional[Path]:
    """The newest finished checkpoint of the training run with stage key `key`, if any."""
    for path in reversed(_steps(out_dir)):
        if json.loads((path / "train_state.json").read_text()).get("key") == key:
            return path
    return None


def load_checkpoint(accelerator, path: Path) -> dict:
    """Restore model, optimizer, scheduler and RNG from `path`; returns its train_state.json. Every file is
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
    return json.loads((path / "train_state.json").read_text())
