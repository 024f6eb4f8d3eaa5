"""generate: synthetic queries for a deterministic sample of passages, one Parquet file per shard, then merge.

Passage p belongs to shard int(sha1(p.id)) % count; a shard is written atomically with a `.done` marker
holding the stage key, so a rerun skips finished shards and a changed config regenerates them. A changed corpus
changes the key too, but answers are kept by content (generate/cache.py): only new and changed passages are
generated again, and the passages sampled before stay in the sample (beside this corpus's own sample).
"""

from __future__ import annotations

import hashlib
import heapq
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pyarrow.parquet as pq

from embedtune.distributed import ShardConfig, shard_of_worker
from embedtune.errors import EmbedtuneError, raise_if_invalid
from embedtune.generate.backends import BACKENDS, BackendConfig, make_backend
from embedtune.generate.onnx_backend import PRECISIONS as ONNX_PRECISIONS
from embedtune.generate.cache import GenerationCache, prompt_key
from embedtune.generate.extract import extract_query
from embedtune.generate.languages import LANGUAGES
from embedtune.generate.prompts import PromptConfig, passage_for_prompt, render
from embedtune.io import atomic_path, read_json, read_parquet, read_stage_table, write_parquet
from embedtune.manifest import Stage, not_in_key
from embedtune.precision import generator_dtype

QUERY_COLUMNS = ["query_id", "passage_id", "text", "raw", "finished", "reason", "chatter", "generator", "prompt"]


@dataclass
class GeneratorConfig(BackendConfig):
    prompt: PromptConfig = field(default_factory=PromptConfig)  # query types, their mix and few-shot examples
    queries_per_passage: int = 1         # queries per passage, each of another type drawn from prompt.mix
    max_passages: Optional[int] = 2000   # deterministic sample of the corpus to write queries for (null: all); after a
                                         # corpus change, passages sampled before stay in the sample beside it
    seed: int = 0                        # sample choice, type draw and sampling seed
    save_every: int = not_in_key(256)    # answers are kept (generate/cache.py) every this many prompts: a killed
                                         # shard loses at most these, and its rerun asks only for the rest
    shard: ShardConfig = not_in_key(ShardConfig)  # this worker's shard (default: from rank or SLURM array)


def generator_problems(gen: GeneratorConfig) -> list[str]:
    """The query-type mix and per-passage count (also checked by `generate` when called as a library)."""
    found = []
    if gen.prompt.language not in LANGUAGES:
        found.append(f"generator.prompt.language (corpus.language)={gen.prompt.language} has no built-in prompts; one of "
                     f"{', '.join(LANGUAGES)} (or write the types yourself under generator.prompt.types)")
    unknown = sorted(set(gen.prompt.mix) - set(gen.prompt.types))
    if unknown:
        found.append(f"generator.prompt.mix names unknown query types {unknown} (known: {', '.join(gen.prompt.types)}; "
                     "add one under generator.prompt.types)")
    if any(w < 0 for w in gen.prompt.mix.values()) or not any(w > 0 for w in gen.prompt.mix.values()):
        found.append(f"generator.prompt.mix={dict(gen.prompt.mix)} needs weights >= 0, at least one > 0")
    active = sum(1 for w in gen.prompt.mix.values() if w > 0)
    if not 1 <= gen.queries_per_passage <= max(active, 1):
        found.append(f"generator.queries_per_passage={gen.queries_per_passage} must be in [1, {active}]: each query "
                     f"of a passage has its own type, and the mix has {active}")
    for name, qtype in gen.prompt.types.items():
        if not qtype.instruction.strip():
            found.append(f"generator.prompt.types.{name}.instruction is empty")
        if qtype.max_new_tokens < 1:
            found.append(f"generator.prompt.types.{name}.max_new_tokens={qtype.max_new_tokens} must be >= 1")
    if gen.max_new_tokens < 1:
        found.append(f"generator.max_new_tokens={gen.max_new_tokens} must be >= 1")
    if gen.backend not in BACKENDS:
        found.append(f"generator.backend={gen.backend} is not one of {', '.join(BACKENDS)}")
    if gen.backend == "onnx" and gen.onnx_precision not in ONNX_PRECISIONS:
        found.append(f"generator.onnx_precision={gen.onnx_precision} is not one of {', '.join(ONNX_PRECISIONS)}")
    return found


def check_generator(gen: GeneratorConfig) -> None:
    raise_if_invalid(generator_problems(gen))


def _h(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16)


def _sample_key(passage_id: str, cfg: GeneratorConfig) -> int:
    return _h(f"{cfg.seed}\x00{passage_id}")


def sample_threshold(ids: Iterable[str], cfg: GeneratorConfig) -> Optional[int]:
    """The largest sample key among the `max_passages` smallest (None: every passage is in the sample).
    A bounded heap: memory follows max_passages, not the corpus."""
    if cfg.max_passages is None:
        return None
    keys = heapq.nsmallest(cfg.max_passages, (_sample_key(i, cfg) for i in ids))
    return keys[-1] if len(keys) == cfg.max_passages else None


def select_passages(ids: Iterable[str], cfg: GeneratorConfig) -> set[str]:
    """The sample: the `max_passages` ids of smallest seeded hash (stable whatever the corpus order)."""
    ids = list(ids)
    threshold = sample_threshold(ids, cfg)
    return {i for i in ids if threshold is None or _sample_key(i, cfg) <= threshold}


def earlier_sample(out_dir: Path, cfg: GeneratorConfig) -> set[str]:
    """The passages the last finished generation in `out_dir` wrote queries for, where it drew its sample with
    this seed and size: they stay in the sample after a corpus change (those still there), so their queries are
    reused, not replaced by others'. Shard files are rewritten only by their own shard, and a shard only asks
    about its own passages, so reading while other shards write is safe."""
    try:
        manifest = json.loads((out_dir / "manifest.json").read_text())
    except FileNotFoundError:
        return set()
    if manifest.get("sample") != {"seed": cfg.seed, "max_passages": cfg.max_passages} or cfg.max_passages is None:
        return set()
    return {i for f in manifest["files"] if (out_dir / f).exists()
            for i in read_parquet(out_dir / f, ["passage_id"])["passage_id"].to_pylist()}


def shard_passages(folder: Path, cfg: GeneratorConfig, index: int, count: int,
                   keep: frozenset[str] = frozenset()) -> list[dict]:
    """This shard's passages of the sample (and those of `keep` still in the corpus): the ids are read a batch
    at a time (twice: the sample's threshold, then the rows), and only this shard's rows are kept."""
    files = [Path(folder) / f for f in read_json(Path(folder) / "manifest.json")["files"]]

    def batches(columns: list[str]):
        for path in files:
            yield from pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=columns)

    threshold = sample_threshold((i for b in batches(["id"]) for i in b.column("id").to_pylist()), cfg)
    own = []
    for batch in batches(["id", "title", "text"]):
        for p in batch.to_pylist():
            if _h(p["id"]) % count == index and (threshold is None or _sample_key(p["id"], cfg) <= threshold
                                                 or p["id"] in keep):
                own.append(p)
    return own


def query_types(passage_id: str, cfg: GeneratorConfig) -> list[str]:
    """The `queries_per_passage` distinct types of one passage: a weighted draw without replacement from
    prompt.mix (key u^(1/w) per type, largest first), seeded by the passage id, so shards agree."""
    def key(kind: str, weight: float) -> float:
        u = (_h(f"type\x00{cfg.seed}\x00{passage_id}\x00{kind}") % 2**52 + 0.5) / 2**52
        return u ** (1.0 / weight)
    ranked = sorted(((key(k, w), k) for k, w in cfg.prompt.mix.items() if w > 0), reverse=True)
    return [kind for _, kind in ranked[:cfg.queries_per_passage]]


def shard_name(index: int, count: int) -> str:
    return f"shard-{index}-of-{count}"


def generate_shard(passages: list[dict], cfg: GeneratorConfig, index: int, count: int,
                   cache: Optional[GenerationCache] = None, plan: Optional[Plan] = None) -> tuple[list[dict], int]:
    """The shard's query rows, and how many of them reused an earlier answer: prompts answered before under
    this generator setting (`cache`) are not sent to the backend again, and new answers join the cache every
    cfg.save_every prompts. `plan` keeps the order the prompts are asked in across a kill, so a rerun asks the
    backend in the same windows (the same batches, the same seeds) as an uninterrupted run would have."""
    check_generator(cfg)
    own = [p for p in passages if _h(p["id"]) % count == index]
    jobs = [(p, kind, passage_for_prompt(p["title"], p["text"], cfg.prompt.passage_max_chars))
            for p in own for kind in query_types(p["id"], cfg)]
    prompts = [render(kind, text, cfg.prompt, cfg.max_new_tokens) for _, kind, text in jobs]
    keys = [prompt_key(p) for p in prompts]
    known = cache.lookup(keys) if cache is not None else {}
    asked = list(dict.fromkeys(k for k in keys if k not in known))  # in order, each prompt once
    asked = plan.keys(asked) if plan is not None else asked
    prompt_of = dict(zip(keys, prompts))
    windows = [w for w in range(0, len(asked), max(1, cfg.save_every))
               if any(k not in known for k in asked[w:w + cfg.save_every])]
    written = 0
    if windows:
        backend = make_backend(cfg)
        for w in windows:
            window = asked[w:w + cfg.save_every]
            try:
                fresh = backend.generate([prompt_of[k] for k in window], seed=cfg.seed + index + w)
            except EmbedtuneError as e:
                raise EmbedtuneError(f"generate: shard {shard_name(index, count)} failed, finished shards are kept "
                                     f"(and the answers of earlier runs and of this one so far): {e}") from e
            if cache is not None:
                cache.add(window, fresh, backend.name)
            known.update({k: (answer, backend.name) for k, answer in zip(window, fresh)})
            written += len(window)
    rows = []
    for (p, kind, text), prompt, key in zip(jobs, prompts, keys):
        answer, generator = known[key]
        raw = prompt.prefill + answer.text
        examples = [ex.query for ex in cfg.prompt.resolved_types()[kind].examples]
        found = extract_query(raw, kind, text, examples, answer.finished)
        qid = hashlib.sha1(f"{p['id']}\x00{kind}\x000".encode()).hexdigest()[:16]
        rows.append({"query_id": qid, "passage_id": p["id"], "text": found.query, "raw": raw,
                     "finished": answer.finished, "reason": found.reason, "chatter": found.chatter,
                     "generator": generator, "prompt": kind})
    return rows, len(keys) - min(written, len(keys))


class Plan:
    """The prompts a shard asks the backend, in order, kept in `<shard>.plan` under the stage key until the shard
    is done: a rerun after a kill asks the rest in the same windows, so its answers equal an uninterrupted run's
    (batch composition and seeds are the same)."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key

    def keys(self, asked: list[str]) -> list[str]:
        """The kept order where there is one for this key (`asked` then only says what is still unanswered),
        else `asked`, kept."""
        try:
            kept = json.loads(self.path.read_text())
            if kept.get("key") == self.key:
                return kept["keys"]
        except (OSError, ValueError):
            pass
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps({"key": self.key, "keys": asked}))
        return asked

    def done(self) -> None:
        self.path.unlink(missing_ok=True)


def resolved_dtype(cfg: GeneratorConfig) -> str:
    """dtype auto, as resolved on this machine: bf16 and fp32 greedy decoding write different queries."""
    return generator_dtype(cfg.dtype) if cfg.backend == "transformers" else cfg.dtype


def generate_stage(cfg: GeneratorConfig, out_dir: Path, passages_manifest: dict) -> Stage:
    return Stage("generate", out_dir, [cfg, resolved_dtype(cfg)], {"passages": passages_manifest})


def run_generate(cfg: GeneratorConfig, passages_dir: Path, out_dir: Path, passages_manifest: dict,
                 force: bool = False, cache_root: Optional[Path] = None) -> Optional[dict]:
    """One worker's whole generate stage as a library call: its shard, then the merge; the manifest."""
    stage = generate_stage(cfg, out_dir, passages_manifest)
    if stage.is_done() and not force:
        return json.loads((out_dir / "manifest.json").read_text())
    return write_shard_and_merge(cfg, stage, passages_dir, force, cache_root)


def write_shard_and_merge(cfg: GeneratorConfig, stage: Stage, passages_dir: Path, force: bool = False,
                          cache_root: Optional[Path] = None) -> Optional[dict]:
    """Write this worker's shard (unless it is done under this key), then merge if every shard is there;
    the manifest once merged, else None. With `cache_root`, answers are kept and found by content there
    (force=true asks the backend again for every prompt)."""
    out_dir = stage.folder
    index, count = shard_of_worker(cfg.shard)
    name = shard_name(index, count)
    done = out_dir / f"{name}.done"
    if force or not done.exists() or json.loads(done.read_text()).get("key") != stage.key:
        keep = frozenset() if force else frozenset(earlier_sample(out_dir, cfg))
        passages = shard_passages(passages_dir, cfg, index, count, keep)
        started = time.time()
        cache = None if cache_root is None else GenerationCache(cache_root, cfg, resolved_dtype(cfg), read=not force)
        plan = Plan(out_dir / f"{name}.plan", stage.key)
        if force:
            plan.done()  # asked anew: a new order
        rows, reused = generate_shard(passages, cfg, index, count, cache, plan if cache is not None else None)
        write_parquet(rows, out_dir / f"{name}.parquet")
        with atomic_path(done) as tmp:
            tmp.write_text(json.dumps({"key": stage.key, "rows": len(rows), "reused": reused,
                                       "seconds": time.time() - started}))
        plan.done()
        print(f"generate: {name}: {len(rows) - reused} queries written, {reused} reused, in "
              f"{time.time() - started:.0f}s")
    return merge(stage, out_dir, count, {"seed": cfg.seed, "max_passages": cfg.max_passages})


def merge(stage: Stage, out_dir: Path, count: int, sample: dict) -> Optional[dict]:
    """Write the manifest once every shard of this key is done; otherwise name the missing ones. `sample`:
    how the sample was drawn (a later generation keeps its passages where it draws the same way)."""
    missing, rows, reused, seconds = [], 0, 0, 0.0
    for i in range(count):
        done = out_dir / f"{shard_name(i, count)}.done"
        info = json.loads(done.read_text()) if done.exists() else {}
        if info.get("key") != stage.key:
            missing.append(shard_name(i, count))
        else:
            rows += info["rows"]
            reused += info.get("reused", 0)  # a shard written before answers were kept reused none
            seconds += info["seconds"]
    if missing:
        print(f"generate: waiting for {len(missing)} of {count} shards: {', '.join(missing[:10])}")
        return None
    files = [f"{shard_name(i, count)}.parquet" for i in range(count)]
    reasons = Counter(r for f in files for r in read_parquet(out_dir / f, ["reason"])["reason"].to_pylist())
    dropped = {reason: n for reason, n in sorted(reasons.items()) if reason}
    counts = {"queries": rows, "written": rows - reused, "reused": reused, "extracted": reasons[""], "dropped": dropped}
    print(f"generate: {rows - reused:,} queries written, {reused:,} reused")
    return stage.finish(counts, files=files, generation_seconds=round(seconds, 1), sample=sample)


def read_queries(folder: Path) -> list[dict]:
    if not (Path(folder) / "manifest.json").exists():
        raise EmbedtuneError(f"{folder}: generation is not complete (no manifest.json); "
                             "run `embedtune generate` until every shard is done")
    return read_stage_table(folder, QUERY_COLUMNS).to_pylist()
