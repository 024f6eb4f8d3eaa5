"""The teacher path end to end, in a point of the session's demo run: `embedtune run` with a (tiny random)
bi-encoder teacher scores the mined pairs, cleans negatives, trains with MarginMSE + KL beside InfoNCE,
merges with the base at the alpha the grid picks, reports base / tuned / merged and exports the merged
model; a second `run` redoes nothing."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from embedtune.io import read_rows
from embedtune.merge import GRID
from helpers import embedtune

pytestmark = pytest.mark.slow


def test_run_with_a_teacher_distills_merges_and_reports_all_three(demo_run, tiny_model_dir_other):
    teacher = ["point=teacher", "teacher=biencoder", f"teacher.model={tiny_model_dir_other}", "teacher.precision=fp32", "teacher.max_length=128",
               "teacher.clean_negatives=true", "loss.margin_mse_weight=1", "loss.kl_weight=1",
               "export.merge_alpha=auto", "export.onnx=false"]
    result = embedtune("run", *demo_run.args, *teacher, cwd=demo_run.folder.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    point = demo_run.folder / "points" / "teacher"

    scores = json.loads((point / "scores" / "manifest.json").read_text())
    negatives = read_rows(point / "negatives" / "train.parquet")
    assert scores["counts"]["pairs"] == sum(1 + len(r["negative_ids"]) for r in negatives)
    scored = read_rows(point / "scores" / "train.parquet")
    kept = sum(len(r["negative_ids"]) for r in scored)
    assert kept == sum(len(r["negative_ids"]) for r in negatives) - scores["counts"]["negatives_dropped"]
    assert all(s < r["positive_teacher_score"] for r in scored for s in r["negative_teacher_scores"])

    train = json.loads((point / "checkpoints" / "manifest.json").read_text())
    assert train["inputs"]["scores"] == scores["run_id"]  # trained on the scored rows

    merge = json.loads((point / "merged" / "merge.json").read_text())
    assert merge["alpha"] in GRID and set(merge["grid"]) == {f"{a:g}" for a in GRID}
    report = (point / "eval" / "report.md").read_text()
    for row in ("| base |", "| tuned |", "| merged |", "| merged - base |"):
        assert row in report
    assert f"alpha={merge['alpha']:g}" in report
    evaluation = json.loads((point / "eval" / "manifest.json").read_text())
    assert evaluation["merge"]["alpha"] == merge["alpha"] and "regressions" in evaluation
    for line in evaluation["regressions"]:  # a warning the report leads with and `run` ends with
        assert line in report and f"embedtune run: warning: {line}" in result.stdout

    exported = load_file(str(next((point / "model").glob("**/model.safetensors"))))
    merged = load_file(str(point / "merged" / "encoder" / "model.safetensors"))
    name = next(k for k in merged if k.endswith("word_embeddings.weight"))
    assert any(k.endswith(name.split(".", 1)[-1]) and (exported[k] == merged[name]).all() for k in exported)

    again = embedtune("run", *demo_run.args, *teacher, cwd=demo_run.folder.parent)
    assert again.returncode == 0, again.stderr[-3000:]
    for stage in ("score", "train", "eval", "export"):
        assert f"{stage}: up to date" in again.stdout
    status = embedtune("status", *demo_run.args, *teacher, cwd=demo_run.folder.parent)
    assert "score    done" in status.stdout, status.stdout
