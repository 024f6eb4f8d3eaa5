"""generate: synthetic queries for a deterministic sample of passages, one Parquet file per shard, then merge.

Passage p belongs to shard int(sha1(p.id)) % count; a shard is written atomically with a `.done` marker
holding the stage key, so a rerun skips finished shards and a changed config regenerates them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from embedtune.distributed import ShardConfig, shard_of_worker
from embedtune.errors import EmbedtuneError
from embedtune.generate.backends import BackendConfig, make_backend
from embedtune.generate.prompts import TEMPLATES, FewShot, PromptConfig, clean_query, render
from embedtune.io import atomic_path, read_parquet, read_stage_table, write_parquet
from embedtune.manifest import Stage

QUERY_COLUMNS = ["query_id", "passage_id", "text", "generator", "prompt"]


@dataclass
class GeneratorConfig(BackendConfig):
    prompt: PromptConfig = field(default_factory=PromptConfig)
    queries_per_template: int = 1        # completions per passage and template (sampled when > 1)
    max_passages: Optional[int] = 2000   # deterministic sample of the corpus to write queries for (null: all)
    seed: int = 0                        # sample choice and sampling seed
    shard: ShardConfig = field(default_factory=ShardConfig)


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def select_passages(ids: list[str], cfg: GeneratorConfig) -> set[str]:
    """The sample: the `max_passages` ids of smallest seeded hash (stable whatever the corpus order)."""
    if cfg.max_passages is None or cfg.max_passages >= len(ids):
        return set(ids)
    return set(sorted(ids, key=lambda i: _h(f"{cfg.seed}\x00{i}"))[:cfg.max_passages])


def shard_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def bootstrap_examples(passages: list[dict], cfg: GeneratorConfig, backend) -> list[FewShot]:
    """Few-shot examples from the corpus itself: zero-shot queries for a fixed, seeded sample of passages
    (every shard picks the same sample from the full passage list, so all shards share the examples)."""
    sample = sorted(passages, key=lambda p: _h(f"example\x00{cfg.seed}\x00{p['id']}"))[:cfg.prompt.sample_examples]
    template = cfg.prompt.templates[0]
    zero_shot = dataclasses.replace(cfg.prompt, examples=[])
    prompts = [backend.format(render(template, p["title"], p["text"], zero_shot)) for p in sample]
    examples = []
    for p, raw in zip(sample, backend.generate(prompts, seed=cfg.seed)):
        query = clean_query(raw)
        if query:
            text = f"{p['title']}. {p['text']}" if p["title"] else p["text"]
            examples.append(FewShot(passage=text[:cfg.prompt.passage_max_chars], query=query))
    return examples


def generate_shard(passages: list[dict], cfg: GeneratorConfig, index: int, count: int) -> list[dict]:
    mine = [p for p in passages if _h(p["id"]) % count == index]
    if cfg.queries_per_template > 1 and cfg.temperature <= 0:
        raise EmbedtuneError("generator.queries_per_template > 1 needs generator.temperature > 0 "
                             "(greedy decoding repeats the same query)")
    for template in cfg.prompt.templates:
        if template not in TEMPLATES:
            raise EmbedtuneError(f"generator.prompt.templates: unknown template '{template}' "
                                 f"(known: {', '.join(TEMPLATES)})")
    backend = make_backend(cfg)
    prompt_cfg = cfg.prompt
    if prompt_cfg.sample_examples and not prompt_cfg.examples:
        prompt_cfg = dataclasses.replace(prompt_cfg, examples=bootstrap_examples(passages, cfg, backend))
    jobs = [(p, t, k) for p in mine for t in cfg.prompt.templates for k in range(cfg.queries_per_template)]
    prompts = [backend.format(render(t, p["title"], p["text"], prompt_cfg)) for p, t, _ in jobs]
    try:
        outputs = backend.generate(prompts, seed=cfg.seed + index)
    except EmbedtuneError as e:
        raise EmbedtuneError(f"generate: shard {shard_name(index, count)} failed, finished shards are kept: {e}") from e
    rows = []
    for (p, t, k), raw in zip(jobs, outputs):
        qid = hashlib.sha1(f"{p['id']}\x00{t}\x00{k}".encode()).hexdigest()[:16]
        rows.append({"query_id": qid, "passage_id": p["id"], "text": clean_query(raw),
                     "generator": backend.name, "prompt": t})
    return rows


def run_generate(cfg: GeneratorConfig, passages_dir: Path, out_dir: Path, passages_manifest: dict,
                 force: bool = False) -> Optional[dict]:
    """Write this worker's shard (unless done), then merge if every shard is there; returns the manifest."""
    operational = ("shard", "batch_size", "device", "concurrency", "max_retries", "timeout_s", "backoff_s",
                   "backoff_max_s", "api_key_env")
    config = {k: v for k, v in cfg.__dict__.items() if k not in operational}
    stage = Stage("generate", out_dir, config, {"passages": passages_manifest})
    index, count = shard_of_worker(cfg.shard)
    if stage.is_done() and not force:
        return json.loads((out_dir / "manifest.json").read_text())
    name = shard_name(index, count)
    done = out_dir / f"{name}.done"
    if force or not done.exists() or json.loads(done.read_text()).get("key") != stage.key:
        table = read_stage_table(passages_dir, ["id", "title", "text"])
        chosen = select_passages(table.column("id").to_pylist(), cfg)
        passages = [p for p in table.to_pylist() if p["id"] in chosen]
        started = time.time()
        rows = generate_shard(passages, cfg, index, count)
        write_parquet(rows, out_dir / f"{name}.parquet")
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps({"key": stage.key, "rows": len(rows), "seconds": time.time() - started}))
        print(f"generate: {name}: {len(rows)} queries in {time.time() - started:.0f}s")
    return merge(stage, out_dir, count)


def merge(stage: Stage, out_dir: Path, count: int) -> Optional[dict]:
    """Write the manifest once every shard of this key is done; otherwise name the missing ones."""
    missing, rows, seconds = [], 0, 0.0
    for i in range(count):
        done = out_dir / f"{shard_name(i, count)}.done"
        info = json.loads(done.read_text()) if done.exists() else {}
        if info.get("key") != stage.key:
            missing.append(shard_name(i, count))
        else:
            rows += info["rows"]
            seconds += info["seconds"]
    if missing:
        print(f"generate: waiting for {len(missing)} of {count} shards: {', '.join(missing[:10])}")
        return None
    files = [f"{shard_name(i, count)}.parquet" for i in range(count)]
    empty = sum(1 for f in files for t in read_parquet(out_dir / f, ["text"])["text"].to_pylist() if not t)
    return stage.finish({"queries": rows, "empty": empty}, files=files, generation_seconds=round(seconds, 1))


def read_queries(folder: Path) -> list[dict]:
    if not (Path(folder) / "manifest.json").exists():
        raise EmbedtuneError(f"{folder}: generation is not complete (no manifest.json); "
                             "run `embedtune generate` until every shard is done")
    return read_stage_table(folder, QUERY_COLUMNS).to_pylist()
