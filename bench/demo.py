"""The default `embedtune run` timed stage by stage on this machine, with its CPU, precision and backends.

    python bench/demo.py --label "default" [--runs /tmp/demo-runs] [--out bench/results] [-- OVERRIDES...]
    python bench/demo.py --label "onnx generator" -- generator.backend=onnx eval.builtin_split=dev
    python bench/demo.py --table      # only join the written demo_*.json into demo.md and demo.png

Each call makes a fresh run (its own run folder, nothing reused), reads the stage wall times `embedtune run`
prints, and writes demo_<label>.json; the table holds every such file of --out, one row per label and CPU kind.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

STAGES = ("prepare", "generate", "filter", "mine", "score", "train", "eval", "export")


def cpu() -> dict:
    from train import cpu_kind  # bench/train.py: the CPU and whether it has native bf16

    name, native = cpu_kind()
    return {"name": name, "cores": os.cpu_count(), "kind": "native bf16" if native else "no native bf16"}


def run(label: str, runs: Path, overrides: list[str]) -> dict:
    from embedtune.precision import native_bf16

    name = "demo-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
    shutil.rmtree(runs / name, ignore_errors=True)
    command = [sys.executable, "-m", "embedtune.cli", "run", f"run_name={name}", f"paths.runs={runs}", *overrides]
    started = time.time()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "WANDB_MODE": "offline"})
    wall = time.time() - started
    if done.returncode:
        raise SystemExit(f"embedtune run failed:\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith("stage wall times: "))
    times = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+) (\d+)s", line.split(": ", 1)[1])}
    kept = next((x for x in done.stdout.splitlines() if x.startswith("filter: kept")), "")
    report = json.loads((runs / name / "eval" / "report.json").read_text())
    scores = {s: {m: r[m]["nDCG@10"] for m in ("base", "tuned") if m in r}
              for s, r in report.items() if s not in ("comparisons", "summary")}
    return {"label": label, "date": str(date.today()), "cpu": cpu(), "overrides": overrides,
            "precision": "bf16" if native_bf16() else "fp32", "times": times, "wall_s": round(wall, 1),
            "kept": kept, "nDCG@10": scores}


def table(out: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("demo_*.json"))]
    lines = ["| run | CPU | precision | " + " | ".join(STAGES) + " | total min | nDCG@10 base -> tuned |",
             "| --- | --- | --- | " + " | ".join("---:" for _ in STAGES) + " | ---: | --- |"]
    for r in results:
        scores = "; ".join(f"{s} {v.get('base', float('nan')):.3f} -> {v.get('tuned', float('nan')):.3f}"
                           for s, v in r["nDCG@10"].items())
        lines.append(f"| {r['label']} ({r['date']}) | {r['cpu']['kind']}, {r['cpu']['cores']} cores | {r['precision']} | "
                     + " | ".join(f"{r['times'].get(s, 0):.0f}" for s in STAGES)
                     + f" | {r['wall_s'] / 60:.1f} | {scores} |")
    lines += ["", "Stage wall times in seconds as `embedtune run` prints them; total: the whole command, start-up "
              "included. Overrides per run: " + "; ".join(f"{r['label']}: `{' '.join(r['overrides']) or '(none)'}`"
                                                          for r in results)]
    (out / "demo.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.5 * len(results)))
    for row, r in enumerate(results):
        left = 0.0
        for i, stage in enumerate(STAGES):
            width = r["times"].get(stage, 0) / 60
            ax.barh(row, width, left=left, color=f"C{i}", label=stage if row == 0 else None)
            left += width
    ax.set_yticks(range(len(results)), [f"{r['label']} ({r['cpu']['kind']})" for r in results], fontsize=8)
    ax.set_xlabel("minutes")
    ax.legend(fontsize=7, ncol=4, loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--label", default="default")
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--table", action="store_true")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    out = Path(args.out)
    if not args.table:
        result = run(args.label, Path(args.runs), args.overrides)
        out.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", f"{args.label} {result['cpu']['kind']}".lower()).strip("-")
        (out / f"demo_{slug}.json").write_text(json.dumps(result, indent=1))
    table(out)


if __name__ == "__main__":
    main()
