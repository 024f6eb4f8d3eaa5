"""query_report.py: the rates people read, computed from hand-made rows, and the report's content."""

from __future__ import annotations

import pytest

from embedtune.filter import FilterConfig
from embedtune.query_report import rates, write_query_report

PASSAGES = {"p1": "Sourdough starter. A mixture of flour and water fermented by wild yeast and bacteria.",
            "p2": "Force majeure. A clause that frees both parties when a war or a flood stops them."}


def row(qid, passage, text, raw, reason="", chatter=False, prompt="keyword"):
    return {"query_id": qid, "passage_id": passage, "text": text, "raw": raw, "reason": reason,
            "chatter": chatter, "prompt": prompt, "finished": True}


OUTPUTS = [
    row("a", "p1", "sourdough starter", "The query is: sourdough starter", chatter=True),
    row("b", "p1", "", "Text: Sourdough starter. A mixture", reason="prompt_echo", chatter=True),
    row("c", "p2", "a mixture of flour and water fermented by wild yeast", "a mixture of flour and water fermented by wild yeast"),
    row("d", "p2", "who pays when a flood stops a contract?", "who pays when a flood stops a contract?", prompt="question"),
    row("e", "p2", "", "What is the answer to this question?", reason="chatter", chatter=True, prompt="question"),
]


def test_rates_count_chatter_and_copies_among_outputs_and_kept_training_queries():
    outputs = [dict(r) for r in OUTPUTS]
    outputs[2]["passage_id"] = "p1"  # c copies p1's text (10 words, one run)
    kept_train = [outputs[0], outputs[2], outputs[3]]
    measured = rates(outputs, kept_train, PASSAGES, FilterConfig())
    assert measured["chatter_in_outputs"] == pytest.approx(3 / 5)   # a, b, e
    assert measured["copies_in_outputs"] == pytest.approx(2 / 5)    # b (echo), c (excerpt)
    assert measured["copies_in_kept"] == pytest.approx(1 / 3)       # c
    assert measured["chatter_in_kept"] == 0                          # the kept texts carry no talk any more
    assert rates(outputs, [row("x", "p1", "here is the query", "")], PASSAGES, FilterConfig())["chatter_in_kept"] == 1


def test_report_lists_every_reason_with_an_example_and_samples_per_type(tmp_path):
    kept = [OUTPUTS[0], OUTPUTS[3]]
    dropped = {"extraction": {"prompt_echo": [OUTPUTS[1]], "chatter": [OUTPUTS[4]]},
               "filter": {"copy": [OUTPUTS[2]], "duplicate": []}}
    measured = rates(OUTPUTS, kept, PASSAGES, FilterConfig())
    path = write_query_report(tmp_path, "toy", OUTPUTS, kept, {"a"}, dropped,
                              {"p1": "Sourdough starter", "p2": "Force majeure"}, measured)
    text = path.read_text()
    assert "5 generator outputs for 2 passages; 2 kept (40.0%), 1 of them for training." in text
    assert "| extraction | prompt_echo | 1 | 20.0% | Text: Sourdough starter. A mixture |" in text
    assert "| filter | duplicate | 0 | 0.0% |  |" in text
    assert "| keyword | 3 | 1 | 33.3% | 2 |" in text and "| question | 2 | 1 | 50.0% | 8 |" in text
    assert "| sourdough starter | Sourdough starter |" in text
    assert "| who pays when a flood stops a contract? | Force majeure |" in text
    assert "| chatter | What is the answer to this question? |  | Force majeure |" in text
    assert (tmp_path / "lengths.png").stat().st_size > 1000 and "![query lengths](lengths.png)" in text
