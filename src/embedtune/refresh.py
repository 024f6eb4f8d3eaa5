"""Refreshing a tuned model after its corpus changed (train.init=previous): training starts from the previous
version's weights (versions/<n>/encoder) and reads the pairs of passages added or changed since that version,
plus a replayed share of the others, so the model learns what is new without forgetting what it knew; a full
retrain from the base model reads every pair again. When nothing was added or changed (documents were only
removed), the previous weights are still right: the training is that version's encoder, unchanged, and the
vectors users stored from it stay valid (export's re-embedding plan says so)."""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Optional

from embedtune.config import Config
from embedtune.errors import EmbedtuneError
from embedtune.manifest import load_manifest
from embedtune.runs import RunFolder
from embedtune.store import MappedTable
from embedtune.train import TrainJob
from embedtune.versions import fresh_passages, version_folder


def training_rows(run: RunFolder, cfg: Config, job: TrainJob) -> tuple[MappedTable | list[dict], Optional[dict]]:
    """What train reads: every pair from the base model, or for a refresh (train.init=previous, with a version
    trained on another state of the corpus) the refresh's rows, `job` set to start from that version, and what
    was chosen ({version, new, replayed, earlier})."""
    rows = run.training_table(cfg)
    start = run.init_version(cfg)
    if cfg.train.init == "previous" and start is None:
        print("train: train.init=previous, but no earlier version was trained on another state of the corpus: "
              "starting from the base model")
    if start is None:
        return rows, None
    job.init_from = str(version_folder(run.root, start) / "encoder")
    fresh = fresh_passages(run.root, start, run.passages, load_manifest(run.passages)["files"])
    rows, counts = refresh_rows(rows, fresh, cfg.train.replay, cfg.train.seed)
    print(f"train: refresh of version {start['version']} ({start['weights']}): {counts['new']:,} pairs of new or "
          f"changed passages + {counts['replayed']:,} of {counts['earlier']:,} earlier pairs replayed")
    return rows, {"version": start["version"], **counts}


def refresh_rows(table: MappedTable, fresh: set[str], replay: float, seed: int) -> tuple[list[dict], dict]:
    """The training rows of a refresh: every row whose positive passage is in `fresh`, and a seeded sample of
    the others making up `replay` of the result (0: new pairs only; 1: every earlier pair too)."""
    if not 0 <= replay <= 1:
        raise EmbedtuneError(f"train.replay={replay} must be in [0, 1]")
    passage_ids = [p for batch in table.column_batches("passage_id") for p in batch]
    new = [n for n, p in enumerate(passage_ids) if p in fresh]
    old = [n for n, p in enumerate(passage_ids) if p not in fresh]
    wanted = len(old) if replay >= 1 else min(len(old), round(len(new) * replay / (1 - replay)))
    chosen = sorted(new + random.Random(seed).sample(old, wanted)) if new else []
    rows = table.take(chosen).to_pylist() if chosen else []
    return rows, {"new": len(new), "replayed": wanted if new else 0, "earlier": len(old)}


def reuse_encoder(encoder: Path, checkpoints: Path) -> str:
    """Nothing new to learn: the previous version's encoder becomes this training's final checkpoint
    (step-0, copied whole under a temporary name, then renamed). Returns the checkpoint's name."""
    final = checkpoints / "step-0"
    work = checkpoints / ".step-0.tmp"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(encoder, work / "encoder")
    shutil.rmtree(final, ignore_errors=True)
    work.rename(final)
    return final.name
