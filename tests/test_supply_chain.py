"""Supply chain, tested by behaviour: a model folder's own code is never run, pickled files (weights, embedding
cache, checkpoints) are refused without being unpickled, and packaged model files are checked against pinned
SHA-256 sums before use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import train
from embedtune.errors import EmbedtuneError


class Trap:
    """Unpickling this runs code: it writes the marker file named at pickling time."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pickle was loaded')",))


def with_custom_code(model_dir: Path, folder: Path, marker: Path, auto_class: str) -> Path:
    """A copy of a model folder whose config asks for its own Python code (auto_map), which, if it were ever
    imported, would write `marker`."""
    shutil.copytree(model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", auto_class: "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('remote code ran')\n")
    return folder


def test_models_asking_for_their_own_code_never_run_it(tiny_model_dir, tiny_lm_dir, tmp_path):
    """The encoder and the generator load with trust_remote_code off: a folder's own modeling code is
    never imported, whatever its config says (loading the stock architecture, or refusing the folder)."""
    from embedtune.generate.backends import BackendConfig, TransformersBackend
    from embedtune.model import Encoder, ModelConfig

    marker = tmp_path / "ran"
    encoder_dir = with_custom_code(tiny_model_dir, tmp_path / "enc", marker, "AutoModel")
    generator_dir = with_custom_code(tiny_lm_dir, tmp_path / "gen", marker, "AutoModelForCausalLM")
    for load in (lambda: Encoder.load(ModelConfig(name=str(encoder_dir), pooling="mean")),
                 lambda: TransformersBackend(BackendConfig(model=str(generator_dir), dtype="float32"))):
        try:
            load()
        except (EmbedtuneError, ValueError):
            pass  # refusing the folder is fine too
        assert not marker.exists()


def test_a_pickled_embedding_cache_is_refused_without_unpickling(tmp_path):
    import numpy as np

    from embedtune.embedding_cache import EmbeddingCache

    marker = tmp_path / "ran"
    cache = EmbeddingCache(tmp_path / "cache", "model|fp32")
    cache.folder.mkdir(parents=True)
    np.save(cache.folder / "keys-x.npy", np.array([1], dtype=np.uint64))
    np.save(cache.folder / "vectors-x.npy", np.array([Trap(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(EmbedtuneError, match="not a plain array of numbers"):
        EmbeddingCache(tmp_path / "cache", "model|fp32")
    assert not marker.exists()


def test_a_checkpoint_holding_pickled_objects_is_refused_on_resume(tiny_model_dir, tmp_path):
    out = tmp_path / "checkpoints"
    train(tiny_model_dir, out, max_steps=2, save_every=1)
    newest = sorted(out.glob("step-*"))[-1]
    optimizer = next((newest / "state").glob("optimizer*.bin"))
    marker = tmp_path / "ran"
    torch.save({"trap": Trap(marker)}, optimizer)
    with pytest.raises(EmbedtuneError, match="refusing to unpickle"):
        train(tiny_model_dir, out, max_steps=3, save_every=1)
    assert not marker.exists()


def test_a_model_folder_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    """A pytorch_model.bin is a pickle: it can run code when loaded. The encoder refuses the folder, names it,
    and never unpickles the file (the "weights" here would raise if they were ever unpickled)."""
    from embedtune.model import Encoder, ModelConfig

    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes())

    marker = tmp_path / "ran"
    torch.save({"trap": Trap(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(EmbedtuneError, match="cannot load model .*pickled"):
        Encoder.load(ModelConfig(name=str(folder)))
    assert not marker.exists()


def test_packaged_models_are_checked_against_their_pinned_sha256(monkeypatch):
    import dataclasses

    from embedtune import assets

    monkeypatch.setattr(assets, "_verified", set())
    resolved = assets.resolve_model("minilm-l6")
    weights = Path(resolved.path) / "model.safetensors"
    assert assets._verified == {weights}  # hashed when resolved ...
    assert assets.sha256_of(weights) == assets.BUILTIN["minilm-l6"].sha256
    wrong = dataclasses.replace(assets.BUILTIN["minilm-l6"], sha256="0" * 64)  # ... and refused on a mismatch
    monkeypatch.setitem(assets.BUILTIN, "minilm-l6", wrong)
    monkeypatch.setattr(assets, "_verified", set())
    with pytest.raises(EmbedtuneError, match="does not match the pinned 0000"):
        assets.resolve_model("minilm-l6")
