"""The gate before promotion and the version history in eval's report.

Eval scores the previous version (the promoted one, versions/<n>/encoder) beside base and the new training on
the same sets; `gate_drops` lists the sets where the model export would promote is significantly worse than it
(paired interval below 0), judged on the human-labelled sets where there are any, else on the held-out
synthetic queries (the same queries across versions where their passages still exist: the split is by
document and answers are cached by content). Export keeps the previous version in model/ when there is a drop
(export.promote=always promotes anyway). The report shows every version's scores as a table and a plot.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional

from embedtune.assets import model_id
from embedtune.evaluate import SYNTHETIC
from embedtune.manifest import MANIFEST, load_manifest
from embedtune.plots import pyplot, save_png
from embedtune.runs import RunFolder
from embedtune.versions import plan_line, record_version, reembed_plan


def gate_drops(compared: list[dict], set_names: list[str], row: str) -> list[str]:
    """One line per judged set where `row` (tuned, or merged when export merges) is significantly worse than
    the previous version."""
    human = [n for n in set_names if n != SYNTHETIC]
    judged = human or [n for n in set_names if n == SYNTHETIC]
    return [f"{row} is significantly worse than the previous version on {r['set']}: nDCG@10 {r['diff']:+.3f} "
            f"[{r['low']:+.3f}, {r['high']:+.3f}]"
            for r in compared if r["comparison"] == f"{row} - previous" and r["set"] in judged and r["high"] < 0]


def gate_line(gate: dict) -> str:
    """What export will do, in one sentence."""
    if gate["drops"]:
        return (f"gate: {'; '.join(gate['drops'])}. Export keeps version {gate['previous']} in model/ and records "
                "this one unpromoted (export.promote=always promotes it anyway)")
    return f"gate: not significantly worse than version {gate['previous']} on any judged set; export promotes it"


def history(versions: list[dict], candidate: Optional[dict[str, float]], folder: Path) -> tuple[str, list[str]]:
    """Every recorded version's nDCG@10 per set (and this training's, the candidate) as a markdown table and
    versions.png in `folder` (one line per set over the versions). Returns (table, plot files); nothing before
    the first version."""
    if not versions:
        return "", []
    folder.mkdir(parents=True, exist_ok=True)
    sets = sorted({s for v in versions for s in v.get("scores", {})} | set(candidate or {}))
    lines = ["| version | weights | created | passages | promoted | " + " | ".join(sets) + " |",
             "| --- | --- | --- | ---: | --- | " + " | ".join("---:" for _ in sets) + " |"]
    points: dict[str, list[tuple[str, float]]] = {s: [] for s in sets}
    for v in versions:
        scores = {s: v.get("scores", {}).get(s, {}).get("tuned") for s in sets}
        lines.append(f"| {v['version']} | `{v['weights']}` | {v['created'][:10]} | {v['passages']['count']:,} | "
                     f"{'yes' if v.get('promoted', True) else 'no'} | "
                     + " | ".join("" if x is None else f"{x:.3f}" for x in scores.values()) + " |")
        for s, x in scores.items():
            if x is not None:
                points[s].append((str(v["version"]), x))
    if candidate:
        lines.append("| this training | | | | | " + " | ".join(
            "" if candidate.get(s) is None else f"{candidate[s]:.3f}" for s in sets) + " |")
        for s, x in candidate.items():
            points[s].append(("new", x))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for s, xy in points.items():
        if xy:
            ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", label=s)
    ax.set_xlabel("version")
    ax.set_ylabel("nDCG@10")
    ax.set_title("nDCG@10 by version", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return "\n".join(lines) + "\n", save_png(plt, fig, folder / "versions.png")


def gate_of(run: RunFolder) -> Optional[dict]:
    """Eval's verdict on this training against the promoted version (None: no eval of this training, or
    nothing to compare with)."""
    if not (run.eval / MANIFEST).exists():
        return None
    evaluated = load_manifest(run.eval)
    if evaluated["inputs"].get("train") != load_manifest(run.checkpoints).get("run_id"):
        return None
    return evaluated.get("gate")


def record_export(run: RunFolder, exported: Path, encoder: Path, vectors: str, gate: Optional[dict],
                  promote: bool) -> dict:
    """Record the folder export just wrote (`exported`: model/, or candidate/ when the gate holds it back) as a
    version, write the re-embedding plan of a promoted one, say what happened; what export's manifest adds
    (`weights`: the id of what model/ holds now)."""
    weights = model_id(exported)
    version = record_version(run.root, exported, weights, run.passages, load_manifest(run.passages),
                             load_manifest(run.checkpoints), run.eval, encoder=encoder, promoted=promote,
                             vectors=vectors)
    if not promote:
        shutil.rmtree(exported)  # versions/<n>/model holds it
        print(f"export: version {version['version'] if version else '?'} ({weights}) is not promoted: "
              f"{'; '.join(gate['drops'])}; model/ stays version {gate['previous']} ({gate['weights']}); "
              "export.promote=always promotes it anyway")
        weights = gate["weights"]
    elif version is not None:
        plan = reembed_plan(run.root, run.model, version)
        print(f"export: version {version['version']} ({version['weights']}); {plan_line(plan)} "
              f"({run.model / 'REEMBED.md'})")
    return {"weights": weights, "promoted": promote, **({"version": version["version"]} if version else {})}
