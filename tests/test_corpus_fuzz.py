"""Corpus fuzzing (hypothesis): random bytes, broken UTF-8, BOMs, huge single lines, empty files, nested
folders, symlink loops, JSONL lines of anything, Parquet files missing columns. Reading, cleaning and
chunking either gives valid passages or raises one EmbedtuneError that names the file; nothing else."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtune.corpus import CorpusConfig, chunk_documents, clean_documents, read_documents
from embedtune.errors import EmbedtuneError
from embedtune.text_units import display_width

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(alphabet="abcdefghij_-.0123456789 ", min_size=1, max_size=12).filter(lambda s: s.strip(". "))
contents = st.one_of(
    st.binary(max_size=2000),                                          # random bytes (broken UTF-8 included)
    st.text(max_size=1500).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.text(max_size=300).map(lambda t: b"\xef\xbb\xbf" + t.encode("utf-8", "surrogatepass")),  # BOM
    st.integers(20_000, 120_000).map(lambda n: b"x" * n),              # one huge line, no spaces
    st.just(b""),                                                      # empty file
    st.sampled_from([b"<html><title>t</title><body><p>Heart rate.</p><script>x()</script></body></html>",
                     b"%PDF-1.4 not really a pdf", b"\x00\x01\x02" * 50]),
)
files = st.lists(st.tuples(st.lists(names, min_size=0, max_size=3), names,
                           st.sampled_from([".txt", ".md", ".html", ".pdf", ".bin"]), contents), max_size=8)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from embedtune.assets import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)


def passages_or_named_error(cfg: CorpusConfig, tokenizer, root: Path) -> list:
    """The property: valid passages, or an EmbedtuneError naming a path under `root`."""
    try:
        passages = chunk_documents(clean_documents(read_documents(cfg)), tokenizer, cfg)
    except EmbedtuneError as e:
        assert str(root) in str(e), f"error does not name the file: {e}"
        return []
    for p in passages:
        assert p["text"].strip() and display_width(p["text"]) >= cfg.min_chars and p["id"] and p["doc_id"]
        assert "\ufeff" not in p["text"] and "\x00" not in p["text"]
        p["text"].encode("utf-8")  # valid UTF-8 (no lone surrogates)
    assert len({p["id"] for p in passages}) == len(passages)
    return passages


@FUZZ
@given(tree=files, loop=st.booleans())
def test_a_folder_of_anything(tokenizer, tree, loop):
    root = Path(tempfile.mkdtemp(prefix="fuzz-files-"))
    try:
        for folders, stem, suffix, data in tree:
            path = root.joinpath(*folders, stem + suffix)
            if path.parent.is_file():
                continue  # a file where a folder would go: skip this entry
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_dir():
                path.write_bytes(data)
        if loop:
            (root / "loop").symlink_to(root, target_is_directory=True)  # a symlink loop
        passages_or_named_error(CorpusConfig(format="files", path=str(root), chunk_tokens=64, chunk_overlap=8),
                                tokenizer, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=200),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8)
lines = st.one_of(
    st.dictionaries(st.sampled_from(["text", "title", "id", "other"]), json_values, max_size=4).map(
        lambda d: json.dumps(d).encode()),
    st.binary(max_size=300),
    st.just(b""),
    st.text(max_size=200).map(lambda t: json.dumps({"text": t}, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(records=st.lists(lines, max_size=10), bom=st.booleans())
def test_a_jsonl_file_of_anything(tokenizer, records, bom):
    root = Path(tempfile.mkdtemp(prefix="fuzz-jsonl-"))
    try:
        path = root / "corpus.jsonl"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(records))
        passages_or_named_error(CorpusConfig(format="jsonl", path=str(path), chunk_tokens=64, chunk_overlap=8),
                                tokenizer, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@FUZZ
@given(columns=st.sets(st.sampled_from(["text", "title", "id", "body"]), max_size=4),
       rows=st.lists(st.text(max_size=300), max_size=6), text_as_int=st.booleans())
def test_a_parquet_file_with_any_columns(tokenizer, columns, rows, text_as_int):
    root = Path(tempfile.mkdtemp(prefix="fuzz-parquet-"))
    try:
        path = root / "corpus.parquet"
        data = {c: ([len(r) for r in rows] if c == "text" and text_as_int else
                    [r.encode("utf-8", "replace").decode("utf-8") for r in rows]) for c in columns}
        pq.write_table(pa.table(data) if data else pa.table({"x": pa.array([], pa.int64())}), path)
        cfg = CorpusConfig(format="parquet", path=str(path), id_field="id" if "id" in columns else None,
                           chunk_tokens=64, chunk_overlap=8)
        passages_or_named_error(cfg, tokenizer, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


words = st.lists(st.sampled_from(["heart", "lung", "kidney", "fever", "valve", "murmur", "chest", "pain", "renal",
                                  "stone", "cough", "blood"]), min_size=5, max_size=120).map(" ".join)


@FUZZ
@given(texts=st.lists(words, min_size=1, max_size=8, unique=True), as_files=st.booleans())
def test_valid_inputs_always_yield_a_passage_per_document(tokenizer, texts, as_files):
    """The positive control of the properties above: well-formed documents are never lost or refused."""
    root = Path(tempfile.mkdtemp(prefix="fuzz-valid-"))
    try:
        if as_files:
            for n, text in enumerate(texts):
                (root / f"doc{n}.txt").write_text(text, encoding="utf-8")
            cfg = CorpusConfig(format="files", path=str(root), chunk_tokens=64, chunk_overlap=8)
        else:
            path = root / "corpus.jsonl"
            path.write_text("".join(json.dumps({"id": f"d{n}", "text": t}) + "\n" for n, t in enumerate(texts)))
            cfg = CorpusConfig(format="jsonl", path=str(path), id_field="id", chunk_tokens=64, chunk_overlap=8)
        passages = passages_or_named_error(cfg, tokenizer, root)
        assert len({p["doc_id"] for p in passages}) == len(texts)
    finally:
        shutil.rmtree(root, ignore_errors=True)
