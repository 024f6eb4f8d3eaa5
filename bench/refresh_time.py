"""What a refresh costs against a from-scratch run, on the built-in HPO demo (issue: living corpora).

  python bench/refresh_time.py --out bench/results [--added 0.1] [--runs runs/bench]

(A) `embedtune run` from scratch on the whole corpus; (B) `embedtune run` on the corpus without its newest
`--added` share of terms (version 1), then the same command on the whole corpus (the refresh, with the
defaults); (C) the same refresh from a copy of (B)'s version-1 folder with `train.init=previous train.replay=0`
(version 1 + the new pairs only). Reports the wall times (the command as a user runs it, stage by stage) and nDCG@10 of (A) and of
the refresh on the HPO dev queries, paired (bootstrap over queries, 95%). Writes refresh_time.md and .json.
Extra arguments after `--` go to every `embedtune run`.
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
from pathlib import Path

TERMS = 16449  # terms in the packaged HPO release


def run(args: list[str], log: Path) -> tuple[float, dict[str, float], str]:
    """Wall seconds of one `embedtune run`, its stage times, and its printed summary lines."""
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "embedtune.cli", "run", *args], capture_output=True, text=True,
                          env={**os.environ, "WANDB_MODE": "offline"})
    seconds = time.time() - started
    with open(log, "a") as out:
        out.write(f"\n$ embedtune run {' '.join(args)}\n{done.stdout}\n{done.stderr[-5000:]}\n")
    if done.returncode:
        raise SystemExit(f"embedtune run failed; see {log}")
    stages = dict((name, float(s)) for name, s in re.findall(r"(\w+) (\d+)s", next(
        line for line in done.stdout.splitlines() if line.startswith("stage wall times:"))))
    summary = [line for line in done.stdout.splitlines()
               if line.startswith(("corpus:", "prepare: ", "generate: ", "filter: kept", "train: refresh", "train: ",
                                   "export: version", "eval: gate"))]
    return seconds, stages, "\n".join(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--added", type=float, default=0.1)
    parser.add_argument("--runs", default="runs/bench")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    runs, out = Path(args.runs).resolve(), Path(args.out)
    log = runs / "refresh_time.log"
    runs.mkdir(parents=True, exist_ok=True)
    common = [f"paths.runs={runs}", "eval.builtin_split=dev", *args.extra]
    for name in ("refresh-scratch", "refresh-grown", "refresh-previous"):
        shutil.rmtree(runs / name, ignore_errors=True)
    scratch_s, scratch_stages, _ = run(["run_name=refresh-scratch", *common], log)
    older = round(TERMS * (1 - args.added))
    run(["run_name=refresh-grown", f"corpus.max_documents={older}", *common], log)
    shutil.copytree(runs / "refresh-grown", runs / "refresh-previous", symlinks=True)
    refresh_s, refresh_stages, summary = run(["run_name=refresh-grown", *common], log)
    previous_s, previous_stages, previous_summary = run(
        ["run_name=refresh-previous", "train.init=previous", "train.replay=0", *common], log)

    from embedtune.evaluate import paired_bootstrap

    def rows(name: str) -> dict:
        report = json.loads((runs / name / "eval" / "report.json").read_text())
        return report["hpo (dev, human)"]
    scratch, refreshed, previous = rows("refresh-scratch"), rows("refresh-grown"), rows("refresh-previous")
    ci = paired_bootstrap(scratch["tuned"]["per_query"], refreshed["tuned"]["per_query"])
    ci_previous = paired_bootstrap(scratch["tuned"]["per_query"], previous["tuned"]["per_query"])
    cpu = subprocess.run(["grep", "-o", "-m1", r"avx512_bf16\|amx_bf16", "/proc/cpuinfo"], capture_output=True,
                         text=True).stdout.strip() or "AVX2 only (fp32)"
    names = sorted(set(scratch_stages) | set(refresh_stages), key=list(scratch_stages).index)
    lines = [f"HPO demo, {args.added:.0%} of the terms added (the newest ids), defaults; CPU: {cpu}, "
             f"{os.cpu_count()} cores.", "",
             "| run | wall time | " + " | ".join(names) + " | HPO dev nDCG@10 |",
             "| --- | ---: | " + " | ".join("---:" for _ in names) + " | ---: |",
             f"| from scratch, whole corpus | {scratch_s / 60:.1f} min | "
             + " | ".join(f"{scratch_stages.get(n, 0):.0f} s" for n in names) + f" | {scratch['tuned']['nDCG@10']:.3f} |",
             f"| refresh, defaults (train.init=base) | {refresh_s / 60:.1f} min ({refresh_s / scratch_s:.0%}) | "
             + " | ".join(f"{refresh_stages.get(n, 0):.0f} s" for n in names)
             + f" | {refreshed['tuned']['nDCG@10']:.3f} |",
             f"| refresh, train.init=previous replay=0 | {previous_s / 60:.1f} min ({previous_s / scratch_s:.0%}) | "
             + " | ".join(f"{previous_stages.get(n, 0):.0f} s" for n in names)
             + f" | {previous['tuned']['nDCG@10']:.3f} |", "",
             f"Minus from scratch, HPO dev nDCG@10 (paired bootstrap over queries, 95%): refresh with the defaults "
             f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]; train.init=previous "
             f"{ci_previous['diff']:+.3f} [{ci_previous['low']:+.3f}, {ci_previous['high']:+.3f}]; base "
             f"{scratch['base']['nDCG@10']:.3f}.", "", "The refresh with the defaults printed:", "", "```", summary,
             "```", "", "The refresh with train.init=previous printed:", "", "```", previous_summary, "```", ""]
    out.mkdir(parents=True, exist_ok=True)
    (out / "refresh_time.md").write_text("\n".join(lines))
    (out / "refresh_time.json").write_text(json.dumps({
        "added": args.added, "cpu": cpu, "scratch_s": scratch_s, "refresh_s": refresh_s, "scratch_stages": scratch_stages,
        "refresh_stages": refresh_stages, "scratch": scratch["tuned"]["nDCG@10"], "refresh": refreshed["tuned"]["nDCG@10"],
        "difference": ci, "previous_s": previous_s, "previous_stages": previous_stages,
        "previous": previous["tuned"]["nDCG@10"], "previous_difference": ci_previous}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
