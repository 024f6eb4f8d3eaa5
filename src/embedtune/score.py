"""score: a teacher's score for every (query, positive) and (query, mined negative) pair, sharded like
generate, then merged into the negatives with teacher scores.

Query q belongs to shard int(sha1(q.query_id)) % count; a shard is one Parquet file of (query_id, passage_id,
score) written atomically, with a `.done` marker holding the stage key, so a rerun skips finished shards and
a changed teacher rescores them. Once every shard is done, the merge writes `scores/train.parquet`: the rows
of negatives/train.parquet plus `positive_teacher_score` and `negative_teacher_scores`, where with
teacher.clean_negatives a negative the teacher scores at or above its positive is dropped (likely an
unlabelled positive; the count is in the manifest). Training reads that file when a teacher ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Optional

from embedtune.distributed import shard_of_worker
from embedtune.errors import EmbedtuneError
from embedtune.generate.runner import shard_name
from embedtune.io import atomic_path, read_parquet, read_rows, write_parquet
from embedtune.manifest import Stage, fingerprint
from embedtune.score_cache import ScoreCache, pair_key
from embedtune.store import texts_of
from embedtune.teacher import TeacherConfig, make_teacher

SCORED = "train.parquet"


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def pairs_of(rows: list[dict]) -> list[tuple[str, str]]:
    """(query_id, passage_id) of each row's positive and each of its negatives, in row order."""
    return [(r["query_id"], pid) for r in rows for pid in [r["passage_id"], *r["negative_ids"]]]


def score_shard(rows: list[dict], queries: Mapping[str, str], passages: Mapping[str, str], cfg: TeacherConfig,
                index: int, count: int, teacher=None, cache: Optional[ScoreCache] = None) -> tuple[list[dict], int]:
    """This shard's scored pairs, and how many scores came from `cache` (pairs of the same two texts scored
    before by this teacher: the teacher is not loaded when every pair was)."""
    own = pairs_of([r for r in rows if _h(r["query_id"]) % count == index])
    if not own:
        return [], 0
    query_texts, passage_texts = texts_of(queries, [q for q, _ in own]), texts_of(passages, [p for _, p in own])
    keys = [pair_key(q, p) for q, p in zip(query_texts, passage_texts)]
    known = cache.lookup(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    if todo:
        teacher = teacher or make_teacher(cfg)
        scores = teacher.score([query_texts[i] for i in todo], [passage_texts[i] for i in todo])
        if len(scores) != len(todo):
            raise EmbedtuneError(f"score: the teacher returned {len(scores)} scores for {len(todo)} pairs")
        if cache is not None:
            cache.add([keys[i] for i in todo], scores)
        known.update({keys[i]: float(s) for i, s in zip(todo, scores)})
    return [{"query_id": q, "passage_id": p, "score": known[k]} for (q, p), k in zip(own, keys)], len(own) - len(todo)


def write_shard_and_merge(cfg: TeacherConfig, stage: Stage, negatives: Path, queries: Mapping[str, str],
                          passages: Mapping[str, str], force: bool = False,
                          cache_root: Optional[Path] = None) -> Optional[dict]:
    """Score this worker's shard (unless it is done under this key), then merge if every shard is there;
    the manifest once merged, else None. With `cache_root`, scores are kept and found by content there
    (force=true scores every pair again)."""
    out_dir = stage.folder
    index, count = shard_of_worker(cfg.shard)
    name = shard_name(index, count)
    done = out_dir / f"{name}.done"
    rows = read_rows(negatives)
    key = shard_key(cfg, stage)
    if force or not done.exists() or json.loads(done.read_text()).get("key") != key:
        started = time.time()
        cache = None if cache_root is None else ScoreCache(cache_root, cfg, read=not force)
        scored, reused = score_shard(rows, queries, passages, cfg, index, count, cache=cache)
        write_parquet(scored or _empty(), out_dir / f"{name}.parquet")
        seconds = time.time() - started
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps({"key": key, "rows": len(scored), "reused": reused, "seconds": seconds}))
        fresh = len(scored) - reused
        print(f"score: {name}: {fresh:,} pairs scored, {reused:,} reused, in {seconds:.0f}s "
              f"({fresh / max(seconds, 1e-9):.1f} pairs/s)")
    return merge(stage, key, rows, count, cfg.clean_negatives)


def shard_key(cfg: TeacherConfig, stage: Stage) -> str:
    """What a shard's scores depend on: the teacher and the negatives, not what the merge does with them
    (teacher.clean_negatives), so switching cleaning on or off rescores nothing."""
    return fingerprint("score-shard", dataclasses.replace(cfg, clean_negatives=False), stage.inputs)


def _empty():
    import pyarrow as pa

    return pa.table({"query_id": pa.array([], pa.string()), "passage_id": pa.array([], pa.string()),
                     "score": pa.array([], pa.float64())})


def merge(stage: Stage, key: str, rows: list[dict], count: int, clean: bool) -> Optional[dict]:
    """Once every shard of this key is done: scores/train.parquet and the manifest; otherwise name the
    missing shards and return None."""
    out_dir = stage.folder
    missing, seconds, reused = [], 0.0, 0
    for i in range(count):
        done = out_dir / f"{shard_name(i, count)}.done"
        info = json.loads(done.read_text()) if done.exists() else {}
        if info.get("key") != key:
            missing.append(shard_name(i, count))
        else:
            seconds, reused = seconds + info["seconds"], reused + info.get("reused", 0)
    if missing:
        print(f"score: waiting for {len(missing)} of {count} shards: {', '.join(missing[:10])}")
        return None
    files = [f"{shard_name(i, count)}.parquet" for i in range(count)]
    score = {}
    for f in files:
        table = read_parquet(out_dir / f).to_pydict()
        score.update(zip(zip(table["query_id"], table["passage_id"]), table["score"]))
    merged, counts = with_teacher_scores(rows, score, clean)
    write_parquet(merged, out_dir / SCORED)
    counts["reused"] = reused
    print(f"score: {counts['pairs']:,} pairs scored ({reused:,} of them reused, {counts['unscored']:,} without a score)"
          + (f"; {counts['negatives_dropped']:,} negatives scored at or above their positive dropped, "
             f"{counts['queries_left_without_negatives']:,} queries left without any" if clean else ""))
    return stage.finish(counts, files=[*files, SCORED], scoring_seconds=round(seconds, 1))


def with_teacher_scores(rows: list[dict], score: dict[tuple[str, str], float],
                        clean: bool) -> tuple[list[dict], dict]:
    """The negatives rows with their teacher scores (and, when `clean`, without negatives the teacher
    scores at or above the positive), and the counts for the manifest."""
    lost = [pair for pair in pairs_of(rows) if pair not in score]
    if lost:
        raise EmbedtuneError(f"score: {len(lost)} pairs have no score in the shards (e.g. {lost[0]}); "
                             "rerun `embedtune score force=true`")
    out, dropped, emptied, unscored = [], 0, 0, 0
    for r in rows:
        positive = score[(r["query_id"], r["passage_id"])]
        negatives = [(pid, s, score[(r["query_id"], pid)]) for pid, s in zip(r["negative_ids"], r["negative_scores"])]
        unscored += sum(math.isnan(t) for _, _, t in negatives) + math.isnan(positive)
        if clean and not math.isnan(positive):
            kept = [n for n in negatives if math.isnan(n[2]) or n[2] < positive]
            dropped += len(negatives) - len(kept)
            emptied += bool(negatives) and not kept
            negatives = kept
        out.append({**r, "negative_ids": [n[0] for n in negatives], "negative_scores": [n[1] for n in negatives],
                    "positive_teacher_score": positive, "negative_teacher_scores": [n[2] for n in negatives]})
    counts = {"queries": len(rows), "pairs": len(score), "unscored": unscored}
    if clean:
        counts.update(negatives_dropped=dropped, queries_left_without_negatives=emptied)
    return out, counts
