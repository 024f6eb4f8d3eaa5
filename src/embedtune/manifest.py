"""Stage manifests: what a stage read, under which config, and what it wrote.

A stage's `key` hashes its config section(s) and the run ids of the manifests it read, so a change (or a
forced rerun) anywhere upstream changes every key downstream. A stage whose manifest holds the same key is
skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Optional

from embedtune import __version__
from embedtune.errors import EmbedtuneError
from embedtune.io import read_json, write_json

MANIFEST = "manifest.json"


def not_in_key(default=dataclasses.MISSING):
    """A config field that does not change a stage's results (encoding batch sizes, logging, concurrency,
    retries, checkpoint cadence): `batch_size: int = not_in_key(32)`. Stage keys leave it out, so changing it
    never reruns a stage. A callable default is a default_factory (e.g. not_in_key(ShardConfig))."""
    if callable(default):
        return dataclasses.field(default_factory=default, metadata={"key": False})
    return dataclasses.field(default=default, metadata={"key": False})


def key_fields(value):
    """`value` as it enters a stage key: dataclasses become dicts of their fields, minus those made with `not_in_key`, at
    every depth (nested sections, lists and dicts of them)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: key_fields(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("key", True)}
    if isinstance(value, dict):
        return {k: key_fields(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [key_fields(v) for v in value]
    return value


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (config sections through `key_fields`)."""
    blob = json.dumps([key_fields(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def load_manifest(folder: Path) -> dict:
    """The manifest of a finished stage; a clear error if that stage has not run."""
    return read_json(Path(folder) / MANIFEST)


def read_manifest(folder: Path) -> Optional[dict]:
    """The folder's manifest, or None where there is none or it cannot be read (a stage that never finished)."""
    try:
        return load_manifest(folder)
    except (EmbedtuneError, OSError, ValueError):
        return None


class Stage:
    """One stage's bookkeeping: is it already done for this key, and writing its manifest when it is."""

    def __init__(self, name: str, folder: Path, config: object, inputs: dict[str, dict]):
        self.name = name
        self.folder = Path(folder)
        # an input's run_id changes whenever that stage really ran (also when forced), so everything
        # downstream of a rerun stage reruns too, even if the rerun's config was the same
        self.inputs = {k: m.get("run_id", m["key"]) for k, m in inputs.items()}
        self.key = fingerprint(name, config, self.inputs)
        self.started = time.time()

    def is_done(self) -> bool:
        path = self.folder / MANIFEST
        if not path.exists():
            return False
        try:
            return read_json(path).get("key") == self.key
        except Exception:  # an unreadable manifest means "not done": the stage reruns and rewrites it
            return False

    def finish(self, counts: dict, **extra) -> dict:
        manifest = {
            "stage": self.name,
            "key": self.key,
            "run_id": fingerprint(self.key, time.time_ns()),
            "inputs": self.inputs,
            "counts": counts,
            "embedtune_version": __version__,
            "wall_time_s": round(time.time() - self.started, 2),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **extra,
        }
        write_json(manifest, self.folder / MANIFEST)
        return manifest
