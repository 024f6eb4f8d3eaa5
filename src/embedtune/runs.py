"""The run folder, and each stage's bookkeeping: the folder it writes, the config sections and upstream
manifests its key is made of, whether it is up to date. The stages and `embedtune status` share these
definitions, so status says exactly what `embedtune run` would redo."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from embedtune.distributed import launcher_settings
from embedtune.errors import EmbedtuneError
from embedtune.manifest import MANIFEST, Stage, load_manifest
from embedtune.precision import train_precision

STAGE_NAMES = ("prepare", "generate", "filter", "mine", "train", "eval", "export")
UPSTREAM = {"generate": "prepare", "filter": "generate", "mine": "filter", "train": "mine", "eval": "train",
            "export": "train"}


class RunFolder:
    def __init__(self, cfg):
        self.base = Path(cfg.paths.runs) / cfg.run_name
        self.root = self.base / "points" / cfg.point if cfg.point else self.base  # sweep points: sweep.py
        self.passages = self.root / "passages"
        self.queries = self.root / "queries"
        self.pairs = self.root / "pairs"
        self.negatives = self.root / "negatives"
        self.checkpoints = self.root / "checkpoints"
        self.model = self.root / "model"
        self.eval = self.root / "eval"
        self.benchmarks = self.root / "benchmarks"
        self.cache = self.root / "cache" / "embeddings"

    def folder(self, stage: str) -> Path:
        return {"prepare": self.passages, "generate": self.queries, "filter": self.pairs, "mine": self.negatives,
                "train": self.checkpoints, "eval": self.eval, "export": self.model}[stage]


# settings of `train` that do not change the trained weights stay out of its key
SAME_WEIGHTS = dict(log_every=0, eval_every=None, save_every=None, keep_checkpoints=0, resume=True, halt_at_step=None)


def stage_of(cfg, name: str) -> Stage:
    """The Stage (folder, key) that `name` has under `cfg`; an error if an upstream stage has not run."""
    from embedtune.generate.runner import generate_stage

    run = RunFolder(cfg)
    if name == "prepare":
        return Stage("prepare", run.passages, [cfg.corpus, cfg.model.name], {})
    if name == "generate":
        return generate_stage(cfg.generator, run.queries, load_manifest(run.passages))
    if name == "filter":
        config = [cfg.filter, cfg.model if cfg.filter.roundtrip_top_k else None]
        return Stage("filter", run.pairs, config, {"queries": load_manifest(run.queries)})
    if name == "mine":
        return Stage("mine", run.negatives, [cfg.mining, cfg.model], {"pairs": load_manifest(run.pairs)})
    if name == "train":
        precision = train_precision(cfg.train.mixed_precision, launcher_settings().get("mixed_precision", "no"))
        train = dataclasses.replace(cfg.train, **SAME_WEIGHTS, mixed_precision=precision)  # auto: as resolved here
        config = [cfg.model, cfg.peft, cfg.loss, train]
        return Stage("train", run.checkpoints, config, {"negatives": load_manifest(run.negatives)})
    if name == "eval":
        inputs = {"train": load_manifest(run.checkpoints), "pairs": load_manifest(run.pairs)}
        return Stage("eval", run.eval, [dataclasses.replace(cfg.eval, batch_size=0), cfg.model], inputs)
    if name == "export":
        inputs = {"train": load_manifest(run.checkpoints)}
        if (run.eval / MANIFEST).exists():
            inputs["eval"] = load_manifest(run.eval)
        return Stage("export", run.model, cfg.export, inputs)
    raise EmbedtuneError(f"unknown stage {name}")


def skip(stage: Stage, force: bool) -> bool:
    if stage.is_done() and not force:
        print(f"{stage.name}: up to date ({stage.folder / MANIFEST}); force=true reruns it")
        return True
    return False


def _counts(counts: dict) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, dict):
            total = sum(v for v in value.values() if isinstance(v, (int, float)))
            parts.append(f"{key} {total:,}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key} {value:,}")
    return ", ".join(parts)


def status_lines(cfg) -> list[str]:
    """One line per stage: done / stale (its config or an input changed: `embedtune run` redoes it) /
    missing, its counts and wall time."""
    run = RunFolder(cfg)
    lines = [f"run folder {run.root}"]
    redo: set[str] = set()  # stages `embedtune run` would run again: so would everything after them
    for name in STAGE_NAMES:
        path = run.folder(name) / MANIFEST
        if not path.exists():
            upstream = UPSTREAM.get(name)
            waiting = upstream and not (run.folder(upstream) / MANIFEST).exists()
            lines.append(f"  {name:<8} missing" + (f" (waits for {upstream})" if waiting else ""))
            redo.add(name)
            continue
        manifest = load_manifest(run.folder(name))
        try:
            state = "done" if stage_of(cfg, name).is_done() and UPSTREAM.get(name) not in redo else "stale"
        except EmbedtuneError:
            state = "stale"
        if state == "stale":
            redo.add(name)
        lines.append(f"  {name:<8} {state:<5} {manifest.get('wall_time_s', 0):>8.1f}s  {_counts(manifest.get('counts', {}))}")
    return lines
