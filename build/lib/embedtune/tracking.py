"""Metrics during training: always a metrics.jsonl in the run folder, plus Weights & Biases when asked."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from embedtune.errors import EmbedtuneError


@dataclass
class LoggerConfig:
    kind: str = "wandb"               # wandb | none
    project: str = "embedtune"        # W&B project
    mode: str = "offline"             # W&B mode: offline (no account needed) | online | disabled
    entity: Optional[str] = None      # W&B entity (team); null: the account's default


class Tracker:
    def __init__(self, cfg: LoggerConfig, folder: Path, run_name: str, config: dict, enabled: bool = True):
        self.path = Path(folder) / "metrics.jsonl"
        self.enabled = enabled
        self.wandb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        if cfg.kind == "wandb":
            import wandb

            mode = os.environ.get("WANDB_MODE", cfg.mode)
            self.wandb = wandb.init(project=cfg.project, entity=cfg.entity, name=run_name, mode=mode,
                                    dir=str(folder), config=config, reinit="finish_previous")
        elif cfg.kind != "none":
            raise EmbedtuneError(f"logger.kind={cfg.kind} is not one of wandb, none")

    def log(self, metrics: dict, step: int) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, **metrics}) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(path: Path) -> list[dict]:
    if not Path(path).exists():
        return []
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]
