"""How to refresh a tuned model when the corpus grows, chosen by simulation (issue: living corpora).

Version 1 is trained on the corpus minus a held-back share of its documents; then they come back and version 2
is made four ways from the same refreshed queries (the generation cache reuses every earlier answer):
  (a) full retrain from the base model on every pair          train.init=base
  (b) version 1 + the pairs of new passages only              train.init=previous train.replay=0
  (c) version 1 + new pairs + a replay share of earlier pairs train.init=previous train.replay=<replay>
  (d) (c) merged with the base model (export.merge_alpha=auto, WiSE-FT)
Each is scored on human dev queries (never test), paired against (a), with version 1 and base beside them.

  python bench/refresh_sim.py --corpus hpo --out bench/results                     # built-in HPO: newest terms held back
  python bench/refresh_sim.py --corpus beir:../shared/data/faqdev --out bench/results

The built-in HPO corpus holds back its last terms (the newest ids: what a new release adds); a BEIR corpus holds
back a seeded share of its documents. Writes refresh_sim_<name>.json; `--table` joins every such file into
refresh_sim.md and refresh_sim.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"a": ("full retrain from base", ["train.init=base"]),
            "b": ("previous + new pairs", ["train.init=previous", "train.replay=0"]),
            "c": ("previous + new + replay", ["train.init=previous"]),
            "d": ("(c) merged with base", None)}


def embedtune(args: list[str], log: Path) -> float:
    started = time.time()
    with open(log, "a") as out:
        out.write(f"\n$ embedtune {' '.join(args)}\n")
        out.flush()
        code = subprocess.call([sys.executable, "-m", "embedtune.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               env={**os.environ, "WANDB_MODE": "offline"})
    if code:
        raise SystemExit(f"embedtune {args[0]} failed (exit {code}); see {log}")
    return time.time() - started


def manifest(run: Path, folder: str) -> dict:
    return json.loads((run / folder / "manifest.json").read_text())


def beir_subset(source: Path, target: Path, holdout: float, keep_all: bool) -> int:
    """corpus.jsonl of `source` without a seeded `holdout` share of documents (all of them with keep_all)."""
    target.mkdir(parents=True, exist_ok=True)
    kept = []
    for line in (source / "corpus.jsonl").read_text(encoding="utf-8").splitlines():
        doc_id = json.loads(line)["_id"]
        share = int(hashlib.sha256(f"holdout\0{doc_id}".encode()).hexdigest()[:8], 16) / 2 ** 32
        if keep_all or share >= holdout:
            kept.append(line)
    tmp = target / "corpus.jsonl.tmp"
    tmp.write_text("\n".join(kept) + "\n", encoding="utf-8")
    tmp.replace(target / "corpus.jsonl")
    return len(kept)


def simulate(args) -> dict:
    name = "hpo" if args.corpus == "hpo" else Path(args.corpus.split(":", 1)[1]).name
    runs, work = Path(args.runs), Path(args.runs) / f"sim-{name}-corpus"
    run = runs / f"sim-{name}"
    log = runs / f"sim-{name}.log"
    if args.fresh:
        shutil.rmtree(run, ignore_errors=True)
    common = [f"run_name=sim-{name}", f"paths.runs={runs}", f"generator.max_passages={args.max_passages}",
              "eval.synthetic=false", "eval.bm25=false", "eval.precision=fp32"]
    if args.corpus == "hpo":
        total = 16449  # terms in the packaged release
        corpus_v1 = ["corpus=hpo", f"corpus.max_documents={round(total * (1 - args.holdout))}"]
        corpus_v2 = ["corpus=hpo"]
        evals = ["eval.builtin_split=dev"]
    else:
        source = Path(args.corpus.split(":", 1)[1]).resolve()
        corpus_v1 = corpus_v2 = ["corpus=beir", f"corpus.path={work}", f"corpus.name={name}"]
        evals = [f"eval.beir=[{{path: {source}, split: dev, name: {name} dev}}]"]
        beir_subset(source, work, args.holdout, keep_all=False)
    times = {}
    for stage in ("prepare", "generate", "filter", "mine", "train", "export"):
        times[f"v1 {stage}"] = embedtune([stage, *common, *corpus_v1, *evals], log)
    if args.corpus != "hpo":
        beir_subset(source, work, args.holdout, keep_all=True)
    for stage in ("prepare", "generate", "filter", "mine"):
        times[f"v2 {stage}"] = embedtune([stage, *common, *corpus_v2, *evals], log)
    result = {"corpus": name, "holdout": args.holdout, "max_passages": args.max_passages,
              "passages": manifest(run, "passages").get("changes"), "generate": manifest(run, "queries")["counts"],
              "pairs": manifest(run, "pairs")["counts"], "times": times, "variants": {}}
    version1 = run / "versions" / "1" / "model"
    baseline = f"eval.baselines=[{{name: version 1, model: {version1}}}]"
    for key, (label, overrides) in VARIANTS.items():
        if overrides is None:
            continue
        extra = ["export.merge_alpha=auto"] if key == "c" else []
        train_s = embedtune(["train", *common, *corpus_v2, *overrides], log)
        eval_s = embedtune(["eval", *common, *corpus_v2, *evals, *extra, baseline], log)
        report = json.loads((run / "eval" / "report.json").read_text())
        trained = manifest(run, "checkpoints")
        for variant, row in ((key, "tuned"), ("d", "merged")) if key == "c" else ((key, "tuned"),):
            result["variants"][variant] = {
                "label": VARIANTS[variant][0], "train_s": round(trained.get("seconds", 0), 1),
                "steps": trained.get("steps"), "pairs": trained.get("pairs"), "refresh": trained.get("refresh"),
                "eval_s": round(eval_s, 1), "wall_train_s": round(train_s, 1),
                "merge": manifest(run, "eval").get("merge") if variant == "d" else None,
                "sets": {s: {m: {"nDCG@10": r[m]["nDCG@10"], "per_query": r[m]["per_query"]} for m in r
                             if m in (row, "base", "version 1")}
                         for s, r in report.items() if s not in ("comparisons", "summary")}}
    out = Path(args.out) / f"refresh_sim_{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return result


def table(out: Path) -> None:
    """refresh_sim.md (+ .png) from every refresh_sim_<name>.json in `out`: nDCG@10 per variant and set, each
    paired against (a) (bootstrap over queries, 95%), training time and pairs."""
    from embedtune.evaluate import paired_bootstrap

    lines = ["| corpus (dev, human) | variant | nDCG@10 | minus (a), paired 95% | training pairs | train s |",
             "| --- | --- | ---: | --- | ---: | ---: |"]
    plotted = {}
    for path in sorted(out.glob("refresh_sim_*.json")):
        result = json.loads(path.read_text())
        variants = result["variants"]
        for set_name in variants["a"]["sets"]:
            rows = {k: next(m for name, m in v["sets"][set_name].items() if name not in ("base", "version 1"))
                    for k, v in variants.items()}
            first = variants["a"]["sets"][set_name]
            for label in ("base", "version 1"):
                m = first[label]
                ci = paired_bootstrap(rows["a"]["per_query"], m["per_query"])
                lines.append(f"| {set_name} | {label} | {m['nDCG@10']:.3f} | {ci['diff']:+.3f} [{ci['low']:+.3f}, "
                             f"{ci['high']:+.3f}] | | |")
            for k, v in variants.items():
                ci = paired_bootstrap(rows["a"]["per_query"], rows[k]["per_query"])
                interval = "" if k == "a" else f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
                lines.append(f"| {set_name} | ({k}) {v['label']} | {rows[k]['nDCG@10']:.3f} | {interval} | "
                             f"{v['pairs'] or 0:,} | {v['train_s']:.0f} |")
                plotted.setdefault(set_name, {})[f"({k})"] = rows[k]["nDCG@10"]
            plotted[set_name]["v1"] = first["version 1"]["nDCG@10"]
            plotted[set_name]["base"] = first["base"]["nDCG@10"]
        g = result["generate"]
        lines.append(f"| {result['corpus']} | refresh generation | | {g.get('written', 0):,} outputs written, "
                     f"{g.get('reused', 0):,} reused | | |")
    (out / "refresh_sim.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(plotted), figsize=(5 * len(plotted), 3.5), squeeze=False)
    for ax, (set_name, scores) in zip(axes[0], plotted.items()):
        ax.bar(list(scores), list(scores.values()), color="#4c72b0")
        ax.set_ylim(min(scores.values()) - 0.03, max(scores.values()) + 0.02)
        ax.set_title(set_name)
        ax.set_ylabel("nDCG@10")
    fig.tight_layout()
    fig.savefig(out / "refresh_sim.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default="hpo", help="hpo, or beir:<folder with corpus.jsonl and qrels/dev.tsv>")
    parser.add_argument("--holdout", type=float, default=0.3)
    parser.add_argument("--max-passages", type=int, default=2000)
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--fresh", action="store_true", help="delete the simulation's run folder first")
    parser.add_argument("--table", action="store_true", help="only join the written results into the table")
    args = parser.parse_args()
    if not args.table:
        simulate(args)
    table(Path(args.out))


if __name__ == "__main__":
    main()
