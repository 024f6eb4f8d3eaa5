"""The wheel as users install it: conf/ (top of the repository) ships as embedtune/conf, for `pip install .`
and for `pip install -e .` alike."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO


def build(kind: str, out: Path) -> Path:
    """A wheel ("wheel") or an editable wheel ("editable") of this checkout, built by setuptools itself."""
    hook = {"wheel": "build_wheel", "editable": "build_editable"}[kind]
    code = (f"import sys; from setuptools import build_meta; print(build_meta.{hook}(sys.argv[1]))")
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "absent from the `packages` configuration" not in proc.stderr
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build("wheel", tmp_path_factory.mktemp("wheel"))


@pytest.mark.slow
def test_the_wheel_carries_every_config_file_and_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*") if p.is_file()
                     and "__pycache__" not in p.parts)
    assert "conf/hydra/launcher/slurm.yaml" in configs and "conf/config.yaml" in configs
    assert [c for c in configs if f"embedtune/{c}" not in names] == []
    modules = sorted(p.relative_to(REPO / "src").as_posix() for p in (REPO / "src" / "embedtune").rglob("*.py"))
    assert [m for m in modules if m not in names] == []
    assert not any(n.startswith("conf/") for n in names)  # inside the package, not a top-level folder


@pytest.mark.slow
def test_an_editable_install_composes_the_config_from_the_checkout(tmp_path):
    """The editable wheel's finder maps embedtune.conf to <repo>/conf; Hydra finds config.yaml through it
    (`pkg://embedtune.conf`, as the CLI asks) and composes every stage's defaults."""
    editable = build("editable", tmp_path / "dist")
    site = tmp_path / "site"
    zipfile.ZipFile(editable).extractall(site)
    finder = next(site.glob("__editable___embedtune*_finder.py")).stem
    code = f"""
import sys
sys.path.insert(0, {str(site)!r})
import {finder} as finder
finder.install()
sys.meta_path.insert(0, sys.meta_path.pop())  # ahead of the non-editable copy this venv also has
import importlib.resources
from hydra import compose, initialize_config_module
from embedtune.config import register
register()
print(importlib.resources.files("embedtune.conf").joinpath("config.yaml"))
with initialize_config_module(config_module="embedtune.conf", version_base=None):
    cfg = compose(config_name="config", overrides=["corpus=jsonl", "hydra/launcher=slurm"])
print(cfg.corpus.format, cfg.model.name)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, composed = proc.stdout.strip().splitlines()[-2:]
    assert Path(where) == REPO / "conf" / "config.yaml"
    assert composed == "jsonl minilm-l6"
