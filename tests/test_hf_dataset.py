"""hf_dataset.py: corpus=hf reads what `datasets` opens (saved datasets, dataset folders, Parquet/JSON files,
streamed or not) with the same errors as the other formats; export writes the training pairs as a dataset
folder that `datasets.load_dataset` opens."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from embedtune.corpus import CorpusConfig, read_documents
from embedtune.errors import EmbedtuneError
from embedtune.hf_dataset import write_pairs_dataset
from embedtune.store import MappedTable, TextLookup

RECORDS = [{"uid": f"doc{i}", "name": f"Title {i}", "body": f"Body text number {i} about genes."} for i in range(7)]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def hf(path, **kw) -> CorpusConfig:
    return CorpusConfig(format="hf", path=str(path), text_field="body", title_field="name", id_field="uid", **kw)


def docs(cfg: CorpusConfig) -> list[tuple[str, str, str]]:
    return [(d.doc_id, d.title, d.text) for d in read_documents(cfg)]


EXPECTED = [(r["uid"], r["name"], r["body"]) for r in RECORDS]


def test_saved_datasets_parquet_json_and_folders_read_alike_streamed_or_not(tmp_path: Path):
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(RECORDS).save_to_disk(str(saved))
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS[:3]),
                          "extra": datasets.Dataset.from_list(RECORDS[3:])}).save_to_disk(str(splits))
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "docs.parquet")
    (tmp_path / "json").mkdir()
    for n in range(2):  # a glob of two JSONL files
        (tmp_path / "json" / f"part{n}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in RECORDS[n * 4:(n + 1) * 4]))
    folder = tmp_path / "folder" / "data"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(RECORDS), folder / "train-00000-of-00001.parquet")
    for streaming in (False, True):
        assert docs(hf(saved, streaming=streaming)) == EXPECTED
        assert docs(hf(tmp_path / "docs.parquet", streaming=streaming)) == EXPECTED
        assert docs(hf(tmp_path / "json" / "*.jsonl", streaming=streaming)) == EXPECTED
        assert docs(hf(tmp_path / "folder", streaming=streaming)) == EXPECTED  # a hub-style dataset folder
        assert docs(hf(splits, split="extra", streaming=streaming)) == EXPECTED[3:]


def test_bad_hf_input_gets_one_clear_error(tmp_path: Path):
    pq.write_table(pa.Table.from_pylist(RECORDS), tmp_path / "docs.parquet")
    with pytest.raises(EmbedtuneError, match=r"docs.parquet \(train\): row 1: no field 'text' \(fields: body, name, uid\)"):
        list(read_documents(CorpusConfig(format="hf", path=str(tmp_path / "docs.parquet"))))
    with pytest.raises(EmbedtuneError, match="corpus.path .*nowhere.*datasets could not open it"):
        list(read_documents(hf(tmp_path / "nowhere")))
    import huggingface_hub

    with pytest.MonkeyPatch.context() as offline:  # as CI runs (HF_HUB_OFFLINE=1): no minutes of retries
        offline.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        offline.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        with pytest.raises(EmbedtuneError, match="corpus.path .*datasets could not open it"):
            list(read_documents(hf("no-such-org/no-such-dataset")))  # a hub id
    saved = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(RECORDS)}).save_to_disk(str(saved))
    with pytest.raises(EmbedtuneError, match="no split 'test' \\(splits: train\\); set corpus.split"):
        list(read_documents(hf(saved, split="test")))
    repeated = tmp_path / "repeated.parquet"
    pq.write_table(pa.Table.from_pylist(RECORDS + RECORDS[2:3]), repeated)
    with pytest.raises(EmbedtuneError, match=r"row 8: id 'doc2' \(uid\) repeats .*row 3"):
        list(read_documents(hf(repeated)))
    counts = Counter()
    assert len(list(read_documents(hf(repeated, duplicate_ids="keep_first"), counts))) == 7
    assert counts["repeated_id_dropped"] == 1


def table_of(tmp_path: Path, name: str, rows: list[dict], id_column: str) -> MappedTable:
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / f"{name}.parquet")
    return MappedTable.open([tmp_path / f"{name}.parquet"], tmp_path / f"t-{name}", list(rows[0]), id_column)


def test_training_pairs_become_a_dataset_folder_with_a_card(tmp_path: Path):
    passages = table_of(tmp_path, "p", [{"id": f"p{i}", "text": f"passage {i}"} for i in range(6)], "id")
    queries = table_of(tmp_path, "q", [{"query_id": f"q{i}", "query": f"query {i}"} for i in range(3)], "query_id")
    rows = pa.Table.from_pylist([
        {"query_id": f"q{i}", "passage_id": f"p{i}", "positive_score": 0.9, "negative_ids": [f"p{i + 3}", "p5"][:2 - i % 2],
         "negative_scores": [0.5, 0.4][:2 - i % 2], "positive_teacher_score": 3.0,
         "negative_teacher_scores": [1.0, 0.5][:2 - i % 2]} for i in range(3)])
    out = tmp_path / "dataset"
    info = write_pairs_dataset(rows, TextLookup(queries, lambda r: r["query"], ["query"]),
                               TextLookup(passages, lambda r: r["text"], ["text"]), out, "demo", "Made here.", block=2)
    assert info["dataset_rows"] == 3 and sorted(p.name for p in (out / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    loaded = datasets.load_dataset(str(out), split="train")
    assert loaded.num_rows == 3
    first, second = loaded[0], loaded[1]
    assert (first["query"], first["positive"], first["negatives"]) == ("query 0", "passage 0", ["passage 3", "passage 5"])
    assert second["negatives"] == ["passage 4"] and second["negative_teacher_scores"] == [1.0]
    card = (out / "README.md").read_text()
    assert card.startswith("---\nconfigs:") and "# demo: training pairs" in card and "3 rows" in card
    # a second export replaces the folder whole
    write_pairs_dataset(rows.slice(0, 1), TextLookup(queries, lambda r: r["query"], ["query"]),
                        TextLookup(passages, lambda r: r["text"], ["text"]), out, "demo", "Made here.")
    # (another cache folder: datasets would reuse its Arrow copy of the same-named file written a moment ago)
    assert datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "c2")).num_rows == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".dataset")] == []
