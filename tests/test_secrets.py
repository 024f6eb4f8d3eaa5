"""An API key given through its environment variable never reaches a file: a whole `embedtune run` with the
openai backend (a real HTTP server on 127.0.0.1) and W&B offline, then every file of the run and its output
are searched for the key."""

from __future__ import annotations

import re

from test_openai_backend import passage_in, scripted_run

SECRET = "sk-live-embedtune-9f8e7d6c5b4a39281706"


def query_from_prompt(messages) -> str:
    """A scripted generator: six words from the middle of the passage in the last user turn, as a search query."""
    words = re.findall(r"[A-Za-z]{4,}", passage_in(messages))
    middle = len(words) // 2
    return " ".join(words[max(0, middle - 3):middle + 3]) or "abnormal phenotype"


def test_api_key_from_the_environment_is_in_no_file_and_no_log(tiny_lm_dir, tmp_path):
    result, server = scripted_run(tiny_lm_dir, tmp_path, query_from_prompt, SECRET, "logger=wandb",
                                  "logger.kind=wandb")
    assert result.returncode == 0, result.stderr[-3000:]
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}  # the key was used ...
    run = tmp_path / "runs" / "demo"
    assert (run / "model" / "README.md").exists() and list(run.rglob("*.wandb")), "no model card or W&B file"
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 30
    leaked = [str(p) for p in files if SECRET.encode() in p.read_bytes()]
    assert leaked == []  # ... and written nowhere: configs, manifests, logs, W&B files, model card
    assert SECRET not in result.stdout + result.stderr
    assert "EMBEDTUNE_KEY" in (run / "config.run.yaml").read_text()  # the variable's name is what is saved
