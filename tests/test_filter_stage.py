"""When no training query survives extraction and the filters, `filter` stops with one error that points at
the query report, instead of handing mine and train an empty table."""

from __future__ import annotations

import subprocess
import sys

from test_openai_backend import ChatServer


def echo_the_prompt(messages) -> str:
    """A generator that only ever echoes the prompt's passage: every answer is a "Text: ..." copy."""
    return "Text: " + messages[-1]["content"].split("Text: ", 1)[-1].split("\n\n", 1)[0]


def test_no_surviving_query_is_a_clear_error_naming_the_report(tiny_lm_dir, tmp_path):
    server = ChatServer(tiny_lm_dir, answer=echo_the_prompt)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2",
           "EMBEDTUNE_KEY": "k"}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "embedtune.cli", "run", "debug=tiny", f"paths.runs={tmp_path / 'runs'}",
             "generator.backend=openai", "generator.model=scripted", f"generator.api_base={server.url}",
             "generator.api_key_env=EMBEDTUNE_KEY"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    finally:
        server.close()
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "filter: no training query survived (24 outputs, 0 kept" in result.stderr, result.stderr[-2000:]
    report = tmp_path / "runs" / "demo" / "queries" / "report.md"
    assert str(report.relative_to(tmp_path)) in result.stderr or str(report) in result.stderr
    assert "prompt_echo" in report.read_text()  # the report says why every answer was dropped
    assert not (tmp_path / "runs" / "demo" / "negatives").exists()  # nothing ran after filter
