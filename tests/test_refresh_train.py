"""A refresh trains from the previous version on what changed (train.init=previous), and a gate keeps a worse
model out of model/: eval scores the promoted version beside the new one, export promotes only what is not
significantly worse (export.promote=always overrides), and the report shows every version."""

from __future__ import annotations

import json
import re

import pytest
import torch
from helpers import ChatServer, compose_config, passage_in

from embedtune import pipeline
from embedtune.assets import model_id
from embedtune.embedding_cache import EmbeddingCache, text_keys
from embedtune.io import read_rows, read_stage_table
from embedtune.model import Encoder, passage_text
from embedtune.refresh import refresh_rows
from embedtune.runs import status_lines
from embedtune.store import MappedTable

pytestmark = pytest.mark.slow  # the whole pipeline, five times, with a tiny setup

WORDS = ["heart", "kidney", "liver", "lung", "skin", "bone", "blood", "brain", "nerve", "muscle", "eye", "ear"]


def document(i: int) -> str:
    a, b, c = WORDS[i % 12], WORDS[(i * 5 + 1) % 12], WORDS[(i * 7 + 2) % 12]
    return f"Finding {i}: the {a} and the {b} of a patient with a disorder of the {c}."


def answer(messages) -> str:
    n, a, c = re.search(r"Finding (\d+): the (\w+) and the \w+ .* of the (\w+)", passage_in(messages)).groups()
    return f"finding {n} {a} {c}"


def status_of(out: str, n: int) -> str:
    return next(line for line in out.splitlines() if line.strip().startswith(f"version {n}: "))


def weights(folder) -> dict[str, torch.Tensor]:
    return Encoder.load(None, path=str(folder)).backbone.state_dict()


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


def test_refresh_rows_take_new_pairs_and_a_replay_share(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": []} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    table = MappedTable.open([tmp_path / "train.parquet"], tmp_path / "mapped", ["query_id", "passage_id",
                                                                                  "negative_ids"], "query_id")
    fresh = {f"p{i}" for i in range(10)}
    for replay, earlier in ((0, 0), (0.5, 10), (0.75, 30), (1, 30)):
        chosen, counts = refresh_rows(table, fresh, replay, seed=1)
        assert counts == {"new": 10, "replayed": earlier, "earlier": 30} and len(chosen) == 10 + earlier
        assert {r["passage_id"] for r in chosen} >= fresh and len({r["query_id"] for r in chosen}) == len(chosen)
    assert refresh_rows(table, set(), 0.5, seed=1)[0] == []  # nothing new: no training rows


def test_a_refresh_starts_from_the_previous_version_and_the_gate_holds_a_worse_model(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(30):
        (docs / f"d{i:02d}.txt").write_text(document(i))
    server = ChatServer(None, answer=answer)
    run = tmp_path / "runs" / "r"

    def refresh(*extra: str) -> str:
        cfg = compose_config("debug=tiny", "corpus=files", f"corpus.path={docs}", f"paths.runs={tmp_path / 'runs'}",
                             "run_name=r", "generator.backend=openai", "generator.model=scripted",
                             f"generator.api_base={server.url}", "generator.max_passages=null", "train.init=previous",
                             "train.max_steps=2", "train.keep_checkpoints=1", "export.onnx=false", *extra)
        pipeline.run_all(cfg)
        return capsys.readouterr().out + "\n".join(status_lines(cfg))

    def version(n: int) -> dict:
        return json.loads((run / "versions" / str(n) / "version.json").read_text())

    try:
        out = refresh("train.max_steps=3")  # more steps than the refresh: its newer checkpoint must be the one kept
        assert "no earlier version was trained on another state of the corpus: starting from the base model" in out
        assert version(1)["promoted"] and "gate:" not in out  # nothing to compare the first version with

        held_out = {(q["query_id"], q["query"]) for q in read_rows(run / "pairs" / "test.parquet")}
        for i in range(30, 40):  # ten new documents; a learning rate too small to move the weights
            (docs / f"d{i:02d}.txt").write_text(document(i))
        out = refresh("train.lr=1e-12")
        later = {(q["query_id"], q["query"]) for q in read_rows(run / "pairs" / "test.parquet")}
        assert held_out and held_out <= later  # the held-out queries of version 1 are asked of version 2 too
        new_ids = {pid for pid, source in zip(*read_stage_table(run / "passages", ["id", "source"]).to_pydict().values())
                   if int(source[1:3]) >= 30}
        train_pairs = read_rows(run / "pairs" / "train.parquet")
        new_pairs = sum(r["passage_id"] in new_ids for r in train_pairs)
        refreshed = json.loads((run / "checkpoints" / "manifest.json").read_text())["refresh"]
        assert refreshed == {"version": 1, "new": new_pairs, "replayed": min(new_pairs, len(train_pairs) - new_pairs),
                             "earlier": len(train_pairs) - new_pairs} and new_pairs > 0
        assert f"refresh of version 1 ({version(1)['weights']}): {new_pairs} pairs of new or changed passages" in out
        v1, v2 = weights(run / "versions" / "1" / "encoder"), weights(run / "versions" / "2" / "encoder")
        base = Encoder.load(compose_config("debug=tiny").model).backbone.state_dict()
        assert largest_difference(v2, v1) < 1e-6 < largest_difference(v1, base)  # it started from version 1
        report = json.loads((run / "eval" / "report.json").read_text())
        assert all("previous" in models for name, models in report.items() if name not in ("comparisons", "summary"))
        assert any(c["comparison"] == "tuned - previous" for c in report["comparisons"])
        text = (run / "eval" / "report.md").read_text()
        assert "gate: not significantly worse than version 1" in text and "Versions of this run" in text
        assert "| 1 | `emb-" in text and "| this training |" in text and (run / "eval" / "versions.png").exists()
        assert version(2)["promoted"] and model_id(run / "model") == version(2)["weights"]

        passages = read_stage_table(run / "passages", ["title", "text", "source"]).to_pylist()
        removed = [passage_text(p["title"], p["text"]) for p in passages if p["source"] == "d05.txt"]
        kept = [passage_text(p["title"], p["text"]) for p in passages if p["source"] != "d05.txt"]
        (docs / "d05.txt").unlink()  # only a removal: nothing new to learn, the weights stay, so do stored vectors
        out = refresh()
        assert re.search(r"prepare: 1 passage texts are gone; [1-9]\d* cached vectors of them deleted", out)
        caches = [EmbeddingCache.of_folder(f) for f in (run / "cache" / "embeddings").glob("*")]  # every model's
        assert len(caches) >= 3 and all((c.find(text_keys(removed, "passage")) == -1).all() for c in caches)
        assert any((c.find(text_keys(kept, "passage")) >= 0).all() for c in caches)  # the others stay
        assert "train: nothing new to learn; the model stays version 2's weights" in out
        assert version(3)["weights"] == version(2)["weights"]
        plan = json.loads((run / "model" / "reembed.json").read_text())
        assert plan["compatible"] and plan["previous_version"] == 2 and len(plan["removed"]) == 1
        assert not plan["added"] and not plan["changed"]

        out = refresh("train.init=base", "train.lr=0.1", "train.max_steps=4")  # a training that ruins the model
        gate = json.loads((run / "eval" / "manifest.json").read_text())["gate"]
        assert gate["previous"] == 3 and gate["drops"] and "is significantly worse than the previous version" in out
        assert not version(4)["promoted"] and model_id(run / "model") == version(3)["weights"]
        assert "model/ stays version 3" in out and status_of(out, 3).endswith("(model/)")
        assert status_of(out, 4).endswith("(not promoted: held back by the gate)")
        assert not (run / "candidate").exists() and (run / "versions" / "4" / "model" / "config.json").exists()

        out = refresh("train.init=base", "train.lr=0.1", "train.max_steps=4", "export.promote=always")
        assert version(4)["promoted"] and model_id(run / "model") == version(4)["weights"]
        assert status_of(out, 4).endswith("(model/)") and not status_of(out, 3).endswith("(model/)")
    finally:
        server.close()
