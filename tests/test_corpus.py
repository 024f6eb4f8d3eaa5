"""corpus.py: cleaning, the readers (files, JSONL, Parquet, BEIR), chunking with the packaged MiniLM tokenizer."""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedtune.config import Config
from embedtune.corpus import (
    CorpusConfig,
    Document,
    chunk_documents,
    chunk_spans,
    clean_documents,
    clean_text,
    read_documents,
)
from embedtune.errors import EmbedtuneError
from embedtune.validate import problems


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from embedtune.assets import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)


def n_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def read(cfg: CorpusConfig) -> list[Document]:
    return list(read_documents(cfg))


# ---------------------------------------------------------------- clean_text

def test_clean_text_applies_nfkc():
    assert clean_text("\ufb01ne \uff26\uff55\uff4c\uff4c x\u00b2") == "fine Full x2"  # ligature, full-width, superscript


def test_clean_text_collapses_every_kind_of_whitespace():
    text = "  a \t\n b\r\n\n c\u00a0d\u2003e\u3000f  "
    assert clean_text(text) == "a b c d e f"


def test_clean_text_removes_c0_controls_and_delete():
    out = clean_text("a\x00b\x07c\x1bd\x7fe\x0cf")
    assert not any(unicodedata.category(ch) == "Cc" for ch in out)
    assert out.replace(" ", "") == "abcdef"


def test_clean_text_removes_zero_width_space_and_bom():
    out = clean_text("\ufeffzero\u200bwidth \ufeff")
    assert "\u200b" not in out and "\ufeff" not in out
    assert out.replace(" ", "") == "zerowidth"


def test_clean_text_of_only_invisible_characters_is_empty():
    assert clean_text("\u200b\ufeff\x00 \t\n") == ""


@pytest.mark.parametrize("char", [
    pytest.param("\x80", id="C1-PAD"),
    pytest.param("\x9f", id="C1-APC"),
])
def test_clean_text_removes_c1_controls(char):
    out = clean_text(f"a{char}b")
    assert not any(unicodedata.category(ch) == "Cc" for ch in out), repr(out)


def test_clean_text_removes_word_joiner():
    assert "\u2060" not in clean_text("a\u2060b")


def test_clean_documents_cleans_title_and_text_and_drops_empty_documents():
    docs = [Document("a", " Ti\u200btle ", "Some\n\ntext", "s"), Document("b", "t", "\u200b \x00", "s")]
    out = clean_documents(iter(docs))
    assert [(d.doc_id, d.title, d.text) for d in out] == [("a", "Title", "Some text")]  # zero-width characters vanish


# ---------------------------------------------------------------- files

HTML = """<!doctype html><html><head><title>  Kidney   cysts </title>
<script>var leaked = "HEAD_SCRIPT";</script><style>.x { color: red }</style></head>
<body><h1>Heading</h1><p>Renal cysts are fluid&nbsp;filled &amp; round.</p>
<script>alert("BODY_SCRIPT")</script><noscript>NOSCRIPT_TEXT</noscript></body></html>
"""


@pytest.fixture
def files_corpus(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("Plain text document about kidneys.\n", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# Notes\n\nMarkdown *document*.\n", encoding="utf-8")
    (root / "sub" / "deeper" / "c.html").write_text(HTML, encoding="utf-8")
    (root / "sub" / "h1only.htm").write_text("<html><body><h1>Only heading</h1><p>Body.</p></body></html>",
                                             encoding="utf-8")
    (root / "bom.txt").write_bytes(b"\xef\xbb\xbfStarts with a byte order mark.")
    (root / "bad.txt").write_bytes(b"good start \xff\xfe\xc3 good end")
    (root / "UPPER.TXT").write_text("Upper-case suffix.", encoding="utf-8")
    (root / "rows.csv").write_text("id,text\nr1,First row about lungs.\nr2,Second row about skin.\n", encoding="utf-8")
    return root


def test_read_files_walks_nested_folders_in_sorted_order(files_corpus: Path):
    docs = read(CorpusConfig(format="files", path=str(files_corpus)))
    assert [d.doc_id for d in docs] == ["UPPER.TXT", "a.txt", "bad.txt", "bom.txt", "sub/b.md",
                                        "sub/deeper/c.html", "sub/h1only.htm"]
    assert all(d.source == d.doc_id for d in docs)  # source = path relative to the corpus root
    by_id = {d.doc_id: d for d in docs}
    assert by_id["a.txt"].title == "a"             # text files: the file stem is the title
    assert by_id["a.txt"].text == "Plain text document about kidneys.\n"
    assert "Markdown *document*." in by_id["sub/b.md"].text


def test_read_files_html_uses_title_and_drops_scripts_and_styles(files_corpus: Path):
    docs = clean_documents(read_documents(CorpusConfig(format="files", path=str(files_corpus))))
    html = {d.doc_id: d for d in docs}["sub/deeper/c.html"]
    assert html.title == "Kidney cysts"
    assert "Renal cysts are fluid filled & round." in html.text
    assert "Heading" in html.text
    for leaked in ("HEAD_SCRIPT", "BODY_SCRIPT", "NOSCRIPT_TEXT", "color", "<p>"):
        assert leaked not in html.text


def test_read_files_html_without_title_falls_back_to_h1(files_corpus: Path):
    docs = read(CorpusConfig(format="files", path=str(files_corpus)))
    assert {d.doc_id: d for d in docs}["sub/h1only.htm"].title == "Only heading"


def test_read_files_strips_bom_and_replaces_invalid_utf8(files_corpus: Path):
    by_id = {d.doc_id: d for d in read(CorpusConfig(format="files", path=str(files_corpus)))}
    assert by_id["bom.txt"].text == "Starts with a byte order mark."
    bad = by_id["bad.txt"].text
    assert bad.startswith("good start ") and bad.endswith(" good end")  # the document is kept whole
    assert "\ufffd" in bad


def test_read_files_honours_extensions_and_max_documents(files_corpus: Path):
    docs = read(CorpusConfig(format="files", path=str(files_corpus), extensions=[".md", ".csv"], id_field="id"))
    assert [(d.doc_id, d.text) for d in docs] == [("rows.csv#r1", "First row about lungs."),
                                                  ("rows.csv#r2", "Second row about skin."), ("sub/b.md", "# Notes\n\nMarkdown *document*.\n")]
    docs = read(CorpusConfig(format="files", path=str(files_corpus), max_documents=2))
    assert [d.doc_id for d in docs] == ["UPPER.TXT", "a.txt"]


def test_read_files_empty_folder_is_an_error(tmp_path: Path):
    (tmp_path / "only.csv").write_text("x", encoding="utf-8")
    with pytest.raises(EmbedtuneError, match=r"no file could be read[\s\S]*skipped \(type\) 1: only.csv \(.csv\)"):
        read(CorpusConfig(format="files", path=str(tmp_path)))


def test_files_format_needs_a_folder(tmp_path: Path):
    f = tmp_path / "a.txt"
    f.write_text("text", encoding="utf-8")
    with pytest.raises(EmbedtuneError, match="must be a folder"):
        read(CorpusConfig(format="files", path=str(f)))


def test_missing_path_is_an_error(tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(EmbedtuneError, match="does not exist") as e:
        read(CorpusConfig(format="files", path=str(missing)))
    assert str(missing) in str(e.value)
    with pytest.raises(EmbedtuneError, match="needs corpus.path"):
        read(CorpusConfig(format="jsonl", path=None))


def test_unknown_format_is_an_error(tmp_path: Path):
    with pytest.raises(EmbedtuneError, match="not one of"):
        read(CorpusConfig(format="xml", path=str(tmp_path)))


# ---------------------------------------------------------------- JSONL

def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_jsonl_reads_configured_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [
        {"key": "d1", "body": "First body.", "head": "First"},
        {"key": "d2", "body": "Second body.", "head": None},
        {"key": 3, "body": 42},
    ])
    cfg = CorpusConfig(format="jsonl", path=str(path), text_field="body", title_field="head", id_field="key")
    docs = read(cfg)
    assert [(d.doc_id, d.title, d.text, d.source) for d in docs] == [
        ("d1", "First", "First body.", "docs.jsonl"),
        ("d2", "", "Second body.", "docs.jsonl"),
        ("3", "", "42", "docs.jsonl"),
    ]


def test_a_text_that_is_not_a_string_is_named_or_joined_and_a_null_text_is_a_counted_skip(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"id": "a", "text": "Plain."}, {"id": "b", "text": ["p1", "p2"]},
                                                 {"id": "c", "text": None}])
    with pytest.raises(EmbedtuneError) as e:  # never the string "['p1', 'p2']"
        read(CorpusConfig(format="jsonl", path=str(path), id_field="id"))
    assert f"{path}:2: field 'text' is a list of 2 strings, not a string" in str(e.value)
    assert "corpus.list_separator" in str(e.value)
    counts = Counter()
    docs = list(read_documents(CorpusConfig(format="jsonl", path=str(path), id_field="id", list_separator="\n"), counts))
    assert [(d.doc_id, d.text) for d in docs] == [("a", "Plain."), ("b", "p1\np2")]
    assert counts["null_text_skipped"] == 1
    nested = write_jsonl(tmp_path / "nested.jsonl", [{"text": {"body": "x"}}])
    with pytest.raises(EmbedtuneError, match=r"nested.jsonl:1: field 'text' is a dict, not a string"):
        read(CorpusConfig(format="jsonl", path=str(nested)))


def test_jsonl_without_id_field_gives_distinct_stable_ids(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": f"doc {i}"} for i in range(3)])
    cfg = CorpusConfig(format="jsonl", path=str(path), title_field=None)
    first, second = read(cfg), read(cfg)
    assert len({d.doc_id for d in first}) == 3
    assert [d.doc_id for d in first] == [d.doc_id for d in second]
    assert all(d.title == "" for d in first)


def test_jsonl_invalid_line_names_file_and_line(tmp_path: Path):
    path = tmp_path / "docs.jsonl"
    path.write_text('{"text": "ok"}\n\n{"text": "broken"\n', encoding="utf-8")  # line 2 blank, line 3 bad
    with pytest.raises(EmbedtuneError, match="invalid JSON") as e:
        read(CorpusConfig(format="jsonl", path=str(path)))
    assert f"{path}:3:" in str(e.value)


def test_jsonl_non_object_line_is_an_error(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "ok"}, ["a", "list"]])
    with pytest.raises(EmbedtuneError, match="expected a JSON object") as e:
        read(CorpusConfig(format="jsonl", path=str(path)))
    assert f"{path}:2:" in str(e.value)


def test_jsonl_wrong_text_field_names_it_and_lists_the_fields(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"body": "x", "title": "t", "uid": "1"}])
    with pytest.raises(EmbedtuneError) as e:
        read(CorpusConfig(format="jsonl", path=str(path), text_field="content"))
    msg = str(e.value)
    assert "'content'" in msg and f"{path}:1" in msg
    assert "body, title, uid" in msg  # the fields the record does have
    assert "corpus.text_field" in msg


def test_jsonl_wrong_id_field_is_an_error(tmp_path: Path):
    path = write_jsonl(tmp_path / "docs.jsonl", [{"text": "x", "uid": "1"}])
    with pytest.raises(EmbedtuneError, match="no field 'id'.*text, uid"):
        read(CorpusConfig(format="jsonl", path=str(path), id_field="id"))


def test_jsonl_format_needs_a_file(tmp_path: Path):
    with pytest.raises(EmbedtuneError, match="must be a file"):
        read(CorpusConfig(format="jsonl", path=str(tmp_path)))


# ---------------------------------------------------------------- Parquet

def test_parquet_reads_columns(tmp_path: Path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["p1", "p2"], "title": ["T1", None], "text": ["one", "two"]}), path)
    docs = read(CorpusConfig(format="parquet", path=str(path), id_field="id"))
    assert [(d.doc_id, d.title, d.text, d.source) for d in docs] == [
        ("p1", "T1", "one", "docs.parquet"), ("p2", "", "two", "docs.parquet")]


def test_parquet_missing_text_column_lists_columns(tmp_path: Path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["p1"], "body": ["one"]}), path)
    with pytest.raises(EmbedtuneError) as e:
        read(CorpusConfig(format="parquet", path=str(path)))
    msg = str(e.value)
    assert str(path) in msg and "'text'" in msg and "id, body" in msg and "corpus.text_field" in msg


def test_parquet_unreadable_file_is_an_error(tmp_path: Path):
    path = tmp_path / "docs.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(EmbedtuneError, match="not a readable Parquet file"):
        read(CorpusConfig(format="parquet", path=str(path)))


# ---------------------------------------------------------------- BEIR

def test_beir_corpus_from_folder_or_file(tmp_path: Path):
    write_jsonl(tmp_path / "corpus.jsonl", [
        {"_id": "HP:1", "title": "Short stature", "text": "Low height."},
        {"_id": "HP:2", "text": "No title here."},
    ])
    expected = [("HP:1", "Short stature", "Low height."), ("HP:2", "", "No title here.")]
    for path in (tmp_path, tmp_path / "corpus.jsonl"):
        # text_field/id_field are ignored for BEIR: its fields are fixed (_id, title, text)
        docs = read(CorpusConfig(format="beir", path=str(path), text_field="ignored", id_field="ignored"))
        assert [(d.doc_id, d.title, d.text) for d in docs] == expected
        assert {d.source for d in docs} == {"corpus.jsonl"}


def test_beir_record_without_id_is_an_error(tmp_path: Path):
    write_jsonl(tmp_path / "corpus.jsonl", [{"title": "t", "text": "x"}])
    with pytest.raises(EmbedtuneError, match="no field '_id'"):
        read(CorpusConfig(format="beir", path=str(tmp_path)))


# ---------------------------------------------------------------- chunk_spans

def offsets_of(n: int) -> list[tuple[int, int]]:
    return [(10 * i, 10 * i + 5) for i in range(n)]  # token i covers chars [10i, 10i + 5)


def test_chunk_spans_windows_overlap_and_last_window():
    spans = chunk_spans(offsets_of(10), size=4, overlap=1)
    # token windows [0,4) [3,7) [6,10): one shared token between neighbours, the last one ends the text
    assert spans == [(0, 35, 4), (30, 65, 4), (60, 95, 4)]


def test_chunk_spans_short_last_window():
    spans = chunk_spans(offsets_of(11), size=4, overlap=2)
    assert [n for _, _, n in spans] == [4, 4, 4, 4, 3]  # windows start at 0,2,4,6,8; [8,11) is the last
    assert spans[-1] == (80, 105, 3)


def test_chunk_spans_document_shorter_than_a_window():
    assert chunk_spans(offsets_of(3), size=8, overlap=2) == [(0, 25, 3)]
    assert chunk_spans(offsets_of(8), size=8, overlap=2) == [(0, 75, 8)]


def test_chunk_spans_of_no_tokens():
    assert chunk_spans([], size=8, overlap=2) == []


def test_chunk_spans_cover_every_token_within_the_size_bound():
    offsets = offsets_of(97)
    for size, overlap in [(5, 0), (7, 3), (16, 15), (100, 10)]:
        spans = chunk_spans(offsets, size, overlap)
        assert all(1 <= n <= size for _, _, n in spans)
        assert spans[0][0] == 0 and spans[-1][1] == offsets[-1][1]
        starts = [start // 10 for start, _, _ in spans]  # token index of each window's first token
        assert all(b - a == size - overlap for a, b in zip(starts, starts[1:]))


# ---------------------------------------------------------------- chunk_documents

# ordinary words, each one WordPiece token in the MiniLM (bert-base-uncased) vocabulary
WORDS = ("the kidney heart blood brain bone skin muscle nerve liver lung eye ear nose mouth hand foot leg arm "
         "head neck back chest face hair tooth finger toe knee hip spine joint vein cell gene body fever pain "
         "cough rash swelling weakness fatigue growth height weight birth child adult infant male female left "
         "right upper lower small large short long thin thick red white black green blue yellow hot cold dry wet "
         "soft hard fast slow early late high low deep open closed round flat sharp dull loud quiet light dark "
         "clear heavy strong weak normal rare common mild severe acute").split()


@pytest.fixture(scope="module")
def word_doc(tokenizer) -> Document:
    words = WORDS[:100]
    assert len(words) == 100 and all(n_tokens(tokenizer, w) == 1 for w in words)  # the test's premise
    return Document(doc_id="d1", title="Words", text=" ".join(words), source="words.txt")


def test_chunk_documents_windows_overlap_and_last_window(tokenizer, word_doc):
    cfg = CorpusConfig(chunk_tokens=20, chunk_overlap=5, min_chars=1)
    passages = chunk_documents([word_doc], tokenizer, cfg)
    words = word_doc.text.split()
    starts = [0, 15, 30, 45, 60, 75, 90]  # 15 tokens apart; the last window holds the 10 that remain
    assert [p["text"] for p in passages] == [" ".join(words[s:s + 20]) for s in starts]
    assert [p["n_tokens"] for p in passages] == [20] * 6 + [10]
    for a, b in zip(passages, passages[1:]):
        assert a["text"].split()[-5:] == b["text"].split()[:5]  # chunk_overlap tokens shared
    assert {(p["doc_id"], p["title"], p["source"]) for p in passages} == {("d1", "Words", "words.txt")}


def test_chunk_documents_token_bound_on_real_text(tokenizer):
    docs = list(clean_documents(read_documents(CorpusConfig(format="hpo", max_documents=200))))
    cfg = CorpusConfig(chunk_tokens=48, chunk_overlap=8)
    passages = chunk_documents(docs, tokenizer, cfg)
    assert len(passages) > len(docs) * 0.9  # most definitions fit one window; long ones give several
    assert all(1 <= p["n_tokens"] <= 48 for p in passages)
    assert any(p["n_tokens"] == 48 for p in passages)  # some definitions really were cut
    assert all(len(p["text"]) >= cfg.min_chars for p in passages)


def test_chunk_documents_whole_word_passages_fit_when_retokenized(tokenizer, word_doc):
    passages = chunk_documents([word_doc], tokenizer, CorpusConfig(chunk_tokens=12, chunk_overlap=3, min_chars=1))
    assert [n_tokens(tokenizer, p["text"]) for p in passages] == [p["n_tokens"] for p in passages]


MULTI_PIECE = " ".join(["Unbelievably hyperextensible metacarpophalangeal joints characterize "
                        "pseudohypoparathyroidism."] * 10)


def test_chunk_documents_passages_fit_chunk_tokens_when_retokenized(tokenizer):
    doc = Document("d1", "T", MULTI_PIECE, "s")
    cfg = CorpusConfig(chunk_tokens=9, chunk_overlap=2, min_chars=1)  # the longest word is 8 tokens
    passages = chunk_documents([doc], tokenizer, cfg)
    sizes = {p["text"]: n_tokens(tokenizer, p["text"]) for p in passages}
    assert all(n <= cfg.chunk_tokens for n in sizes.values()), {t: n for t, n in sizes.items() if n > 9}


def test_chunk_documents_does_not_cut_words(tokenizer):
    doc = Document("d1", "T", MULTI_PIECE, "s")
    passages = chunk_documents([doc], tokenizer, CorpusConfig(chunk_tokens=9, chunk_overlap=2, min_chars=1))
    words = set(doc.text.replace(".", " .").split())  # punctuation is a word of its own to the tokenizer
    cut = [p["text"] for p in passages if not set(p["text"].replace(".", " .").split()) <= words]
    assert cut == []


def test_chunk_documents_ids_are_stable_across_runs_and_batches(tokenizer, word_doc):
    cfg = CorpusConfig(chunk_tokens=20, chunk_overlap=5, min_chars=1)
    other = Document("d0", "Other", "A completely different document about the liver and blood.", "other.txt")
    first = chunk_documents([word_doc], tokenizer, cfg)
    again = chunk_documents([Document(word_doc.doc_id, word_doc.title, word_doc.text, word_doc.source)],
                            tokenizer, cfg)
    with_other = chunk_documents([other, word_doc], tokenizer, cfg)
    ids = [p["id"] for p in first]
    assert ids == [p["id"] for p in again]
    assert ids == [p["id"] for p in with_other if p["doc_id"] == "d1"]  # position in the corpus does not matter
    assert len(set(ids)) == len(ids)
    moved = chunk_documents([Document("d1", "Words", word_doc.text, "elsewhere.txt")], tokenizer, cfg)
    assert not set(ids) & {p["id"] for p in moved}  # the id names where the passage comes from


def test_chunk_documents_drops_exact_duplicates(tokenizer):
    text = "Renal cysts are fluid filled sacs that form in the kidneys."
    docs = [Document("a", "Kidney cysts", text, "a.txt"),
            Document("b", "Kidney cysts", text, "b.txt"),        # same title and text: dropped
            Document("c", "Other title", text, "c.txt"),         # same text, another title: kept
            Document("d", "Kidney cysts", text + " More.", "d.txt")]  # another text: kept
    passages = chunk_documents(docs, tokenizer, CorpusConfig(chunk_tokens=64, chunk_overlap=8))
    assert [p["doc_id"] for p in passages] == ["a", "c", "d"]


def test_chunk_documents_drops_passages_below_min_chars(tokenizer):
    docs = [Document("a", "t", "Tiny.", "a.txt"), Document("b", "t", "A passage that is long enough.", "b.txt")]
    passages = chunk_documents(docs, tokenizer, CorpusConfig(chunk_tokens=64, chunk_overlap=8, min_chars=20))
    assert [p["doc_id"] for p in passages] == ["b"]


@pytest.mark.parametrize("overlap", [20, 21])
def test_chunk_overlap_must_be_below_window(overlap):
    """Named before anything runs (validate.py)."""
    found = problems(Config(corpus=CorpusConfig(chunk_tokens=20, chunk_overlap=overlap)))
    assert any(re.search(f"chunk_overlap={overlap}.*chunk_tokens=20", p) for p in found), found


# ---------------------------------------------------------------- repeated ids and drop counts

@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_repeated_ids_with_different_texts_stop_with_both_records_named(tmp_path: Path, fmt):
    records = [{"uid": "a", "text": "Aspirin thins blood."}, {"uid": "b", "text": "Beta blockers slow the heart."},
               {"uid": "a", "text": "Antacids neutralise stomach acid."}]
    path = tmp_path / f"docs.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    cfg = CorpusConfig(format=fmt, path=str(path), id_field="uid", title_field=None)
    with pytest.raises(EmbedtuneError) as e:
        read(cfg)
    message = str(e.value)
    where = (f"{path}:3", f"{path}:1") if fmt == "jsonl" else (f"{path}: row 3", f"{path}: row 1")
    assert message.startswith(where[0]) and where[1] in message and "'a'" in message
    assert "corpus.duplicate_ids" in message
    cfg.duplicate_ids = "keep_first"
    counts = Counter()
    docs = list(read_documents(cfg, counts))
    assert [(d.doc_id, d.text) for d in docs] == [("a", "Aspirin thins blood."), ("b", "Beta blockers slow the heart.")]
    assert counts["repeated_id_dropped"] == 1
    cfg.duplicate_ids = "suffix"
    docs = read(cfg)
    assert [d.doc_id for d in docs] == ["a", "b", "a#2"] and docs[2].text.startswith("Antacids")


def test_prepare_counts_every_dropped_row(tmp_path: Path, tokenizer):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "a.txt").write_bytes(b"Caf\xe9 au lait is coffee with milk, served hot in a bowl.")  # latin-1
    (tmp_path / "c" / "b.txt").write_text("   \n\t ", encoding="utf-8")                                 # empty
    (tmp_path / "c" / "c.txt").write_text("Caf\ufffd au lait is coffee with milk, served hot in a bowl.", encoding="utf-8")
    (tmp_path / "c" / "d.txt").write_text("Tiny.", encoding="utf-8")                                      # too short
    counts = Counter()
    cfg = CorpusConfig(format="files", path=str(tmp_path / "c"), min_chars=20)
    docs = clean_documents(read_documents(cfg, counts), counts)
    passages = chunk_documents(docs, tokenizer, cfg, counts)
    assert len(passages) == 2  # a and c: titles differ ("a", "c"), so they are not exact duplicates
    assert counts == {"invalid_utf8_chars_replaced": 1, "files_with_invalid_utf8": 1, "empty_after_cleaning": 1,
                      "passage_too_short": 1}
    same_title = [Document("x", "T", "Same text of some length here.", "s"), Document("y", "T", "Same text of some length here.", "s")]
    chunk_documents(same_title, tokenizer, CorpusConfig(), counts)
    assert counts["duplicate_passage"] == 1


def test_invalid_utf8_in_jsonl_is_counted(tmp_path: Path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "caf\xe9 and \xff\xfe bytes"}\n{"text": "fine \xef\xbf\xbd already"}\n')
    counts = Counter()
    docs = list(read_documents(CorpusConfig(format="jsonl", path=str(path), title_field=None), counts))
    assert len(docs) == 2 and counts["invalid_utf8_chars_replaced"] == 3


def test_source_stamp_follows_the_corpus_files(tmp_path):
    """prepare's key holds it: an added, edited or removed file changes it; reading does not; a broken link
    (which the reader skips too) does not break it; the built-in corpus has none."""
    import os

    from embedtune.corpus import source_stamp

    (tmp_path / "a.txt").write_text("first document")
    (tmp_path / "b.md").write_text("second document")
    cfg = CorpusConfig(format="files", path=str(tmp_path))
    first = source_stamp(cfg)
    (tmp_path / "a.txt").read_text()
    assert source_stamp(cfg) == first
    os.symlink(tmp_path / "gone.txt", tmp_path / "broken.txt")
    assert source_stamp(cfg) == first
    (tmp_path / "b.md").write_text("second document, edited")
    edited = source_stamp(cfg)
    (tmp_path / "c.txt").write_text("third")
    added = source_stamp(cfg)
    (tmp_path / "c.txt").unlink()
    assert len({first, edited, added}) == 3 and source_stamp(cfg) == edited
    assert source_stamp(CorpusConfig()) is None
