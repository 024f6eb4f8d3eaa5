"""Results kept by content: rows found again by the digest of what produced them (a prompt; a query and a
passage), in one folder per producing setting (its fingerprint). The generation cache (generate/cache.py) and
the teacher's score cache (score_cache.py) are two of them.

A folder holds `part-<time>-<digest>.parquet` files, each written whole (temporary name, then rename), so a
killed writer leaves a part or nothing; where parts hold the same key (a result asked for again), the newest
wins. Lookups read the key column of each part first and the rest only of parts that hold a wanted key.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from embedtune.io import write_parquet


class ContentCache:
    def __init__(self, folder: Path, schema: pa.Schema, read: bool = True):
        self.folder, self.schema = Path(folder), schema
        self.read = read  # False: nothing is found (everything is produced anew), and new rows are still kept

    def lookup(self, keys: list[str]) -> dict[str, dict]:
        """The kept row of each of `keys` found (newest first)."""
        if not self.read or not keys:
            return {}
        wanted, found = pa.array(sorted(set(keys)), pa.string()), {}
        for part in sorted(self.folder.glob("part-*.parquet")):  # oldest first: a newer row replaces an older
            hits = pc.is_in(pq.read_table(part, columns=["key"])["key"], value_set=wanted)
            if pc.any(hits).as_py():
                for row in pq.read_table(part).filter(hits).to_pylist():
                    found[row["key"]] = row
        return found

    def add(self, rows: list[dict]) -> Optional[Path]:
        """Keep new rows (each with its `key`): one part, named by its keys."""
        if not rows:
            return None
        name = hashlib.sha256("\n".join(r["key"] for r in rows).encode()).hexdigest()[:16]
        path = self.folder / f"part-{time.time_ns():020d}-{name}.parquet"
        self.folder.mkdir(parents=True, exist_ok=True)
        write_parquet(rows, path, self.schema)
        return path
