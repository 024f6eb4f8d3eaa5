"""Stage outputs as memory-mapped Arrow, looked up by id without a dict of every row.

A stage writes Parquet (compressed, the run folder's contract). Stages that read every row at random (mine,
score, train, filter) open it through a `MappedTable`: the rows converted once into an uncompressed Arrow IPC
file under `cache/tables/`, which the OS pages in and out as needed, and an id index: the 8-byte hashes of
the ids, sorted, beside each one's row. Memory then holds 16 bytes per row, not a Python object per text.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path, read_json, write_json

BATCH_ROWS = 65_536  # rows per Arrow record batch (and per hashing step)


def hash64(values: Iterable[str]) -> np.ndarray:
    """8-byte hashes (blake2b) of strings, as uint64: ids and digests that cost 8 bytes each, whatever their length."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(v.encode("utf-8"), digest_size=8).digest(), "little")
                        for v in values), dtype=np.uint64)


class DigestSet:
    """A set of 8-byte digests kept as a few sorted numpy runs: 8 bytes per member, no Python object each.
    Runs merge as they grow (each at least twice the next), so there are O(log n) of them to search."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(r) for r in self.runs)

    def members(self, digests: np.ndarray) -> np.ndarray:
        """True where a digest is already in the set."""
        found = np.zeros(len(digests), dtype=bool)
        for run in self.runs:
            pos = np.minimum(np.searchsorted(run, digests), len(run) - 1)
            found |= run[pos] == digests
        return found

    def fresh(self, digests: np.ndarray) -> np.ndarray:
        """True where a digest is new: not in the set, and its first occurrence in the batch (nothing added)."""
        digests = np.asarray(digests, dtype=np.uint64)
        first = np.zeros(len(digests), dtype=bool)
        first[np.unique(digests, return_index=True)[1]] = True
        return first & ~self.members(digests)

    def add(self, digests: np.ndarray) -> None:
        """Add digests known to be new (see `fresh`)."""
        if len(digests):
            self.runs.append(np.sort(np.asarray(digests, dtype=np.uint64)))
            while len(self.runs) > 1 and len(self.runs[-2]) <= 2 * len(self.runs[-1]):
                last = self.runs.pop()
                self.runs[-1] = np.sort(np.concatenate([self.runs[-1], last]))

    def add_new(self, digests: np.ndarray) -> np.ndarray:
        """Add a batch; True where a digest was new (`fresh`)."""
        digests = np.asarray(digests, dtype=np.uint64)
        new = self.fresh(digests)
        self.add(digests[new])
        return new


def save_npy(array: np.ndarray, path: Path) -> None:
    """`array` as a .npy file, written under a temporary name and renamed (no pickle)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)


@contextlib.contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """One process builds a cache folder while the others (ranks of one node) wait for it."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class MappedTable:
    """One Arrow IPC file, memory-mapped, with a sorted index of its id column's hashes.

    `rows_of(ids)` finds rows by id (binary search, 16 bytes of index per row); `take(rows)` copies only those
    rows out of the map. Extra hash columns (`hashes`) hold a row's group key, e.g. its document.
    """

    DONE = "done.json"

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        info = read_json(self.folder / self.DONE)
        self.id_column: str = info["id_column"]
        self._source = pa.memory_map(str(self.folder / "table.arrow"), "r")
        self.table: pa.Table = pa.ipc.open_file(self._source).read_all()  # zero-copy: backed by the map
        # rows are taken batch by batch: a take on the whole table would first join its batches into one copy
        self._batches = self.table.to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches])
        self.sorted_hashes = np.load(self.folder / "ids.npy", mmap_mode="r")
        self.order = np.load(self.folder / "order.npy", mmap_mode="r")
        if len(self.order) != self.table.num_rows:
            raise EmbedtuneError(f"{self.folder}: index and table disagree; delete the folder to rebuild it")

    @classmethod
    def open(cls, sources: Sequence[Path], folder: Path, columns: list[str], id_column: str,
             hashes: Optional[dict[str, Callable[[pa.RecordBatch], Iterable[str]]]] = None) -> "MappedTable":
        """The table of `sources` (Parquet files, in order) under `folder`, built on first use and built again
        when the sources (name, size, modification time), columns or hash columns differ from what it was
        built from. Callers put the writing stage's run id in the folder's name, so a rerun gets a new one."""
        folder = Path(folder)
        signature = cls._signature(sources, columns, id_column, hashes or {})
        with build_lock(folder):
            done = folder / cls.DONE
            if not done.exists() or read_json(done).get("signature") != signature:
                shutil.rmtree(folder, ignore_errors=True)
                cls._build(sources, folder, columns, id_column, hashes or {}, signature)
        return cls(folder)

    @staticmethod
    def _signature(sources, columns, id_column, hashes) -> list:
        try:
            files = [[Path(p).name, Path(p).stat().st_size, Path(p).stat().st_mtime_ns] for p in sources]
        except FileNotFoundError as e:
            raise EmbedtuneError(f"missing file {e.filename}: run the stage that writes it first") from e
        return [files, list(columns), id_column, sorted(hashes)]

    @classmethod
    def _build(cls, sources, folder: Path, columns, id_column, hashes, signature: list) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        id_parts: list[np.ndarray] = []
        extra_parts: dict[str, list[np.ndarray]] = {name: [] for name in hashes}
        schema = None
        with atomic_path(folder / "table.arrow") as tmp:
            writer = None
            try:
                for source in sources:
                    try:
                        parquet = pq.ParquetFile(source)
                    except (pa.ArrowInvalid, OSError) as e:
                        raise EmbedtuneError(f"{source}: not a readable Parquet file ({e})") from e
                    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=columns):
                        if writer is None:
                            schema = batch.schema
                            writer = pa.ipc.new_file(str(tmp), schema)
                        writer.write_batch(batch.cast(schema))
                        id_parts.append(hash64(batch.column(id_column).to_pylist()))
                        for name, key_of in hashes.items():
                            extra_parts[name].append(hash64(key_of(batch)))
                if writer is None:  # no rows: an empty table of the asked columns
                    writer = pa.ipc.new_file(str(tmp), pa.schema([(c, pa.string()) for c in columns]))
            finally:
                if writer is not None:
                    writer.close()
        ids = np.concatenate(id_parts) if id_parts else np.empty(0, np.uint64)
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        repeats = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(repeats):
            table = pa.ipc.open_file(pa.memory_map(str(folder / "table.arrow"))).read_all()
            first = order[repeats[0]]
            shutil.rmtree(folder, ignore_errors=True)
            raise EmbedtuneError(f"{', '.join(str(s) for s in sources)}: id '{table.column(id_column)[int(first)]}' "
                                 f"({id_column}) is not unique (or two ids share a 64-bit hash)")
        save_npy(sorted_ids, folder / "ids.npy")
        save_npy(order.astype(np.int64), folder / "order.npy")
        for name, parts in extra_parts.items():
            save_npy(np.concatenate(parts) if parts else np.empty(0, np.uint64), folder / f"{name}.npy")
        write_json({"id_column": id_column, "rows": int(len(ids)), "signature": signature}, folder / cls.DONE)

    def __len__(self) -> int:
        return self.table.num_rows

    def hashes(self, name: str) -> np.ndarray:
        """An extra hash column (one uint64 per row, memory-mapped)."""
        return np.load(self.folder / f"{name}.npy", mmap_mode="r")

    def rows_of(self, ids: Sequence[str], missing_ok: bool = False) -> np.ndarray:
        """Row of each id: -1 for an id not in the table with missing_ok, else an error naming it."""
        ids = list(ids)
        rows = np.full(len(ids), -1, dtype=np.int64)
        if ids and len(self.sorted_hashes):
            keys = hash64(ids)
            pos = np.searchsorted(self.sorted_hashes, keys)
            inside = np.flatnonzero(pos < len(self.sorted_hashes))
            hit = inside[np.asarray(self.sorted_hashes[pos[inside]]) == keys[inside]]
            rows[hit] = self.order[pos[hit]]
            stored = self.take(rows[hit], [self.id_column]).column(0).to_pylist()
            for i, s in zip(hit, stored):  # an 8-byte hash match is checked against the id itself
                if s != ids[i]:
                    rows[i] = -1
        if not missing_ok and (rows < 0).any():
            missing = [ids[i] for i in np.flatnonzero(rows < 0)[:3]]
            raise EmbedtuneError(f"{int((rows < 0).sum())} id(s) not in {self.folder.name} "
                                 f"(e.g. {', '.join(missing)}): rerun the stages after the one that wrote them")
        return rows

    def take(self, rows: Sequence[int] | np.ndarray, columns: Optional[list[str]] = None) -> pa.Table:
        """The given rows (in the given order) of some columns, copied out of the map: only those rows."""
        rows = np.asarray(rows, dtype=np.int64)
        columns = columns or self.table.column_names
        if not len(rows):
            return self.table.select(columns).slice(0, 0)
        batch_of = np.searchsorted(self._starts, rows, side="right") - 1
        order = np.argsort(batch_of, kind="stable")
        pieces, sorted_batches = [], batch_of[order]
        for b in np.unique(sorted_batches):
            at = order[sorted_batches == b]
            pieces.append(self._batches[b].select(columns).take(pa.array(rows[at] - self._starts[b])))
        grouped = pa.Table.from_batches(pieces)
        return grouped.take(pa.array(np.argsort(order, kind="stable")))  # back to the asked order (small)

    def column_batches(self, column: str, size: int = BATCH_ROWS) -> Iterator[list]:
        """One column, `size` rows at a time, as Python lists (bounded memory)."""
        for start in range(0, len(self), size):
            yield self.table.column(column).slice(start, size).to_pylist()


class TextLookup(Mapping):
    """id -> text over a MappedTable (a Mapping, so code written for a dict of texts takes it unchanged)."""

    def __init__(self, table: MappedTable, render: Callable[[dict], str], columns: list[str]):
        self.table, self.render, self.columns = table, render, columns

    def __getitem__(self, key: str) -> str:
        row = self.table.rows_of([key], missing_ok=True)[0]
        if row < 0:
            raise KeyError(key)
        return self.render(self.table.take([row], self.columns).to_pylist()[0])

    def many(self, keys: Sequence[str]) -> list[str]:
        """Texts of many ids at once (one take: far faster than one lookup per id)."""
        rows = self.table.rows_of(list(keys))
        return [self.render(r) for r in self.table.take(rows, self.columns).to_pylist()]

    def at(self, start: int, stop: int) -> list[str]:
        """Texts of rows start..stop-1, in table order."""
        return [self.render(r) for r in self.table.table.select(self.columns).slice(start, stop - start).to_pylist()]

    def __iter__(self) -> Iterator[str]:
        for ids in self.table.column_batches(self.table.id_column):
            yield from ids

    def values(self) -> Iterator[str]:
        """Every text in table order, a batch of rows at a time."""
        for start in range(0, len(self), BATCH_ROWS):
            yield from self.at(start, min(start + BATCH_ROWS, len(self)))

    def __len__(self) -> int:
        return len(self.table)


def texts_of(mapping: Mapping, keys: Sequence[str]) -> list[str]:
    """mapping[k] for every key: one batched lookup for a TextLookup, else one by one (a dict)."""
    return mapping.many(keys) if isinstance(mapping, TextLookup) else [mapping[k] for k in keys]


def table_folder(cache_root: Path, name: str, manifest: dict) -> Path:
    """cache/tables/<name>-<run id of the stage that wrote it>: a rerun of that stage gets a new folder."""
    return Path(cache_root) / f"{name}-{manifest.get('run_id', manifest['key'])}"


def drop_older(cache_root: Path, name: str, keep: Path) -> None:
    """Remove the tables of earlier runs of a stage (their files no longer exist in the run folder)."""
    for folder in Path(cache_root).glob(f"{name}-*"):
        if folder != keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
