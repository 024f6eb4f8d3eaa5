"""Teacher scores kept by content: a teacher's score of a (query, passage) pair is found again by the digest of
the two texts, under the fingerprint of the teacher (kind, model, lengths, prefixes, the judge's prompt and
decoding, the precision as resolved here; not where its server runs nor how pairs are batched or sharded). A
refresh scores only pairs with a new or changed text; the rest come back from
`runs/<name>/cache/scores/<fingerprint>/` (content_cache.py).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa

from embedtune.content_cache import ContentCache
from embedtune.manifest import fingerprint, key_fields
from embedtune.precision import encoding_arithmetic

SCHEMA = pa.schema([("key", pa.string()), ("score", pa.float64())])
VERSION = 1  # raise when a teacher's scoring changes what a pair is scored


def pair_key(query: str, passage: str) -> str:
    return hashlib.sha256(json.dumps([query, passage]).encode("utf-8")).hexdigest()[:32]


class ScoreCache:
    def __init__(self, root: Path, teacher, read: bool = True):
        fields = {k: v for k, v in key_fields(teacher).items() if k not in ("clean_negatives", "precision")}
        if isinstance(fields.get("llm"), dict):
            fields["llm"] = {k: v for k, v in fields["llm"].items() if k != "api_base"}
        self.parts = ContentCache(Path(root) / fingerprint("scores", VERSION, fields,
                                                           encoding_arithmetic(teacher.precision)), SCHEMA, read)

    def lookup(self, keys: list[str]) -> dict[str, float]:
        return {k: r["score"] for k, r in self.parts.lookup(keys).items()}

    def add(self, keys: list[str], scores: list[float]) -> None:
        self.parts.add([{"key": k, "score": float(s)} for k, s in zip(keys, scores)])
