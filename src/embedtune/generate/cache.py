"""Generations kept by content: a backend's answer to a prompt is found again by the prompt's digest, under
the fingerprint of everything else that makes the answer (backend, model, dtype, decoding settings, seed).

The prompt holds the passage's text (title included), its query type and the template, so a passage that did
not change gets its earlier answer back and only new and changed passages cost generation; a removed passage's
answers are never asked for again. The sample size, the types' mix and the shard layout are not part of the
fingerprint: they decide which prompts are asked, not what a prompt is answered.

`runs/<name>/cache/generations/<fingerprint>/part-<time>-<digest>.parquet`: key, text, finished, generator.
Parts are written whole (temporary name, then rename) every generator.save_every prompts of a shard, so a
killed shard keeps the answers of its finished windows; where parts answer the same prompt (force=true asked
again), the newest wins.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

import pyarrow as pa

from embedtune.content_cache import ContentCache
from embedtune.generate.answer import Answer
from embedtune.generate.prompts import Prompt
from embedtune.manifest import fingerprint, key_fields

SCHEMA = pa.schema([("key", pa.string()), ("text", pa.string()), ("finished", pa.bool_()), ("generator", pa.string())])
# which prompts are asked, not their answers; where the server runs, not which model answers
NOT_IN_FINGERPRINT = ("max_passages", "queries_per_passage", "prompt", "api_base")
GREEDY_ONLY = ("seed", "top_p")  # decoding settings that change nothing at temperature 0
VERSION = 1  # raise when the backends' decoding changes what a prompt is answered


def prompt_key(prompt: Prompt) -> str:
    """The digest of everything a backend is given for one prompt."""
    blob = json.dumps([prompt.messages, prompt.completion, prompt.max_new_tokens, prompt.prefill], sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


class GenerationCache:
    """Earlier answers of one generator setting (`generator`, the GeneratorConfig; `dtype` as resolved here)."""

    def __init__(self, root: Path, generator, dtype: str, read: bool = True):
        fields = {k: v for k, v in key_fields(generator).items() if k not in NOT_IN_FINGERPRINT}
        if not fields.get("temperature"):
            fields = {k: v for k, v in fields.items() if k not in GREEDY_ONLY}
        self.folder = Path(root) / fingerprint("generations", VERSION, fields, dtype)
        self.parts = ContentCache(self.folder, SCHEMA, read)

    def lookup(self, keys: list[str]) -> dict[str, tuple[Answer, str]]:
        """The answers (and the generator that wrote them) of those of `keys` answered before."""
        return {k: (Answer(r["text"], r["finished"]), r["generator"]) for k, r in self.parts.lookup(keys).items()}

    def add(self, keys: list[str], answers: list[Answer], generator: str) -> Optional[Path]:
        """Keep new answers: one part, named by its keys (writing the same answers twice writes one file)."""
        return self.parts.add([{"key": k, "text": a.text, "finished": a.finished, "generator": generator}
                               for k, a in zip(keys, answers)])
