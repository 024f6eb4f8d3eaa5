"""Supply chain: no trust_remote_code anywhere, weights only from safetensors (a pickled .bin is refused,
never unpickled), and packaged model files checked against pinned SHA-256 sums before use."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import REPO
from embedtune.errors import EmbedtuneError

SOURCES = sorted((REPO / "src").rglob("*.py")) + sorted((REPO / "bench").glob("*.py"))


def test_no_trust_remote_code_and_no_pickle_loading_in_the_code():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                offenders.append(f"{path}:{node.value.lineno}: trust_remote_code")
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if name in ("torch.load", "pickle.load", "pickle.loads"):
                    if keywords.get("weights_only") != "True":
                        offenders.append(f"{path}:{node.lineno}: {name} without weights_only=True")
                if name in ("np.load", "numpy.load") and keywords.get("allow_pickle") != "False":
                    offenders.append(f"{path}:{node.lineno}: np.load without allow_pickle=False")
    assert len(SOURCES) > 30 and offenders == []


def test_every_from_pretrained_of_weights_asks_for_safetensors():
    """Model weights load with use_safetensors=True (or from a GGUF file); tokenizers carry no weights."""
    calls = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("Model.from_pretrained") \
                    or isinstance(node, ast.Call) and ast.unparse(node.func).endswith("LM.from_pretrained"):
                calls.append((path, node))
    assert calls
    for path, node in calls:
        text = ast.unparse(node)
        assert "use_safetensors=True" in text or "**kwargs" in text, f"{path}:{node.lineno}: {text}"
    backends = (REPO / "src" / "embedtune" / "generate" / "backends.py").read_text()
    assert '{"gguf_file": gguf} if gguf else {"use_safetensors": True}' in backends


def test_a_model_folder_with_only_pickled_weights_is_refused(tiny_model_dir, tmp_path):
    """A pytorch_model.bin is a pickle: it can run code when loaded. The encoder refuses the folder, names it,
    and never unpickles the file (the "weights" here would raise if they were ever unpickled)."""
    from embedtune.model import Encoder, ModelConfig

    folder = tmp_path / "pickled"
    folder.mkdir()
    for item in tiny_model_dir.iterdir():
        if item.name != "model.safetensors":
            (folder / item.name).write_bytes(item.read_bytes())

    class Trap:
        def __reduce__(self):
            return (exec, ("raise RuntimeError('pickle was loaded')",))

    torch.save({"trap": Trap()}, folder / "pytorch_model.bin")
    with pytest.raises(EmbedtuneError, match="cannot load model .*pickled"):
        Encoder.load(ModelConfig(name=str(folder)))


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
