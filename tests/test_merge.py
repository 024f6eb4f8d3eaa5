"""merge.py: weight interpolation with the base (alpha 0 = base, 1 = tuned, between = the weighted mean of every
weight), the auto grid's choice, and eval's regression warnings."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from embedtune.errors import EmbedtuneError
from embedtune.evaluate import EvalConfig, regressions
from embedtune.merge import GRID, choose_alpha, grid_set, interpolate
from embedtune.model import Encoder, ModelConfig
from embedtune.store import MappedTable, TextLookup

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def load(folder) -> Encoder:
    return Encoder.load(ModelConfig(name=str(folder), pooling="mean"))


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_interpolate_is_the_weighted_mean_of_every_weight(tiny_model_dir, tiny_model_dir_other, alpha):
    base, tuned = load(tiny_model_dir), load(tiny_model_dir_other)
    before = {k: v.clone() for k, v in tuned.backbone.state_dict().items()}
    interpolate(base, tuned, alpha)
    after, base_state = tuned.backbone.state_dict(), base.backbone.state_dict()
    floats = [k for k, v in before.items() if v.is_floating_point()]
    assert floats and any(not torch.equal(before[k], base_state[k]) for k in floats)
    for k in floats:
        assert torch.allclose(after[k], alpha * before[k] + (1 - alpha) * base_state[k], atol=1e-6)


def test_interpolating_different_architectures_is_refused(tiny_model_dir, tiny_llama_dir):
    with pytest.raises(EmbedtuneError, match="do not match"):
        interpolate(load(tiny_model_dir), Encoder.load(ModelConfig(name=str(tiny_llama_dir), pooling="last")), 0.5)


def test_auto_alpha_is_the_best_of_the_grid_on_the_given_queries(tmp_path, tiny_model_dir, tiny_model_dir_other):
    tuned = load(tiny_model_dir_other)
    tuned.save(tmp_path / "tuned")
    passages = [{"id": f"p{i}", "title": "", "text": t} for i, t in enumerate(
        ["heart gene protein", "blood cell", "river city", "kidney liver brain", "fever pain", "music apple bread",
         "cat dog fish", "red blue green"])]
    dev = [{"query_id": f"q{i}", "query": q, "passage_id": f"p{i}"}
           for i, q in enumerate(["heart", "blood", "city", "liver", "pain", "bread", "dog", "green"])]
    pq.write_table(pa.Table.from_pylist(passages), tmp_path / "passages.parquet")
    table = MappedTable.open([tmp_path / "passages.parquet"], tmp_path / "table", ["id", "title", "text"], "id")
    data = grid_set(dev, TextLookup(table, lambda r: r["text"], ["title", "text"]))
    assert set(data.corpus) == {p["id"] for p in passages}
    best, scores = choose_alpha(load(tiny_model_dir), tmp_path / "tuned", data, EvalConfig(precision="fp32"))
    assert list(scores) == [f"{a:g}" for a in GRID]
    assert scores[f"{best:g}"] == max(scores.values())
    assert len(set(scores.values())) > 1  # the grid points are different models


def test_regressions_name_the_sets_where_tuned_or_merged_is_significantly_worse():
    compared = [{"set": "hpo (dev, human)", "comparison": "tuned - base", "diff": -0.02, "low": -0.03, "high": -0.01},
                {"set": "hpo (dev, human)", "comparison": "merged - base", "diff": -0.01, "low": -0.02, "high": 0.001},
                {"set": "scifact", "comparison": "merged - base", "diff": -0.05, "low": -0.08, "high": -0.02},
                {"set": "scifact", "comparison": "tuned - bm25", "diff": -0.05, "low": -0.08, "high": -0.02}]
    assert regressions(compared) == [
        "tuned is significantly worse than base on hpo (dev, human): nDCG@10 -0.020 [-0.030, -0.010]",
        "merged is significantly worse than base on scifact: nDCG@10 -0.050 [-0.080, -0.020]"]
