"""score.py: teacher scoring sharded like generate (two shards merge to what one writes, a finished shard
is not rescored, the merge waits for every shard), teacher-cleaned negatives with their counts, and the
rows training reads (teacher lists that point at the right candidates)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from embedtune.errors import EmbedtuneError
from embedtune.io import read_rows, write_parquet
from embedtune.manifest import Stage
from embedtune.score import pairs_of, shard_key, with_teacher_scores, write_shard_and_merge
from embedtune.teacher import TeacherConfig
from embedtune.train import TrainConfig, TrainData

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WORDS = "gene protein heart lung kidney liver brain blood cell disease fever pain river city".split()


def negatives_file(folder, n=12):
    passages = {f"p{i}": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(2 + i)) for i in range(n)}
    queries = {f"q{i}": " ".join(WORDS[(3 * i + k) % len(WORDS)] for k in range(1 + i % 3)) for i in range(n)}
    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "positive_score": 0.5,
             "negative_ids": [f"p{(i + k) % n}" for k in range(1, 1 + i % 4)],
             "negative_scores": [0.4 - 0.1 * k for k in range(i % 4)]} for i in range(n)]
    write_parquet(rows, folder / "train.parquet")
    return folder / "train.parquet", queries, passages


def stage_in(folder, cfg) -> Stage:
    return Stage("score", folder, cfg, {"negatives": {"run_id": "neg-1", "key": "k"}})


def teacher(model_dir, **kw) -> TeacherConfig:
    return TeacherConfig(kind="biencoder", model=str(model_dir), precision="fp32", **kw)


def test_two_shards_merge_to_what_one_shard_writes_and_done_shards_are_not_rescored(tmp_path, tiny_model_dir):
    path, queries, passages = negatives_file(tmp_path)
    one = teacher(tiny_model_dir)
    one.shard.index, one.shard.count = 0, 1
    single = write_shard_and_merge(one, stage_in(tmp_path / "one", one), path, queries, passages)
    assert single["counts"]["pairs"] == len(pairs_of(read_rows(path))) and single["counts"]["unscored"] == 0

    first, second = teacher(tiny_model_dir), teacher(tiny_model_dir)
    first.shard.index, first.shard.count, second.shard.index, second.shard.count = 0, 2, 1, 2
    assert write_shard_and_merge(first, stage_in(tmp_path / "two", first), path, queries, passages) is None  # waits
    done = tmp_path / "two" / "shard-0-of-2.done"
    stamp = done.stat().st_mtime_ns
    merged = write_shard_and_merge(second, stage_in(tmp_path / "two", second), path, queries, passages)
    assert merged is not None and done.stat().st_mtime_ns == stamp
    a, b = read_rows(tmp_path / "one" / "train.parquet"), read_rows(tmp_path / "two" / "train.parquet")
    assert [r["query_id"] for r in a] == [r["query_id"] for r in b]
    for x, y in zip(a, b):
        assert x["positive_teacher_score"] == pytest.approx(y["positive_teacher_score"], abs=1e-6)
        assert x["negative_teacher_scores"] == pytest.approx(y["negative_teacher_scores"], abs=1e-6)
    shard_rows = [json.loads((tmp_path / "two" / f"shard-{i}-of-2.done").read_text())["rows"] for i in range(2)]
    assert all(n > 0 for n in shard_rows) and sum(shard_rows) == single["counts"]["pairs"]

    # rerun of a finished shard: nothing rescored; switching cleaning on rescoring nothing either
    write_shard_and_merge(first, stage_in(tmp_path / "two", first), path, queries, passages)
    cleaning = teacher(tiny_model_dir, clean_negatives=True)
    cleaning.shard.index, cleaning.shard.count = 0, 2
    assert shard_key(cleaning, stage_in(tmp_path / "two", cleaning)) == shard_key(first, stage_in(tmp_path / "two", first))
    assert write_shard_and_merge(cleaning, stage_in(tmp_path / "two", cleaning), path, queries, passages) is not None
    assert done.stat().st_mtime_ns == stamp


def test_cleaning_drops_negatives_at_or_above_the_positive_and_counts_them():
    rows = [{"query_id": "q1", "passage_id": "a", "negative_ids": ["b", "c", "d"], "negative_scores": [0.5, 0.4, 0.3]},
            {"query_id": "q2", "passage_id": "b", "negative_ids": ["a"], "negative_scores": [0.2]},
            {"query_id": "q3", "passage_id": "c", "negative_ids": ["a"], "negative_scores": [0.1]}]
    score = {("q1", "a"): 0.7, ("q1", "b"): 0.9, ("q1", "c"): 0.7, ("q1", "d"): 0.1,
             ("q2", "b"): 0.6, ("q2", "a"): 0.8, ("q3", "c"): math.nan, ("q3", "a"): 0.9}
    out, counts = with_teacher_scores(rows, score, clean=True)
    assert out[0]["negative_ids"] == ["d"] and out[0]["negative_scores"] == [0.3]  # 0.9 and the tie 0.7 dropped
    assert out[0]["negative_teacher_scores"] == [0.1] and out[0]["positive_teacher_score"] == 0.7
    assert out[1]["negative_ids"] == []
    assert out[2]["negative_ids"] == ["a"]  # no positive score: nothing to compare with, kept
    assert counts == {"queries": 3, "pairs": 8, "unscored": 1, "negatives_dropped": 3,
                      "queries_left_without_negatives": 1}
    kept, plain = with_teacher_scores(rows, score, clean=False)
    assert [r["negative_ids"] for r in kept] == [r["negative_ids"] for r in rows] and "negatives_dropped" not in plain
    with pytest.raises(EmbedtuneError, match="no score"):
        with_teacher_scores(rows, {k: v for k, v in score.items() if k != ("q2", "a")}, clean=False)


def test_training_batches_carry_each_querys_teacher_list_pointing_at_its_candidates():
    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": [f"n{i}-{k}" for k in range(i)],
             "positive_teacher_score": 1.0 + i, "negative_teacher_scores": [10.0 * i + k for k in range(i)]}
            for i in range(4)]
    texts = {pid: pid for r in rows for pid in [r["passage_id"], *r["negative_ids"]]}
    data = TrainData(rows, {r["query_id"]: r["query_id"] for r in rows}, texts, TrainConfig(batch_size=4, hard_negatives=2))
    for rank, world in ((0, 1), (0, 2), (1, 2)):
        data.world = world
        batch = data.batch(0, rank)
        for n, query in enumerate(batch["queries"]):
            row = rows[int(query[1:])]
            scores, columns = batch["teacher"][n], batch["teacher_columns"][n]
            assert batch["candidates"][columns[0]] == row["passage_id"] and scores[0] == row["positive_teacher_score"]
            listed = [(batch["candidates"][c], float(s)) for c, s in zip(columns[1:].tolist(), scores[1:]) if c >= 0]
            truth = dict(zip(row["negative_ids"], row["negative_teacher_scores"]))
            assert len(listed) == min(2, len(truth)) and all(truth[pid] == s for pid, s in listed)
            assert torch.isnan(scores[1 + len(listed):]).all()


def test_scores_are_kept_by_the_pairs_texts_and_a_changed_passage_alone_is_scored_again(tmp_path, tiny_model_dir):
    """A new negatives file after a corpus change (one passage edited): only the pairs naming it are scored;
    every other score comes from the cache, equal to a fresh scoring's."""
    path, queries, passages = negatives_file(tmp_path)
    cfg, cache = teacher(tiny_model_dir), tmp_path / "cache"
    first = write_shard_and_merge(cfg, stage_in(tmp_path / "first", cfg), path, queries, passages, cache_root=cache)
    assert first["counts"]["reused"] == 0
    edited = {**passages, "p3": passages["p3"] + " fever"}
    rows = read_rows(path)
    touched = sum(pid == "p3" for r in rows for pid in [r["passage_id"], *r["negative_ids"]])
    again = Stage("score", tmp_path / "again", cfg, {"negatives": {"run_id": "neg-2", "key": "k"}})
    second = write_shard_and_merge(cfg, again, path, queries, edited, cache_root=cache)
    assert touched and second["counts"]["reused"] == second["counts"]["pairs"] - touched
    fresh = Stage("score", tmp_path / "fresh", cfg, {"negatives": {"run_id": "neg-2", "key": "k"}})
    write_shard_and_merge(cfg, fresh, path, queries, edited)  # no cache: every pair scored now
    for x, y in zip(read_rows(tmp_path / "again" / "train.parquet"), read_rows(tmp_path / "fresh" / "train.parquet")):
        assert x["positive_teacher_score"] == pytest.approx(y["positive_teacher_score"], abs=1e-6)
        assert x["negative_teacher_scores"] == pytest.approx(y["negative_teacher_scores"], abs=1e-6)
    other = teacher(tiny_model_dir, max_length=64)  # another teacher setting finds none of them
    third = write_shard_and_merge(other, stage_in(tmp_path / "other", other), path, queries, edited, cache_root=cache)
    assert third["counts"]["reused"] == 0
