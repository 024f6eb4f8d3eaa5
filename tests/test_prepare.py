"""The prepare stage streams: documents are read, cleaned, chunked and written in bounded Parquet parts
(named by run, so a failed rerun leaves the previous stage whole), and corpus=hf prepares like the rest."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import compose_config

import embedtune.passages as passages
import embedtune.pipeline as pipeline
from embedtune.corpus import CorpusConfig, chunk_documents, clean_documents, read_documents
from embedtune.errors import EmbedtuneError
from embedtune.io import read_stage_table

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WORDS = "gene protein heart lung kidney liver brain blood cell river".split()
RECORDS = [{"id": f"d{i}", "title": f"Doc {i}", "text": " ".join(WORDS[(i + j) % 10] for j in range(15 + 7 * (i % 9)))}
           for i in range(40)]
RECORDS.append(dict(RECORDS[3], id="d-copy"))  # an exact duplicate passage (same title and text)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def prepare(tmp_path: Path, corpus: Path, *extra: str) -> dict:
    cfg = compose_config("corpus=jsonl", f"corpus.path={corpus}", "corpus.id_field=id", "corpus.chunk_tokens=16",
                         "corpus.chunk_overlap=4", f"paths.runs={tmp_path / 'runs'}", "run_name=r", *extra)
    return pipeline.prepare(cfg)


def test_prepare_streams_into_parts_equal_to_chunking_everything_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(passages, "PASSAGE_FILE_ROWS", 7)
    corpus = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    manifest = prepare(tmp_path, corpus)
    folder = tmp_path / "runs" / "r" / "passages"
    rows = read_stage_table(folder).to_pylist()
    assert len(manifest["files"]) == -(-len(rows) // 7) >= 4 and all(f.startswith("part-") for f in manifest["files"])
    assert all(pq.ParquetFile(folder / f).metadata.num_rows <= 7 for f in manifest["files"])
    from transformers import AutoTokenizer

    from embedtune.assets import resolve_model

    cfg = CorpusConfig(format="jsonl", path=str(corpus), id_field="id", chunk_tokens=16, chunk_overlap=4)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    at_once = chunk_documents(list(clean_documents(read_documents(cfg))), tokenizer, cfg)
    assert rows == at_once and len({r["id"] for r in rows}) == len(rows)
    copies = sum(1 for r in rows if r["doc_id"] == "d3")  # every passage of the copied document
    assert manifest["counts"]["documents"] == 41 and manifest["counts"]["dropped"] == {"duplicate_passage": copies}
    assert not any(r["doc_id"] == "d-copy" for r in rows)


def test_a_failed_rerun_leaves_the_previous_passages_whole_and_a_good_one_removes_them(tmp_path, monkeypatch):
    monkeypatch.setattr(passages, "PASSAGE_FILE_ROWS", 7)
    corpus = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    first = prepare(tmp_path, corpus)
    folder = tmp_path / "runs" / "r" / "passages"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    broken = tmp_path / "broken.jsonl"
    broken.write_text(corpus.read_text() + "{not json\n")
    with pytest.raises(EmbedtuneError, match=f"{broken}:42: invalid JSON"):
        prepare(tmp_path, broken, "corpus.chunk_tokens=20")  # fails after writing parts of its own
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    assert all(p.name in before for p in folder.iterdir() if not p.name.startswith("."))  # no half-written parts
    second = prepare(tmp_path, corpus, "corpus.chunk_tokens=20")
    assert set(p.name for p in folder.glob("part-*.parquet")) == set(second["files"])
    assert not set(second["files"]) & set(first["files"])


def test_corpus_hf_prepares_the_same_passages_streamed(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    corpus = write_jsonl(tmp_path / "docs.jsonl", RECORDS)
    prepare(tmp_path, corpus)
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "docs.parquet")
    cfg = compose_config("corpus=hf", f"corpus.path={tmp_path / 'docs.parquet'}", "corpus.id_field=id",
                         "corpus.streaming=true", "corpus.chunk_tokens=16", "corpus.chunk_overlap=4",
                         f"paths.runs={tmp_path / 'runs'}", "run_name=hf")
    pipeline.prepare(cfg)
    text = lambda run: [(r["doc_id"], r["text"]) for r in read_stage_table(tmp_path / "runs" / run / "passages").to_pylist()]
    assert text("hf") == text("r") and len(text("r")) > 41
