"""io.py and manifest.py: atomic writes, readable errors, and when a stage counts as done."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pytest

import embedtune
from embedtune.errors import EmbedtuneError
from embedtune.io import (
    atomic_path,
    read_json,
    read_parquet,
    read_rows,
    read_stage_table,
    write_json,
    write_parquet,
)
from embedtune.manifest import MANIFEST, Stage, fingerprint, load_manifest


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- atomic writes

def test_atomic_path_writes_through_a_temporary_file(tmp_path: Path):
    target = tmp_path / "sub" / "out.txt"  # the folder is created
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp != target
        tmp.write_text("new", encoding="utf-8")
        assert not target.exists()  # nothing at the target until the block succeeds
    assert target.read_text(encoding="utf-8") == "new"
    assert listing(target.parent) == ["out.txt"]


def test_atomic_path_failure_keeps_the_previous_file_and_leaves_no_temp(tmp_path: Path):
    target = tmp_path / "out.json"
    target.write_text("previous", encoding="utf-8")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as tmp:
            tmp.write_text("half writ", encoding="utf-8")
            raise RuntimeError("killed mid-write")
    assert target.read_text(encoding="utf-8") == "previous"
    assert listing(tmp_path) == ["out.json"]


def test_atomic_path_failure_without_previous_file_leaves_nothing(tmp_path: Path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "out.parquet") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert listing(tmp_path) == []


def test_atomic_path_into_an_unwritable_place_is_an_error(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    with pytest.raises(EmbedtuneError, match="cannot write to"):
        with atomic_path(blocker / "out.json"):
            pass


def test_write_json_replaces_and_reads_back(tmp_path: Path):
    path = tmp_path / "m.json"
    write_json({"b": 1, "a": [1, 2]}, path)
    write_json({"c": Path("/x")}, path)  # non-JSON values are written as strings
    assert read_json(path) == {"c": "/x"}
    assert listing(tmp_path) == ["m.json"]


def test_write_parquet_failure_keeps_the_previous_file(tmp_path: Path):
    path = tmp_path / "rows.parquet"
    write_parquet([{"id": "a"}], path)
    unwritable = pa.table({"id": pa.array([pa.MonthDayNano([1, 2, 3])], type=pa.month_day_nano_interval())})
    with pytest.raises(pa.ArrowNotImplementedError):  # Parquet has no such type: fails inside the write
        write_parquet(unwritable, path)
    assert read_rows(path) == [{"id": "a"}]
    assert listing(tmp_path) == ["rows.parquet"]


# ---------------------------------------------------------------- readable errors

def test_read_json_invalid_names_file_and_line(tmp_path: Path):
    path = tmp_path / "manifest.json"
    path.write_text('{\n  "a": 1,\n  "b": oops\n}\n', encoding="utf-8")
    with pytest.raises(EmbedtuneError) as e:
        read_json(path)
    assert str(path) in str(e.value) and "line 3" in str(e.value)


def test_read_json_missing_file_says_what_to_do(tmp_path: Path):
    with pytest.raises(EmbedtuneError, match="missing file .*run the stage that writes it first"):
        read_json(tmp_path / "nope.json")


def test_read_parquet_errors_name_the_file(tmp_path: Path):
    with pytest.raises(EmbedtuneError, match="missing file"):
        read_parquet(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 but not really")
    with pytest.raises(EmbedtuneError, match="not a readable Parquet file") as e:
        read_parquet(bad)
    assert str(bad) in str(e.value)


def test_write_parquet_round_trip_with_schema(tmp_path: Path):
    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    write_parquet([], tmp_path / "empty.parquet", schema=schema)
    assert read_parquet(tmp_path / "empty.parquet").schema == schema
    write_parquet([{"id": "a", "n": 1}], tmp_path / "one.parquet", schema=schema)
    assert read_rows(tmp_path / "one.parquet", columns=["n"]) == [{"n": 1}]


# ---------------------------------------------------------------- manifests and stages

@dataclass
class Cfg:
    size: int = 1
    name: str = "x"


def test_fingerprint_is_stable_and_sensitive():
    assert fingerprint("s", Cfg(), {"a": 1, "b": 2}) == fingerprint("s", Cfg(), {"b": 2, "a": 1})
    assert fingerprint("s", Cfg()) != fingerprint("s", Cfg(size=2))
    assert fingerprint("s", Cfg()) != fingerprint("t", Cfg())
    assert len(fingerprint("s")) == 16


def test_stage_finish_then_is_done(tmp_path: Path):
    folder = tmp_path / "pairs"
    stage = Stage("filter", folder, Cfg(), {"queries": {"key": "k-queries"}})
    assert not stage.is_done()
    manifest = stage.finish({"kept": 3}, files=["train.parquet"])
    on_disk = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    assert on_disk == load_manifest(folder)
    assert on_disk["key"] == manifest["key"] == stage.key
    assert on_disk["stage"] == "filter" and on_disk["counts"] == {"kept": 3}
    assert on_disk["inputs"] == {"queries": "k-queries"}
    assert on_disk["files"] == ["train.parquet"]
    assert on_disk["embedtune_version"] == embedtune.__version__
    assert on_disk["wall_time_s"] >= 0
    assert Stage("filter", folder, Cfg(), {"queries": {"key": "k-queries"}}).is_done()  # a rerun is skipped


def test_stage_key_changes_with_config_inputs_and_name(tmp_path: Path):
    folder = tmp_path / "pairs"
    Stage("filter", folder, Cfg(), {"queries": {"key": "k1"}}).finish({})
    assert not Stage("filter", folder, Cfg(size=2), {"queries": {"key": "k1"}}).is_done()   # config changed
    assert not Stage("filter", folder, Cfg(), {"queries": {"key": "k2"}}).is_done()         # upstream changed
    assert not Stage("filter", folder, Cfg(), {"passages": {"key": "k1"}}).is_done()        # other input
    assert not Stage("mine", folder, Cfg(), {"queries": {"key": "k1"}}).is_done()
    assert Stage("filter", folder, Cfg(), {"queries": {"key": "k1", "counts": {"n": 9}}}).is_done()  # only keys


def test_stage_key_follows_upstream_manifest(tmp_path: Path):
    up = Stage("prepare", tmp_path / "passages", Cfg(), {})
    up.finish({"passages": 1})
    down = Stage("generate", tmp_path / "queries", Cfg(), {"passages": load_manifest(tmp_path / "passages")})
    down.finish({})
    Stage("prepare", tmp_path / "passages", Cfg(size=5), {}).finish({"passages": 2})  # prepare reran differently
    again = Stage("generate", tmp_path / "queries", Cfg(), {"passages": load_manifest(tmp_path / "passages")})
    assert again.key != down.key and not again.is_done()


def test_stage_with_unreadable_manifest_is_not_done(tmp_path: Path):
    stage = Stage("filter", tmp_path, Cfg(), {})
    (tmp_path / MANIFEST).write_text("{ truncated", encoding="utf-8")
    assert not stage.is_done()
    stage.finish({})
    assert stage.is_done()


# ---------------------------------------------------------------- read_stage_table

def test_read_stage_table_reads_the_listed_files_in_order(tmp_path: Path):
    write_parquet([{"id": "c", "text": "3"}], tmp_path / "part-00001.parquet")
    write_parquet([{"id": "a", "text": "1"}, {"id": "b", "text": "2"}], tmp_path / "part-00000.parquet")
    write_parquet([{"id": "stale", "text": "old"}], tmp_path / "part-00002.parquet")  # not listed: not read
    Stage("prepare", tmp_path, Cfg(), {}).finish({"passages": 3},
                                                   files=["part-00000.parquet", "part-00001.parquet"])
    table = read_stage_table(tmp_path)
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert read_stage_table(tmp_path, columns=["text"]).column_names == ["text"]


def test_read_stage_table_errors(tmp_path: Path):
    with pytest.raises(EmbedtuneError, match="run the stage that writes it first"):
        read_stage_table(tmp_path)  # no manifest: the stage has not run
    Stage("prepare", tmp_path, Cfg(), {}).finish({}, files=["part-00000.parquet"])
    with pytest.raises(EmbedtuneError, match="part-00000.parquet"):
        read_stage_table(tmp_path)  # the manifest lists a file that is gone


def test_atomic_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from embedtune.io import write_json

    write_json({"a": 1}, tmp_path / "x.json")
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o666 & ~mask
