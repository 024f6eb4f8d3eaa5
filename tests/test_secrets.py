"""An API key given through its environment variable never reaches a file: the session's whole `embedtune run`
(conftest.demo_run: the openai backend against a real HTTP server on 127.0.0.1, W&B offline) is searched for
the key, every file of the run and its output."""

from __future__ import annotations

import pytest

from helpers import DEMO_SECRET

pytestmark = pytest.mark.slow  # every test here runs whole stages in processes of their own


def test_api_key_from_the_environment_is_in_no_file_and_no_log(demo_run):
    assert {r["auth"] for r in demo_run.server.requests} == {f"Bearer {DEMO_SECRET}"}  # the key was used ...
    run = demo_run.folder
    assert (run / "model" / "README.md").exists() and list(run.rglob("*.wandb")), "no model card or W&B file"
    files = [p for p in run.parent.rglob("*") if p.is_file()]
    assert len(files) > 30
    leaked = [str(p) for p in files if DEMO_SECRET.encode() in p.read_bytes()]
    assert leaked == []  # ... and written nowhere: configs, manifests, logs, W&B files, model card
    assert DEMO_SECRET not in demo_run.result.stdout + demo_run.result.stderr
    assert "EMBEDTUNE_KEY" in (run / "config.run.yaml").read_text()  # the variable's name is what is saved
