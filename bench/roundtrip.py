"""What the round-trip filter keeps under other rules, on a finished run (issue: fast on the CPUs people have).

  python bench/roundtrip.py --name hpo --out bench/results -- run_name=demo paths.runs=runs
  python bench/roundtrip.py --name faqdev --out bench/results -- run_name=faq corpus=beir corpus.path=...

Reads the run's generated outputs, applies the filters before the round trip (as `embedtune filter` does),
ranks each query's own passage once per near-duplicate setting (filter.roundtrip_filter, the base model's
cached vectors) and counts,
per rule, the share of all outputs the filter stage would keep: rank in the top k, or a score within a margin of
the best passage, with passages at least `twin` cosine-similar to the own one not counted. Writes
roundtrip_<name>.md and .json. Keep shares only: what a rule does to quality is measured by a full run
(`embedtune run ... point=<name> filter.roundtrip_margin=...`), paired on the dev queries.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from embedtune.config import register
from embedtune.corpus import doc_key
from embedtune.embedding_cache import embedding_cache
from embedtune.filter import FilterConfig, filter_queries, passes_roundtrip, roundtrip_filter, split_of
from embedtune.generate.runner import read_queries
from embedtune.io import write_json
from embedtune.model import base_fingerprint, passage_text
from embedtune.runs import RunFolder

TOP_K = (10, 20, 50)
MARGINS = (None, 0.05, 0.1)
TWINS = (None, 0.9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("overrides", nargs="*", help="the run's overrides, as given to `embedtune run`")
    args = parser.parse_args()
    register()
    with initialize_config_module(config_module="embedtune.conf", version_base=None):
        cfg = OmegaConf.to_object(compose(config_name="config", overrides=args.overrides))
    run = RunFolder(cfg)
    outputs, table = read_queries(run.queries), run.passage_table()
    found = run.passages_named({q["passage_id"] for q in outputs}, table)
    texts = {p["id"]: passage_text(p["title"], p["text"]) for p in found}
    doc_of = {p["id"]: doc_key(p["source"], p["doc_id"]) for p in found}
    before, _ = filter_queries([q for q in outputs if not q["reason"]], cfg.filter, texts)
    held_out = {q["query_id"] for q in before if split_of(doc_of[q["passage_id"]], cfg.filter) == "test"}
    cache = embedding_cache(run.cache, base_fingerprint(cfg.model), cfg.eval.precision)
    rows = []
    for twin in TWINS:
        # every row through, each with its rank and gap: the rules below are applied to them here
        everything = FilterConfig(roundtrip_top_k=len(table), roundtrip_twin_cosine=twin)
        ranked, _ = roundtrip_filter(before, table, run.passage_texts(table), set(), cfg.model, everything, cache,
                                     cfg.eval.precision, cfg.mining.batch_size)
        for top_k in TOP_K:
            for margin in MARGINS:
                rule = FilterConfig(roundtrip_top_k=top_k, roundtrip_margin=margin, roundtrip_twin_cosine=twin)
                kept = sum(passes_roundtrip(q["roundtrip_rank"], q["roundtrip_gap"], rule) or q["query_id"] in held_out
                           for q in ranked)
                rows.append({"top_k": top_k, "margin": margin, "twin_cosine": twin, "kept": kept,
                             "share_of_outputs": kept / len(outputs), "share_of_roundtrip_input": kept / len(before)})
    rows.append({"top_k": None, "margin": None, "twin_cosine": None, "kept": len(before),
                 "share_of_outputs": len(before) / len(outputs), "share_of_roundtrip_input": 1.0})
    out = Path(args.out)
    write_json({"name": args.name, "outputs": len(outputs), "before_roundtrip": len(before), "rules": rows},
               out / f"roundtrip_{args.name}.json")
    lines = [f"{args.name}: {len(outputs):,} generated outputs, {len(before):,} left for the round trip "
             f"(the other filters and extraction dropped {len(outputs) - len(before):,}).", "",
             "| top k | margin | twins (cosine) | kept | of outputs | of round-trip input |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['top_k'] or 'no round trip'} | {r['margin'] if r['margin'] is not None else '-'} | "
                     f"{r['twin_cosine'] if r['twin_cosine'] is not None else '-'} | {r['kept']:,} | "
                     f"{r['share_of_outputs']:.1%} | {r['share_of_roundtrip_input']:.1%} |")
    (out / f"roundtrip_{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"wrote": str(out / f"roundtrip_{args.name}.md")}))


if __name__ == "__main__":
    main()
