"""Synthetic-query recipes compared on the HPO **dev** queries (never test).

One generation pool (every query type for each sampled passage) feeds every variant: a variant takes a subset of
the pool (passage count, query-type mix, queries per passage, extraction on/off), then runs filter, mine, train
and eval in its own point folder (runs/<run>/points/<variant>/, seeded by hard links), with paired-bootstrap
intervals against the base model. Greedy decoding makes a pool row equal to what `generate` writes for that
passage and type.

  python bench/queries.py pool  --run qpool --passages 2000          # prepare + generate (all types) + filter
  python bench/queries.py grow  --run qpool --passages 8000 --mix keyword=1,question=1
  python bench/queries.py variant --run qpool --name kq --mix keyword=1,question=1 [--passages 2000] [--raw]
  python bench/queries.py table --run qpool [--out bench/results/queries.md]
  python bench/queries.py copy  --run qpool                           # copy filter vs HPO dev human queries
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from embedtune.beir import read_beir
from embedtune.filter import FilterConfig, is_copy, longest_shared_run
from embedtune.generate.extract import extract_query, looks_like_chatter
from embedtune.generate.prompts import passage_for_prompt
from embedtune.generate.runner import GeneratorConfig, generate_shard, query_types, read_queries, select_passages
from embedtune.io import read_json, read_rows, read_stage_table, write_json, write_parquet
from embedtune.manifest import Stage
from embedtune.sweep import seed_point

ALL_TYPES = "keyword=1,question=1,claim=1,plain=1"
DEV = ["eval.builtin_split=dev", "eval.synthetic=false", "eval.bm25=false", "logger=none"]


def parse_mix(text: str) -> dict[str, float]:
    return {k: float(v) for k, v in (part.split("=") for part in text.split(","))}


def embedtune(*args: str) -> None:
    env = {**os.environ, "WANDB_MODE": "offline"}
    subprocess.run([sys.executable, "-m", "embedtune.cli", *args], check=True, env=env)


def pool(args) -> None:
    """The pool: every type for each of `--passages` passages, filtered once so that the base model's
    embeddings of the corpus and of every pool query sit in the run's cache for the variants to share."""
    mix = [f"generator.prompt.mix.{k}={v}" for k, v in parse_mix(args.mix).items()]
    common = [f"run_name={args.run}", f"generator.max_passages={args.passages}", *DEV]
    embedtune("prepare", *common)
    embedtune("generate", *common, f"generator.queries_per_passage={len(parse_mix(args.mix))}", *mix)
    embedtune("filter", *common)


def grow(args) -> None:
    """Add the passages ranked `have..--passages` in the sample order, `--per-passage` queries each drawn from
    `--mix`, to the pool (as an extra file in queries/)."""
    root = Path("runs") / args.run
    have = {q["passage_id"] for q in read_queries(root / "queries")}
    table = read_stage_table(root / "passages", ["id", "title", "text"])
    cfg = GeneratorConfig(max_passages=args.passages, queries_per_passage=args.per_passage)
    cfg.prompt.mix = parse_mix(args.mix)
    cfg.prompt.domain = args.domain
    chosen = select_passages(table.column("id").to_pylist(), cfg)
    extra = [p for p in table.to_pylist() if p["id"] in chosen and p["id"] not in have]
    started = time.time()
    rows, _ = generate_shard(extra, cfg, 0, 1)
    write_parquet(rows, root / "queries" / f"grow-{args.passages}.parquet")
    print(f"grow: {len(rows)} queries for {len(extra)} passages in {time.time() - started:.0f}s")


def pool_rows(root: Path) -> list[dict]:
    rows = read_queries(root / "queries")
    for extra in sorted((root / "queries").glob("grow-*.parquet")):
        rows += read_rows(extra)
    return rows


def reextract(row: dict, texts: dict[str, str], cfg: GeneratorConfig) -> dict:
    examples = [ex.query for ex in cfg.prompt.resolved_types()[row["prompt"]].examples]
    found = extract_query(row["raw"], row["prompt"], texts[row["passage_id"]], examples, row["finished"])
    return {"text": found.query, "reason": found.reason, "chatter": found.chatter}


def variant(args) -> None:
    root = Path("runs") / args.run
    point = root / "points" / args.name
    rows = pool_rows(root)
    cfg = GeneratorConfig(max_passages=args.passages, queries_per_passage=args.per_passage)
    cfg.prompt.mix = parse_mix(args.mix)
    ids = sorted({r["passage_id"] for r in rows})
    texts = {p["id"]: passage_for_prompt(p["title"], p["text"], cfg.prompt.passage_max_chars)
             for p in read_stage_table(root / "passages", ["id", "title", "text"]).to_pylist()}
    chosen = select_passages(ids, cfg)
    wanted = {(p, k) for p in chosen for k in query_types(p, cfg)}
    subset = [r for r in rows if (r["passage_id"], r["prompt"]) in wanted]
    if args.raw:  # no extraction: the answer's first line as the query, as before extraction existed
        subset = [{**r, "text": r["raw"].strip(), "reason": "" if r["raw"].strip() else "empty", "chatter": False}
                  for r in subset]
    else:  # the extractor as it is now (the pool may predate a change to it)
        subset = [{**r, **reextract(r, texts, cfg)} for r in subset]
    missing = len(wanted) - len(subset)
    if missing:
        raise SystemExit(f"the pool lacks {missing} of the {len(wanted)} (passage, type) pairs: grow it first")
    queries = point / "queries"
    queries.mkdir(parents=True, exist_ok=True)
    write_parquet(subset, queries / "shard-0-of-1.parquet")
    (queries / "shard-0-of-1.done").write_text(json.dumps({"key": args.name, "rows": len(subset), "seconds": 0}))
    Stage("generate", queries, {"variant": vars(args)}, {}).finish({"queries": len(subset)},
                                                                    files=["shard-0-of-1.parquet"])
    seed_point(root, point)
    common = [f"run_name={args.run}", f"point={args.name}", *DEV, *args.overrides]
    started = time.time()
    for stage in ("filter", "mine", "train", "eval"):
        embedtune(stage, *common)
    write_json({"args": vars(args), "seconds": time.time() - started}, point / "variant.json")


def table(args) -> None:
    from embedtune.evaluate import paired_bootstrap

    root = Path("runs") / args.run
    lines = ["| variant | passages | outputs | kept train | chatter in kept | copies in kept | dev nDCG@10 "
             "(base -> tuned) | tuned - base [95% CI] | R@100 base -> tuned | train s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for point in sorted((root / "points").glob("*/variant.json"), key=lambda p: p.stat().st_mtime):
        folder = point.parent
        spec = read_json(point)["args"]
        pairs = read_json(folder / "pairs" / "manifest.json")
        report = read_json(folder / "eval" / "report.json")
        name = next(k for k in report if k != "comparisons")
        base, tuned = report[name]["base"], report[name]["tuned"]
        ci = paired_bootstrap(base["per_query"], tuned["per_query"])
        train_s = read_json(folder / "checkpoints" / "manifest.json")["wall_time_s"]
        r = pairs.get("rates", {})
        lines.append(f"| {spec['name']} | {spec['passages']:,} | {pairs['counts']['generated']:,} | "
                     f"{pairs['counts']['train']:,} | {r.get('chatter_in_kept', 0):.1%} | {r.get('copies_in_kept', 0):.1%} | "
                     f"{base['nDCG@10']:.3f} -> {tuned['nDCG@10']:.3f} | {ci['diff']:+.3f} [{ci['low']:+.3f}, "
                     f"{ci['high']:+.3f}] | {base['R@100']:.3f} -> {tuned['R@100']:.3f} | {train_s:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def copy_calibration(args) -> None:
    """How many human dev queries (real queries for their passages) each copy-filter setting would drop."""
    bench = read_beir(Path("runs") / args.run / "benchmarks" / "hpo", "dev", "hpo dev")
    pairs = [(bench.queries[q], bench.corpus[d]) for q, docs in bench.qrels.items() for d in docs]
    print(f"HPO dev human queries: {len(pairs):,}")
    print("| copy_min_words | copy_max_share | human queries dropped |\n| ---: | ---: | ---: |")
    for min_words in (4, 5, 6, 8):
        for share in (0.8, 0.9, 1.0):
            cfg = FilterConfig(copy_min_words=min_words, copy_max_share=share)
            n = sum(1 for q, p in pairs if is_copy(q, p, cfg))
            print(f"| {min_words} | {share} | {n:,} ({n / len(pairs):.2%}) |")
    chatter = sum(1 for q, _ in pairs if looks_like_chatter(q))
    longest = sum(1 for q, p in pairs if longest_shared_run(q, p) >= 6)
    print(f"\nhuman queries the chatter detector flags: {chatter:,}; sharing a 6+ word run: {longest:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("pool", "grow", "variant", "table", "copy"):
        p = sub.add_parser(name)
        p.add_argument("--run", default="qpool")
        p.add_argument("--passages", type=int, default=2000)
        p.add_argument("--mix", default=ALL_TYPES)
        p.add_argument("--domain", default="human phenotypes (clinical signs, symptoms and abnormalities)")
        p.add_argument("--name", default="")
        p.add_argument("--per-passage", type=int, default=1)
        p.add_argument("--raw", action="store_true")
        p.add_argument("--out", default="")
        p.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    {"pool": pool, "grow": grow, "variant": variant, "table": table, "copy": copy_calibration}[args.command](args)


if __name__ == "__main__":
    main()
