"""A changed corpus costs what changed: prepare counts passages new, changed and removed; generate asks the
model only for new and changed passages (answers are kept by content), keeps its sample's passages, and
leaves removed passages out; an unchanged corpus generates nothing."""

from __future__ import annotations

import json
import os
import re
from collections import Counter

import pyarrow.parquet as pq
import pytest
from helpers import ChatServer, compose_config, passage_in

from embedtune import pipeline
from embedtune.io import read_rows, read_stage_table
from embedtune.generate.runner import GeneratorConfig, read_queries, select_passages

pytestmark = pytest.mark.slow  # runs prepare and generate end to end (in this process)

WORDS = ["heart", "kidney", "liver", "lung", "skin", "bone", "blood", "brain", "nerve", "muscle", "eye", "ear"]


def document(i: int, edit: str = "") -> str:
    a, b, c = WORDS[i % 12], WORDS[(i * 5 + 1) % 12], WORDS[(i * 7 + 2) % 12]
    return f"Finding {i}: the {a} and the {b} of a patient with a disorder of the {c}. {edit}".strip()


def query_for(messages) -> str:
    """What a person might type for one of these documents: its number and two of its organs."""
    n, a, _, c = re.search(r"Finding (\d+): the (\w+) and the (\w+) .* of the (\w+)", passage_in(messages)).groups()
    return f"finding {n} {a} {c}"


@pytest.fixture
def server():
    """The generator: an OpenAI-compatible server on 127.0.0.1 that counts what it is asked; asked about a
    passage again, it answers otherwise (so a reused answer and a new one differ)."""
    asked = Counter()

    def answer(messages) -> str:
        asked[passage_in(messages)] += 1
        return query_for(messages) + " again" * (asked[passage_in(messages)] - 1)

    chat = ChatServer(None, answer=answer)
    yield chat
    chat.close()


def settings(tmp_path, server) -> list[str]:
    return ["debug=tiny", "corpus=files", f"corpus.path={tmp_path / 'docs'}", f"paths.runs={tmp_path / 'runs'}",
            "run_name=r", "generator.backend=openai", "generator.model=scripted", f"generator.api_base={server.url}",
            "generator.max_passages=null"]


def stages(tmp_path, server, capsys, *extra: str) -> tuple[dict, dict, str]:
    """prepare and generate of run `r` over tmp_path/docs; their printed lines."""
    cfg = compose_config(*settings(tmp_path, server), *extra)
    prepared, generated = pipeline.prepare(cfg), pipeline.generate(cfg)
    return prepared, generated, capsys.readouterr().out


@pytest.fixture
def corpus(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(20):
        (docs / f"d{i:02d}.txt").write_text(document(i))
    return docs


def passage_ids(tmp_path) -> dict[str, str]:
    """Passage id -> its document's file, as prepare wrote them now."""
    table = read_stage_table(tmp_path / "runs" / "r" / "passages", ["id", "source"])
    return dict(zip(table.column("id").to_pylist(), table.column("source").to_pylist()))


def fresh_sample(tmp_path, size: int) -> set[str]:
    """The sample a first generation would draw from the passages there now."""
    return select_passages(passage_ids(tmp_path), GeneratorConfig(max_passages=size))


def cached_answers(tmp_path) -> int:
    parts = (tmp_path / "runs" / "r" / "cache" / "generations").rglob("part-*.parquet")
    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts)


def test_ten_added_two_changed_one_removed_are_exactly_what_is_generated_and_dropped(corpus, server, tmp_path, capsys):
    prepared, generated, out = stages(tmp_path, server, capsys)
    assert prepared["counts"]["passages"] == 20 and generated["counts"]["written"] == 20
    assert generated["counts"]["reused"] == 0 and "corpus:" not in out  # a first prepare compares with nothing
    assert len(server.requests) == 20
    before = {q["passage_id"]: q for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    old_ids = passage_ids(tmp_path)
    mining = compose_config(*settings(tmp_path, server), "mining.top_k=3")  # lists shorter than the corpus
    pipeline.filter_and_split(mining)
    pipeline.mine(mining)

    for i in range(20, 30):
        (corpus / f"d{i:02d}.txt").write_text(document(i))
    for i in (3, 7):
        (corpus / f"d{i:02d}.txt").write_text(document(i, edit="It was seen again in a later visit."))
    (corpus / "d11.txt").unlink()
    prepared, generated, out = stages(tmp_path, server, capsys)
    assert "corpus: +10 new, 2 changed, 1 removed passages" in out
    assert prepared["changes"] == {"new": 10, "changed": 2, "removed": 1, "unchanged": 17}
    assert generated["counts"] == {**generated["counts"], "queries": 29, "written": 12, "reused": 17}
    assert "generate: 12 queries written, 17 reused" in out
    assert len(server.requests) == 32 and cached_answers(tmp_path) == 32  # 20 first answers, then 12 asked

    after = {q["passage_id"]: q for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    ids = passage_ids(tmp_path)
    assert set(after) == set(ids)  # one query per passage there now ...
    removed = [pid for pid, source in old_ids.items() if source == "d11.txt"]
    assert removed and not set(removed) & set(after)  # ... and none for the removed document
    kept_files = {f"d{i:02d}.txt" for i in range(20)} - {"d03.txt", "d07.txt", "d11.txt"}
    unchanged = [pid for pid, source in ids.items() if source in kept_files]
    assert len(unchanged) == 17 and all(after[p]["raw"] == before[p]["raw"] for p in unchanged)
    changed = [pid for pid, source in ids.items() if source in ("d03.txt", "d07.txt")]
    assert len(changed) == 2 and set(changed) <= set(before)  # same ids (file, position): 12 = 10 new + these 2

    later = compose_config(*settings(tmp_path, server), "mining.top_k=3")
    pipeline.filter_and_split(later)
    mined = pipeline.mine(later)["counts"]
    run = tmp_path / "runs" / "r"
    rows = [r for split in ("train", "dev", "test") for r in read_rows(run / "pairs" / f"{split}.parquet")]
    negatives = read_rows(run / "negatives" / "train.parquet")
    named = {r["passage_id"] for r in rows} | {n for r in negatives for n in [r["passage_id"], *r["negative_ids"]]}
    assert rows and negatives and named <= set(ids) and not named & set(removed)
    # mining searched in full only the queries that are new or lost a kept candidate; the rest were updated
    # with a search of the 12 new or changed passages, and the result is what a full search mines
    new_train = sum(r["passage_id"] in changed or old_ids.get(r["passage_id"]) is None for r in negatives)
    assert mined["queries_updated"] > 0 and mined["queries_searched_in_full"] >= new_train > 0
    assert mined["queries_updated"] + mined["queries_searched_in_full"] == len(negatives)
    assert 0 < mined["passages_new_to_search"] <= 12  # those of the train split's documents (held-out ones excluded)
    assert "queries answered from the last mining plus a search of" in capsys.readouterr().out
    assert len(list((run / "negatives").glob("candidates-*"))) == 1  # the earlier mining's lists are gone
    (run / "negatives" / "manifest.json").unlink()  # no kept lists: everything searched in full
    assert pipeline.mine(later)["counts"]["queries_searched_in_full"] == len(negatives)
    full = read_rows(run / "negatives" / "train.parquet")
    assert [(r["query_id"], r["negative_ids"]) for r in full] == [(r["query_id"], r["negative_ids"]) for r in negatives]
    assert [r["negative_scores"] for r in full] == [pytest.approx(r["negative_scores"], abs=1e-5) for r in negatives]


def test_an_unchanged_corpus_generates_nothing_and_says_so(corpus, server, tmp_path, capsys):
    stages(tmp_path, server, capsys)
    _, _, out = stages(tmp_path, server, capsys)
    assert "prepare: up to date" in out and "generate: up to date" in out
    passages = (tmp_path / "runs" / "r" / "passages" / "manifest.json").read_text()
    os.utime(corpus / "d05.txt", ns=(1, 1))  # touched, not edited: prepare reads the files again, finds no change
    prepared, generated, out = stages(tmp_path, server, capsys)
    assert "corpus: unchanged (20 passages)" in out and "the passages stay as they were" in out
    assert prepared["run_id"] == json.loads(passages)["run_id"] and prepared["files"] == json.loads(passages)["files"]
    assert "generate: up to date" in out and len(server.requests) == 20  # so nothing after prepare reruns

    _, generated, out = stages(tmp_path, server, capsys, "force=true")  # force: everything again
    assert generated["counts"]["written"] == 20 and generated["counts"]["reused"] == 0 and len(server.requests) == 40
    forced = {q["passage_id"]: q["raw"] for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    assert all(raw.endswith(" again") for raw in forced.values())
    (corpus / "d20.txt").write_text(document(20))
    _, generated, out = stages(tmp_path, server, capsys)  # a later refresh reuses the newest answers
    assert "generate: 1 queries written, 20 reused" in out and len(server.requests) == 41
    after = {q["passage_id"]: q["raw"] for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    assert all(after[p] == raw for p, raw in forced.items())


def test_the_sample_keeps_its_passages_when_the_corpus_grows(corpus, server, tmp_path, capsys):
    stages(tmp_path, server, capsys, "generator.max_passages=8")
    first = {q["passage_id"] for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    for i in range(20, 40):
        (corpus / f"d{i:02d}.txt").write_text(document(i))
    _, generated, out = stages(tmp_path, server, capsys, "generator.max_passages=8")
    second = {q["passage_id"] for q in read_queries(tmp_path / "runs" / "r" / "queries")}
    assert len(first) == 8 and first < second <= first | fresh_sample(tmp_path, 8)  # the earlier 8 stay, beside
    assert len(second) < 16  # this corpus's own sample of 8 (which shares some of them)
    assert generated["counts"]["reused"] == 8 and generated["counts"]["written"] == len(second) - 8


def test_kill_9_during_a_refresh_then_the_same_command_equals_an_uninterrupted_refresh(corpus, tmp_path, capsys):
    """Two copies of a run refresh after the same corpus change; one `embedtune generate` is SIGKILLed while the
    generator answers (answers are slowed down; kept every 4 prompts); the same command again asks only what
    the killed run had not kept, and ends with the same queries."""
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from helpers import CLEAN_ENV

    slow = ChatServer(None, answer=lambda messages: (time.sleep(0.2), query_for(messages))[1])
    try:
        stages(tmp_path, slow, capsys)
        for i in range(20, 40):
            (corpus / f"d{i:02d}.txt").write_text(document(i))
        (corpus / "d04.txt").write_text(document(4, edit="Seen again."))
        shutil.copytree(tmp_path / "runs" / "r", tmp_path / "runs" / "whole")
        args = [*settings(tmp_path, slow), "generator.concurrency=1", "generator.save_every=4"]
        for name in ("r", "whole"):
            pipeline.prepare(compose_config(*args, f"run_name={name}"))
        asked = len(slow.requests)
        command = [sys.executable, "-m", "embedtune.cli", "generate", *args]
        proc = subprocess.Popen(command, cwd=tmp_path, env=CLEAN_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while len(slow.requests) < asked + 5 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the refresh ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        again = subprocess.run(command, cwd=tmp_path, env=CLEAN_ENV, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-3000:]
        written, reused = map(int, re.search(r"generate: (\d+) queries written, (\d+) reused", again.stdout).groups())
        assert written + reused == 40 and written <= 21 - 4  # 21 to ask; the killed run kept a window of 4 or more
        assert not list((tmp_path / "runs" / "r" / "queries").glob("*.plan"))  # the shard is done: its plan is gone
        pipeline.generate(compose_config(*args, "run_name=whole"))
    finally:
        slow.close()
    rows = lambda name: sorted((q["query_id"], q["passage_id"], q["text"], q["raw"])
                               for q in read_queries(tmp_path / "runs" / name / "queries"))
    assert rows("r") == rows("whole") and len(rows("r")) == 40
