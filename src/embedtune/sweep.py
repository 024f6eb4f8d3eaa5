"""Hydra multirun sweeps: one folder per point, seeded from the run's finished stages, and one table at the end.

`embedtune train -m loss.temperature=0.02,0.05` (locally, or with hydra/launcher=slurm one SLURM job per
point) trains each point in ${paths.runs}/${run_name}/points/<point>/, where <point> is the point's overrides
(Hydra's override_dirname). A point folder starts as hard links to the run's passages, queries, pairs,
negatives, teacher scores, benchmarks and embedding cache: nothing is copied, and since every file is written by
temp-and-rename, a stage that reruns inside a point replaces its links and never touches the run's files.
After the last point, SweepReport writes sweep.md / sweep.json / sweep.png into the sweep folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from pathlib import Path

from hydra.experimental.callback import Callback

from embedtune.config import Config
from embedtune.evaluate import paired_bootstrap
from embedtune.io import atomic_path, write_json
from embedtune.plots import pyplot, save_png
from embedtune.runs import RunFolder
from embedtune.tracking import read_metrics

SEEDED = ("passages", "queries", "pairs", "negatives", "scores", "benchmarks", "cache")
RECORD = "point.json"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", name)[:200]


def point_name(explicit: str) -> str:
    """The point folder's name: `point=` when given; in a Hydra multirun, the point's overrides; else ""."""
    if explicit:
        return _safe(explicit)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return ""
    job = HydraConfig.get().job
    return _safe(job.override_dirname) or f"job{job.num}"


def seed_point(base: Path, point_root: Path) -> list[str]:
    """Hard-link the run's finished stage folders into a point folder that lacks them (copies where links
    are impossible); atomic per folder, so processes of one point may all call it."""
    seeded = []
    for name in SEEDED:
        source, target = base / name, point_root / name
        if not source.is_dir() or target.exists():
            continue
        tmp = point_root / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            shutil.copytree(source, tmp, copy_function=_link_or_copy, symlinks=True)
            os.rename(tmp, target)
            seeded.append(name)
        except OSError:
            if not target.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return seeded


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def record_point(cfg: Config, stage: str, root: Path) -> None:
    """In a multirun, leave point.json in the job's Hydra output folder: which point, and its run folder."""
    from hydra.core.hydra_config import HydraConfig

    if not cfg.point or not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    write_json({"point": cfg.point, "stage": stage, "overrides": list(hc.overrides.task), "folder": str(root)},
               Path(hc.runtime.output_dir) / RECORD)


def enter_point(cfg: Config, stage: str) -> None:
    """Before a stage: name the point (cfg.point), seed its folder from the run, leave point.json."""
    cfg.point = point_name(cfg.point)
    if not cfg.point:
        return
    run = RunFolder(cfg)
    seeded = seed_point(run.base, run.root)
    if seeded:
        print(f"point {cfg.point}: linked {', '.join(seeded)} from {run.base}")
    record_point(cfg, stage, run.root)


def tuned_per_query(folder: Path) -> dict[str, dict[str, float]]:
    """The tuned model's per-query nDCG@10 on each eval set of a point (for intervals between points)."""
    report = folder / "eval" / "report.json"
    if not report.exists():
        return {}
    return {name: models["tuned"]["per_query"] for name, models in json.loads(report.read_text()).items()
            if isinstance(models, dict) and "per_query" in models.get("tuned", {})}


def against_first(rows: list[dict]) -> str:
    """Each later point's tuned nDCG@10 minus the first point's, per eval set, with a paired-bootstrap 95%
    interval over the set's queries; a difference whose interval contains 0 is marked not significant."""
    first = tuned_per_query(Path(rows[0]["folder"]))
    lines = []
    for r in rows[1:]:
        for name, scores in tuned_per_query(Path(r["folder"])).items():
            if name in first:
                ci = paired_bootstrap(first[name], scores)
                lines.append(f"| {r['point']} | {name} | {ci['diff']:+.4f} | [{ci['low']:+.4f}, {ci['high']:+.4f}] | "
                             + ("significant" if ci["significant"] else "not significant") + " |")
    if not lines:
        return ""
    return (f"Against the first point ({rows[0]['point']}), tuned nDCG@10, paired bootstrap (1,000 draws):\n\n"
            "| point | set | difference | 95% interval | |\n| --- | --- | ---: | --- | --- |\n" + "\n".join(lines) + "\n")


def point_metrics(folder: Path) -> dict[str, float]:
    """What a point achieved: the tuned model's nDCG@10 / R@10 per eval set (eval/report.json), and the last
    logged training loss and dev metrics (checkpoints/metrics.jsonl)."""
    metrics: dict[str, float] = {}
    report = folder / "eval" / "report.json"
    if report.exists():
        for name, models in json.loads(report.read_text()).items():
            if isinstance(models, dict) and "tuned" in models:
                metrics[f"{name} nDCG@10"] = models["tuned"]["nDCG@10"]
                metrics[f"{name} R@10"] = models["tuned"]["R@10"]
    logged = folder / "checkpoints" / "metrics.jsonl"
    if logged.exists():
        for row in read_metrics(logged):
            for key in row:
                if key == "train/loss" or key.startswith("dev/"):
                    metrics[key] = row[key]
    return metrics


def collect(sweep_dir: Path) -> list[dict]:
    """One row per point of the sweep (its jobs' point.json, in job order)."""
    rows = []
    for record in sorted(sweep_dir.glob(f"*/{RECORD}"), key=lambda p: (len(p.parent.name), p.parent.name)):
        point = json.loads(record.read_text())
        rows.append({"point": point["point"], "overrides": point["overrides"], "folder": point["folder"],
                     "metrics": point_metrics(Path(point["folder"]))})
    return rows


def _columns(rows: list[dict]) -> list[str]:
    """Every metric any point has, nDCG@10 columns first."""
    return sorted({k for r in rows for k in r["metrics"]}, key=lambda k: (not k.endswith("nDCG@10"), k))


def sweep_table(rows: list[dict]) -> str:
    columns = _columns(rows)
    lines = ["| point | " + " | ".join(columns) + " |", "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    for r in rows:
        cells = [f"{r['metrics'][c]:.4f}" if c in r["metrics"] else "" for c in columns]
        lines.append(f"| {r['point']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows: list[dict], path: Path) -> bool:
    columns = _columns(rows)
    if not columns:
        return False
    plt = pyplot()
    metric = columns[0]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(rows)), 3.4))
    bars = ax.bar(range(len(rows)), [r["metrics"].get(metric, 0.0) for r in rows])
    ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(rows)), [r["point"] for r in rows], rotation=20, ha="right", fontsize=7)
    ax.set_ylabel(metric)
    save_png(plt, fig, path)
    return True


def write_report(sweep_dir: Path) -> str | None:
    rows = collect(sweep_dir)
    if not rows:
        return None
    table = sweep_table(rows)
    compared = against_first(rows)
    table += f"\n{compared}" if compared else ""
    plot = plot_sweep(rows, sweep_dir / "sweep.png")
    with atomic_path(sweep_dir / "sweep.md") as tmp:
        tmp.write_text(f"# embedtune sweep: {sweep_dir}\n\n{table}" + ("\n![sweep.png](sweep.png)\n" if plot else ""),
                       encoding="utf-8")
    write_json(rows, sweep_dir / "sweep.json")
    return table


class SweepReport(Callback):
    """Hydra callback (conf/config.yaml): after a multirun, the points' metrics in one table."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = write_report(sweep_dir)
        if table:
            print(f"\nsweep: {sweep_dir / 'sweep.md'}\n{table}")
