"""Versions of a run's model: each export with new weights is recorded (hard-linked folder, what it was trained
on, its scores), a re-export of the same weights is not, and the re-embedding plan names exactly the passages
added, changed and removed since the previous version."""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.serve.model_folder import ModelFolder
from embedtune.assets import model_id
from embedtune.versions import list_versions, record_version, reembed_plan


def passages(folder, rows: dict[str, str]) -> dict:
    """A passages/ folder as prepare leaves it (one part + the manifest's files), with `rows` id -> text."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    table = pa.Table.from_pylist([{"id": i, "doc_id": i, "title": "t", "text": text, "source": "s", "n_tokens": 3}
                                  for i, text in rows.items()])
    name = f"part-{len(rows)}.parquet"
    pq.write_table(table, folder / name)
    return {"files": [name], "run_id": f"r{len(rows)}"}


def test_versions_and_the_reembedding_plan(served_model_dir, tmp_path):
    root, model, corpus = tmp_path / "run", tmp_path / "run" / "model", tmp_path / "run" / "passages"
    shutil.copytree(served_model_dir, model)
    (tmp_path / "run" / "eval").mkdir()
    report = {"hpo (test, human)": {"tuned": {"nDCG@10": 0.66512}, "base": {"nDCG@10": 0.612}}, "summary": {}}
    (tmp_path / "run" / "eval" / "report.json").write_text(json.dumps(report))
    first = passages(corpus, {f"p{i}": f"text {i}" for i in range(6)})

    evals = tmp_path / "run" / "eval"
    v1 = record_version(root, model, model_id(model), corpus, first, {"final": "step-4"}, evals)
    assert v1["version"] == 1 and v1["weights"] == model_id(model) == ModelFolder.open(str(model)).model_id
    assert v1["scores"] == {"hpo (test, human)": {"tuned": 0.6651, "base": 0.612}} and v1["passages"]["count"] == 6
    kept = root / "versions" / "1" / "model" / "model.safetensors"
    assert kept.stat().st_ino == (model / "model.safetensors").stat().st_ino  # a hard link, not a copy
    plan = reembed_plan(root, model, v1)
    assert plan["previous"] is None and "the first" in (model / "REEMBED.md").read_text()
    assert model_id(model) == v1["weights"]  # the plan beside the weights changes no id
    assert record_version(root, model, model_id(model), corpus, first, {"final": "step-4"}, evals) is None

    export = tmp_path / "export"  # the next export: new weights in a new folder that replaces model/
    shutil.copytree(model, export)
    (export / "model.safetensors").write_bytes((export / "model.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    shutil.rmtree(model)
    export.rename(model)
    rows = {f"p{i}": f"text {i}" for i in range(6) if i != 2} | {"p4": "text four, edited", "p9": "new", "p8": "new"}
    second = passages(corpus, rows)
    v2 = record_version(root, model, model_id(model), corpus, second, {"final": "step-8"}, evals)
    assert v2["version"] == 2 and v2["weights"] != v1["weights"]
    plan = reembed_plan(root, model, v2)
    assert plan["added"] == ["p8", "p9"] and plan["changed"] == ["p4"] and plan["removed"] == ["p2"]
    assert plan["compatible"] is False and plan["previous"] == v1["weights"]
    text = (model / "REEMBED.md").read_text()
    assert "2 added, 1 changed, 1 removed" in text and "Embed every passage again" in text
    assert json.loads((root / "versions" / "2" / "reembed.json").read_text()) == plan
    assert kept.read_bytes() != (model / "model.safetensors").read_bytes()  # version 1's weights are intact
    assert [v["version"] for v in list_versions(root)] == [1, 2]

    (tmp_path / "run" / "eval" / "manifest.json").write_text(json.dumps({"inputs": {"train": "an earlier training"}}))
    (model / "model.safetensors").unlink()  # export replaces files: new weights, version 2's link stays whole
    (model / "model.safetensors").write_bytes(kept.read_bytes()[:-4] + b"\1\1\1\1")
    v3 = record_version(root, model, model_id(model), corpus, second, {"final": "step-12", "run_id": "t3"}, evals)
    assert v3["version"] == 3 and v3["scores"] == {}  # eval's report is of another training: no scores
