"""The root config: every group's schema (defined beside the code that uses it) composed into one dataclass,
registered with Hydra's ConfigStore so that YAML files and overrides are type-checked against it."""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from embedtune.corpus import CorpusConfig
from embedtune.evaluate import EvalConfig
from embedtune.export import ExportConfig
from embedtune.filter import FilterConfig
from embedtune.generate.runner import GeneratorConfig
from embedtune.loss import LossConfig
from embedtune.memory_plan import PlanConfig
from embedtune.mine import MiningConfig
from embedtune.model import ModelConfig, PeftConfig
from embedtune.serve.server import ServeConfig
from embedtune.teacher import TeacherConfig
from embedtune.tracking import LoggerConfig
from embedtune.train import TrainConfig


@dataclass
class PathsConfig:
    runs: str = "runs"   # parent of every run folder


@dataclass
class Config:
    run_name: str = "demo"            # the run folder is ${paths.runs}/${run_name}
    force: bool = False               # rerun the stage even when its manifest matches
    point: str = ""                   # a sweep point: its own folder ${paths.runs}/${run_name}/points/<point> (set per point in -m)
    paths: PathsConfig = field(default_factory=PathsConfig)  # where run folders live
    corpus: CorpusConfig = field(default_factory=CorpusConfig)  # `prepare`: what to read, how to clean and chunk it
    model: ModelConfig = field(default_factory=ModelConfig)  # the embedder trained (base model, pooling, lengths, prompts)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)  # `generate`: the model writing queries
    filter: FilterConfig = field(default_factory=FilterConfig)  # `filter`: which queries are kept; the splits
    mining: MiningConfig = field(default_factory=MiningConfig)  # `mine`: hard negatives from the base model
    teacher: TeacherConfig = field(default_factory=TeacherConfig)  # `embedtune score` (off with kind=none)
    loss: LossConfig = field(default_factory=LossConfig)  # the contrastive loss and distillation terms
    train: TrainConfig = field(default_factory=TrainConfig)  # `train`: the loop, batches, precision, checkpoints
    peft: PeftConfig = field(default_factory=PeftConfig)  # LoRA (kind=lora) or every weight (kind=none)
    eval: EvalConfig = field(default_factory=EvalConfig)  # `eval`: sets, metrics, baselines, the version gate
    export: ExportConfig = field(default_factory=ExportConfig)  # `export`: the model folder, ONNX, promotion
    logger: LoggerConfig = field(default_factory=LoggerConfig)  # Weights & Biases (offline by default) or none
    plan: PlanConfig = field(default_factory=PlanConfig)  # `embedtune plan` only
    serve: ServeConfig = field(default_factory=ServeConfig)  # `embedtune serve` only


def register() -> None:
    ConfigStore.instance().store(name="embedtune_schema", node=Config)
