"""Atomic file writes and the Parquet/JSON formats of the run folder.

Every file is written to a temporary name beside its target and renamed: a killed stage leaves either
the whole file or none, and an earlier version stays intact until the new one is complete.
"""

from __future__ import annotations

import contextlib
import functools
import json
import itertools
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.errors import EmbedtuneError


@functools.cache
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise EmbedtuneError(f"cannot write to {path.parent}: {e.strerror}") from e
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:
        if e.filename is not None and e.filename not in (str(tmp), str(path)) and Path(e.filename) != tmp:
            raise  # an error about another file, raised inside the caller's block (a nameless one, e.g.
            # pyarrow's "No space left on device", is about the file being written)
        raise EmbedtuneError(f"cannot write {path}: {e.strerror}") from e
    finally:
        tmp.unlink(missing_ok=True)


def write_json(obj, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike):
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EmbedtuneError(f"missing file {path}: run the stage that writes it first") from e
    except json.JSONDecodeError as e:
        raise EmbedtuneError(f"{path}: line {e.lineno}: invalid JSON ({e.msg})") from e


def write_parquet(rows: list[dict] | pa.Table, path: str | os.PathLike, schema: pa.Schema | None = None) -> None:
    """Write rows (a list of dicts or a table) as one Parquet file, atomically."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def write_parquet_parts(rows: Iterable[dict], folder: Path, prefix: str, schema: pa.Schema, rows_per_file: int,
                        rows_per_group: int = 8192) -> Iterator[str]:
    """Stream rows into Parquet files `<prefix>-00000.parquet`, ... of at most `rows_per_file` rows, each written
    under a temporary name a row group at a time and renamed once complete; yields each file's name once it
    is in place. Memory: one row group."""
    rows = iter(rows)
    for n in itertools.count():
        group = list(itertools.islice(rows, min(rows_per_group, rows_per_file)))
        if not group:
            return
        name = f"{prefix}-{n:05d}.parquet"
        with atomic_path(Path(folder) / name) as tmp, pq.ParquetWriter(tmp, schema) as writer:
            written = 0
            while group:
                writer.write_table(pa.Table.from_pylist(group, schema=schema))
                written += len(group)
                group = list(itertools.islice(rows, min(rows_per_group, rows_per_file - written)))
        yield name


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    path = Path(path)
    if not path.exists():
        raise EmbedtuneError(f"missing file {path}: run the stage that writes it first")
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        raise EmbedtuneError(f"{path}: not a readable Parquet file ({e})") from e


def read_rows(path: str | os.PathLike, columns: list[str] | None = None) -> list[dict]:
    return read_parquet(path, columns).to_pylist()


def read_stage_table(folder: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """The Parquet files a finished stage lists in its manifest (`files`), as one table."""
    folder = Path(folder)
    manifest = read_json(folder / "manifest.json")
    return pa.concat_tables([read_parquet(folder / name, columns) for name in manifest["files"]])


def iter_jsonl(path: str | os.PathLike, counts: Counter | None = None) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; a bad line is an error naming file:line. Invalid UTF-8
    becomes U+FFFD, counted in `counts["invalid_utf8_chars_replaced"]`."""
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                line = raw.decode("utf-8", errors="replace")
                if counts is not None:
                    counts["invalid_utf8_chars_replaced"] += line.count("\ufffd") - raw.count("\ufffd".encode())
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EmbedtuneError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
            if not isinstance(record, dict):
                raise EmbedtuneError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}")
            yield lineno, record
