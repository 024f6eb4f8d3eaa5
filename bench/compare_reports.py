"""Compare the eval reports of several runs (or sweep points) on one set: each model's nDCG@10 and R@100,
and its paired-bootstrap 95% interval against a reference, as a markdown table.

    python bench/compare_reports.py --set "hpo (dev, human)" \
        baseline=runs/demo-dev/points/b0/eval/report.json:tuned \
        merged=runs/demo-dev/points/b0/eval/report.json:merged ...

Each argument is label=path/to/report.json:model (model: base, tuned, merged); the first is the reference.
"""

from __future__ import annotations

import argparse
import json

from embedtune.evaluate import paired_bootstrap


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--set", required=True, help="the set's name in the reports, e.g. 'hpo (dev, human)'")
    ap.add_argument("runs", nargs="+", help="label=report.json:model; the first is the reference")
    a = ap.parse_args()
    rows, reference = [], None
    for spec in a.runs:
        label, rest = spec.split("=", 1)
        path, model = rest.rsplit(":", 1)
        metrics = json.loads(open(path).read())[a.set][model]
        if reference is None:
            reference = metrics
            base = json.loads(open(path).read())[a.set]["base"]
            ci = paired_bootstrap(base["per_query"], metrics["per_query"])
            rows.append((label, metrics, None, ci))
        else:
            rows.append((label, metrics, paired_bootstrap(reference["per_query"], metrics["per_query"]), None))
    print(f"| {a.set} | nDCG@10 | R@100 | vs {rows[0][0]} (nDCG@10, 95% interval) |")
    print("| --- | ---: | ---: | --- |")
    for label, m, ci, vs_base in rows:
        if ci is None:
            note = f"(vs base: {vs_base['diff']:+.3f} [{vs_base['low']:+.3f}, {vs_base['high']:+.3f}])"
        else:
            note = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]" + (" significant" if ci["significant"] else "")
        print(f"| {label} | {m['nDCG@10']:.3f} | {m['R@100']:.3f} | {note} |")


if __name__ == "__main__":
    main()
