"""preflight.py: what a stage will read is checked before it starts, every problem named at once; a bad eval set
stops `embedtune run` before anything is written."""

from __future__ import annotations

import json

import pytest
from helpers import compose_config, embedtune

from embedtune.preflight import input_problems


def test_every_problem_of_a_run_is_named_at_once(tmp_path):
    bad_set = tmp_path / "set"
    (bad_set / "qrels").mkdir(parents=True)
    (bad_set / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": "A pump."}) + "\n")
    (bad_set / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "pump"}) + "\n")
    (bad_set / "qrels" / "dev.tsv").write_text("q1\td1\t0.5\n")
    cfg = compose_config("debug=tiny", "corpus=files", f"corpus.path={tmp_path / 'no-such-folder'}",
                         "generator.backend=openai", "generator.api_base=localhost:8000",
                         f"eval.beir=[{{path: {bad_set}, split: dev, name: mine}}, {{path: {tmp_path / 'typo'}}}]",
                         "teacher=biencoder", f"teacher.model={tmp_path / 'no-teacher'}")
    found = input_problems(cfg, "run")
    assert len(found) == 5, found
    assert any("corpus.path=" in p and "no such file or folder" in p for p in found)
    assert any("generator.api_base='localhost:8000'" in p for p in found)
    assert any("dev.tsv:1: score '0.5' is not an integer grade" in p for p in found)
    assert any("eval.beir[1].path=" in p and "no such folder" in p for p in found)
    assert any("teacher.model=" in p for p in found)
    assert input_problems(cfg, "train") == []  # training reads none of these
    assert len(input_problems(cfg, "eval")) == 2  # eval reads the eval sets


@pytest.mark.slow  # the CLI in a subprocess
def test_a_bad_eval_set_stops_embedtune_run_before_anything_is_written(tmp_path):
    bad_set = tmp_path / "set"
    (bad_set / "qrels").mkdir(parents=True)
    (bad_set / "corpus.jsonl").write_text(json.dumps({"_id": "d1", "text": None}) + "\n")
    (bad_set / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "pump"}) + "\n")
    (bad_set / "qrels" / "test.tsv").write_text("q1\td1\t1\n")
    runs = tmp_path / "runs"
    result = embedtune("run", "debug=tiny", f"paths.runs={runs}", "run_name=r", f"eval.beir=[{{path: {bad_set}}}]",
                       cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "corpus.jsonl:1: field 'text' is null, not a string" in result.stderr
    assert "nothing was run" in result.stderr
    assert not [p for p in runs.rglob("*") if not p.is_dir()]  # only Hydra's empty log folder
