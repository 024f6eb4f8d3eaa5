"""When no training query survives extraction and the filters, `filter` stops with one error that points at
the query report, instead of handing mine and train an empty table."""

from __future__ import annotations

import pytest

from helpers import passage_in, scripted_run

pytestmark = pytest.mark.slow  # every test here runs whole stages in processes of their own


def echo_the_prompt(messages) -> str:
    """A generator that only ever echoes the prompt's passage: every answer is a "Text: ..." copy."""
    return "Text: " + passage_in(messages)


def test_no_surviving_query_is_a_clear_error_naming_the_report(tiny_lm_dir, tmp_path):
    result, _ = scripted_run(tiny_lm_dir, tmp_path, echo_the_prompt, "k")
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert "filter: no training query survived (24 outputs, 0 kept" in result.stderr, result.stderr[-2000:]
    report = tmp_path / "runs" / "demo" / "queries" / "report.md"
    assert str(report.relative_to(tmp_path)) in result.stderr or str(report) in result.stderr
    assert "prompt_echo" in report.read_text()  # the report says why every answer was dropped
    assert not (tmp_path / "runs" / "demo" / "negatives").exists()  # nothing ran after filter
