"""`embedtune <stage> [key=value ...]`: every stage is a Hydra app over the same config tree (conf/).

The DictConfig becomes typed dataclasses here, once; library code never sees a dict.
"""

from __future__ import annotations

import os
import sys

# Read once when transformers / huggingface_hub / tokenizers are first imported (below, through the config
# schemas), so they are set here, before those imports, rather than in main().
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # forked workers and tokenizers threads deadlock
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # e.g. its GGUF advice to use float32

import hydra  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from embedtune import distributed, memory_plan, pipeline, sweep
from embedtune.config import Config, register
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path
from embedtune.runs import STAGE_NAMES, RunFolder, status_lines
from embedtune.serve.server import serve
from embedtune.preflight import check_inputs
from embedtune.validate import check_config

USAGE = """usage: embedtune <stage> [key=value ...] [-m] [--help] [--cfg job]

stages:
  prepare   read, clean, chunk and deduplicate the corpus into passages
  generate  write synthetic queries for passages (sharded; reruns skip finished shards)
  filter    drop bad queries; split train/dev/test by document
  mine      hard negatives from the base model
  score     a teacher's scores for every mined pair (teacher=biencoder|cross_encoder|llm; sharded like generate)
  train     contrastive fine-tuning (under `accelerate launch` for several processes)
  eval      base vs tuned on held-out synthetic and human-labelled queries
  export    sentence-transformers folder with a model card
  run       all of the above in order (stages that are up to date are skipped)
  status    for each stage of a run: done, stale (run would redo it) or missing; its counts and wall time
  serve     the exported model behind an OpenAI-compatible embeddings endpoint (serve.model=PATH serve.port=N)
  plan      predicted per-GPU memory of `train` for this config (plan.launch=..., plan.gpus=N,
            plan.gpu_memory_gb=80) and the largest train.chunk_size that fits

`embedtune <stage> --help` lists the config groups and every option.
"""


def _save_config(cfg: Config, stage: str) -> None:
    if not distributed.is_main():
        return
    path = RunFolder(cfg).root / f"config.{stage}.yaml"
    with atomic_path(path) as tmp:
        tmp.write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)), encoding="utf-8")


def _hydra_main(stage: str) -> None:
    register()

    @hydra.main(version_base=None, config_path="pkg://embedtune.conf", config_name="config")
    def app(dcfg) -> None:
        try:
            cfg: Config = OmegaConf.to_object(dcfg)
            if stage == "status":
                print("\n".join(status_lines(cfg)))
                return
            if stage == "plan":
                memory_plan.run_plan(cfg)
                return
            check_config(cfg)
            if stage != "serve":
                check_inputs(cfg, stage)
            if stage == "serve":
                exported = RunFolder(cfg).model
                if not cfg.serve.model and not (exported / "modules.json").exists():
                    raise EmbedtuneError(f"serve: no exported model in {exported}: run `embedtune export` (or "
                                         "`embedtune run`) first, or name one with serve.model=PATH")
                serve(cfg.serve, cfg.serve.model or str(exported), cfg.serve.name or cfg.run_name)
                return
            sweep.enter_point(cfg, stage)  # a sweep point (or point=...): its own seeded folder
            _save_config(cfg, stage)
            if stage == "run":
                pipeline.run_all(cfg)
            else:
                pipeline.STAGES[stage](cfg)
        except EmbedtuneError as e:
            print(f"embedtune {stage}: error: {e}", file=sys.stderr)
            sys.exit(2)
        except OSError as e:  # a full or read-only disk, a vanished mount: name it, no traceback
            where = f" ({e.filename})" if e.filename else ""
            print(f"embedtune {stage}: error: {e.strerror or e}{where}; files already written are intact (each is "
                  "written under a temporary name, then renamed): fix the storage and rerun", file=sys.stderr)
            sys.exit(2)

    app()


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in (*STAGE_NAMES, "run", "status", "plan", "serve"):
        print(USAGE, file=sys.stderr)
        sys.exit(0 if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help") else 2)
    stage = sys.argv.pop(1)
    sys.argv[0] = f"embedtune {stage}"
    sys.argv.append(f"hydra.job.name={stage}")  # after any flags: argparse wants overrides in one run
    _hydra_main(stage)


if __name__ == "__main__":
    main()
