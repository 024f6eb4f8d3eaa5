"""store.py: memory-mapped tables found by id through 8-byte hashes, text lookups, and the digest set."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import embedtune.store as store
from embedtune.errors import EmbedtuneError
from embedtune.store import DigestSet, MappedTable, TextLookup, hash64, texts_of


def parts(tmp_path, rows: list[dict], per_file: int) -> list:
    paths = []
    for n, start in enumerate(range(0, len(rows), per_file)):
        paths.append(tmp_path / f"part-{n}.parquet")
        pq.write_table(pa.Table.from_pylist(rows[start:start + per_file]), paths[-1])
    return paths


ROWS = [{"id": f"p{i:03d}", "title": f"T{i}", "text": f"text {i}", "doc": f"d{i // 3}"} for i in range(50)]


def test_a_table_of_several_files_finds_every_id_and_keeps_file_order(tmp_path):
    table = MappedTable.open(parts(tmp_path, ROWS, 17), tmp_path / "t", ["id", "title", "text"], "id")
    assert len(table) == 50 and table.table.column("id").to_pylist() == [r["id"] for r in ROWS]
    ids = ["p049", "p000", "p017", "p033"]
    rows = table.rows_of(ids)
    assert rows.tolist() == [49, 0, 17, 33]
    assert table.take(rows, ["text"]).column("text").to_pylist() == ["text 49", "text 0", "text 17", "text 33"]
    assert table.rows_of(["nope", "p001"], missing_ok=True).tolist() == [-1, 1]
    with pytest.raises(EmbedtuneError, match="nope"):
        table.rows_of(["p001", "nope"])
    assert table.rows_of([]).tolist() == []


def test_the_table_is_memory_mapped_and_built_once(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "BATCH_ROWS", 100)  # 20 record batches
    big = [{"id": f"p{i}", "text": "word " * 200} for i in range(2000)]  # 2 MB of text
    files = parts(tmp_path, big, 2000)
    MappedTable.open(files, tmp_path / "t", ["id", "text"], "id")
    built = (tmp_path / "t" / "table.arrow").stat().st_mtime_ns
    allocated = pa.total_allocated_bytes()
    table = MappedTable.open(files, tmp_path / "t", ["id", "text"], "id")
    assert pa.total_allocated_bytes() - allocated < 100_000  # the texts stay in the map, not in Arrow's memory
    taken = table.take([1999, 5, 1010, 5], ["id", "text"])  # rows of three batches, in the asked order
    assert taken.column("id").to_pylist() == ["p1999", "p5", "p1010", "p5"]
    assert (tmp_path / "t" / "table.arrow").stat().st_mtime_ns == built
    assert isinstance(table.sorted_hashes, np.memmap)
    assert table.rows_of(["p10"]).tolist() == [10] and table.take([10], ["id"]).column("id").to_pylist() == ["p10"]


def test_a_source_rewritten_under_the_same_name_is_read_again(tmp_path):
    files = parts(tmp_path, ROWS[:10], 50)
    assert MappedTable.open(files, tmp_path / "t", ["id", "text"], "id").rows_of(["p009"]).tolist() == [9]
    parts(tmp_path, ROWS[10:30], 50)  # another stage run wrote part-0 again before its manifest changed
    table = MappedTable.open(files, tmp_path / "t", ["id", "text"], "id")
    assert len(table) == 20 and table.rows_of(["p009", "p029"], missing_ok=True).tolist() == [-1, 19]
    with pytest.raises(EmbedtuneError, match="missing file"):
        MappedTable.open([tmp_path / "gone.parquet"], tmp_path / "t", ["id", "text"], "id")


def test_extra_hash_columns_and_repeated_ids(tmp_path):
    table = MappedTable.open(parts(tmp_path, ROWS, 50), tmp_path / "t", ["id", "doc"], "id",
                             {"doc": lambda b: b.column("doc").to_pylist()})
    doc = table.hashes("doc")
    assert doc[0] == doc[2] != doc[3] and np.array_equal(doc, hash64(r["doc"] for r in ROWS))
    with pytest.raises(EmbedtuneError, match="'p001' \\(id\\) is not unique"):
        MappedTable.open(parts(tmp_path, ROWS[:3] + ROWS[1:2], 50), tmp_path / "bad", ["id"], "id")
    assert not (tmp_path / "bad").exists()  # nothing half-built is left to be read later


def test_text_lookup_is_a_mapping_with_batched_access(tmp_path):
    table = MappedTable.open(parts(tmp_path, ROWS, 20), tmp_path / "t", ["id", "title", "text"], "id")
    texts = TextLookup(table, lambda r: f"{r['title']} {r['text']}", ["title", "text"])
    assert texts["p005"] == "T5 text 5" and "p005" in texts and "zz" not in texts and len(texts) == 50
    assert texts.get("zz") is None
    assert texts.many(["p002", "p040"]) == texts_of(texts, ["p002", "p040"]) == ["T2 text 2", "T40 text 40"]
    assert texts.at(18, 22) == [f"T{i} text {i}" for i in range(18, 22)]
    assert list(texts)[:3] == ["p000", "p001", "p002"] and list(texts.values())[-1] == "T49 text 49"
    assert texts_of({"a": "x"}, ["a"]) == ["x"]


def test_digest_set_finds_members_across_runs_and_first_occurrences_in_a_batch():
    seen = DigestSet()
    rng = np.random.default_rng(0)
    members: set[int] = set()
    for _ in range(40):  # many batches: runs merge as they grow
        batch = rng.integers(0, 5000, size=200).astype(np.uint64)
        new = seen.add_new(batch)
        expected, batch_seen = [], set()
        for d in batch.tolist():
            expected.append(d not in members and d not in batch_seen)
            batch_seen.add(d)
        assert new.tolist() == expected
        members |= batch_seen
    assert len(seen) == len(members) and len(seen.runs) <= 12
    assert seen.members(np.array(sorted(members)[:5] + [99999], dtype=np.uint64)).tolist() == [True] * 5 + [False]
