"""beir.py: BEIR sets read as BEIR defines them; repeated ids and fractional grades are errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedtune.beir import read_beir, read_qrels
from embedtune.errors import EmbedtuneError


def beir_set(folder: Path, corpus=None, queries=None, qrels="q1\td1\t1\nq2\td2\t2\n") -> Path:
    corpus = corpus or [{"_id": "d1", "title": "Heart", "text": "A pump."}, {"_id": "d2", "text": "Lungs breathe."}]
    queries = queries or [{"_id": "q1", "text": "what pumps blood"}, {"_id": "q2", "text": "breathing organ"},
                          {"_id": "q3", "text": "judged in another split"}]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus))
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries))
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    return folder


def test_reads_a_valid_set_and_counts_what_cannot_count(tmp_path):
    folder = beir_set(tmp_path / "s", qrels="q1\td1\t1\nq2\td2\t2.0\nq2\tgone\t1\n")
    data = read_beir(folder, "test", "toy")
    assert data.corpus == {"d1": "Heart A pump.", "d2": "Lungs breathe."}
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2, "gone": 1}} and set(data.queries) == {"q1", "q2"}
    assert data.missing_documents == 1 and data.unjudged_queries == 1


@pytest.mark.parametrize("qrels, message", [
    ("q1\td1\t0.5\n", r"test.tsv:2: score '0.5' is not an integer grade"),
    ("q1\td1\thigh\n", r"test.tsv:2: score 'high' is not an integer grade"),
    ("q1\td1\t1\nq2\td2\t1\nq1\td1\t0\n", r"test.tsv:4: query 'q1' and document 'd1' are judged again \(first on line 2\)"),
])
def test_bad_qrels_lines_are_named(tmp_path, qrels, message):
    folder = beir_set(tmp_path / "s", qrels=qrels)
    with pytest.raises(EmbedtuneError, match=message):
        read_qrels(folder / "qrels" / "test.tsv")


def test_repeated_corpus_and_query_ids_name_both_lines(tmp_path):
    corpus = [{"_id": "d1", "text": "A pump."}, {"_id": "d2", "text": "x"}, {"_id": "d1", "text": "Another text."}]
    folder = beir_set(tmp_path / "c", corpus=corpus)
    with pytest.raises(EmbedtuneError, match=r"corpus.jsonl:3: _id 'd1' repeats line 1"):
        read_beir(folder, "test", "toy")
    queries = [{"_id": "q1", "text": "a"}, {"_id": "q2", "text": "b"}, {"_id": "q2", "text": "c"}]
    folder = beir_set(tmp_path / "q", queries=queries)
    with pytest.raises(EmbedtuneError, match=r"queries.jsonl:3: _id 'q2' repeats line 2"):
        read_beir(folder, "test", "toy")


def test_null_or_non_string_texts_are_named_with_file_line_and_field(tmp_path):
    folder = beir_set(tmp_path / "n", corpus=[{"_id": "d1", "text": "A pump."}, {"_id": "d2", "text": None}])
    with pytest.raises(EmbedtuneError, match=r"corpus.jsonl:2: field 'text' is null, not a string"):
        read_beir(folder, "test", "toy")
    folder = beir_set(tmp_path / "l", queries=[{"_id": "q1", "text": ["what", "pumps"]}, {"_id": "q2", "text": "b"}])
    with pytest.raises(EmbedtuneError, match=r"queries.jsonl:1: field 'text' is a list, not a string"):
        read_beir(folder, "test", "toy")


def test_byte_order_marks_are_read(tmp_path):
    folder = beir_set(tmp_path / "b")
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv"):
        path = folder / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = read_beir(folder, "test", "toy")
    assert data.qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}} and set(data.corpus) == {"d1", "d2"}


def test_every_bad_qrels_line_is_named_at_once(tmp_path):
    folder = beir_set(tmp_path / "m", qrels="q1\td1\t0.5\nq2\td2\n" + "".join(f"q{i}\td1\tx\n" for i in range(3, 10)))
    with pytest.raises(EmbedtuneError) as raised:
        read_qrels(folder / "qrels" / "test.tsv")
    message = str(raised.value)
    assert "test.tsv:2: score '0.5'" in message and "test.tsv:3: expected 3 tab-separated columns" in message
    assert "(and 4 more)" in message


def test_unjudged_queries_and_relevant_judgements_of_absent_documents_are_counted_and_reported(tmp_path):
    from embedtune.evaluate import set_caveats

    folder = beir_set(tmp_path / "g", qrels="q1\td1\t1\nq1\tgone\t0\nq2\td2\t1\nq2\talso-gone\t2\n")
    data = read_beir(folder, "test", "toy")
    assert data.missing_documents == 1  # the grade-0 judgement of an absent document costs nothing
    assert data.unjudged_queries == 1
    assert set_caveats([data]) == [
        "toy: 1 relevant judgements name documents absent from the corpus (no model can retrieve them; they lower recall)",
        "toy: 1 queries of queries.jsonl have no judgement in this split and are not scored"]
