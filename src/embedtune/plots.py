"""PNG plots beside the eval tables: metrics base vs tuned, and the training curves."""

from __future__ import annotations

from pathlib import Path

from embedtune.tracking import read_metrics


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _label(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")


def save_png(plt, fig, path: Path) -> list[str]:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path.name]


def plot_metrics(results: dict[str, dict[str, dict]], path: Path) -> list[str]:
    """One panel per evaluation set: bars of each metric for each model."""
    plt = pyplot()
    metrics = ["nDCG@10", "R@10", "R@100", "MRR@10"]
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, models) in zip(axes[0], results.items()):
        width = 0.8 / len(models)
        for n, (model, values) in enumerate(models.items()):
            xs = [i + n * width for i in range(len(metrics))]
            bars = ax.bar(xs, [values[m] for m in metrics], width, label=model)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks([i + width * (len(models) - 1) / 2 for i in range(len(metrics))], metrics)
        ax.set_ylim(0, 1.05)
        _label(ax, name)
    return save_png(plt, fig, path)


def plot_recall(results: dict[str, dict[str, dict]], path: Path) -> list[str]:
    """One panel per evaluation set: Recall@k against k (log scale) for each model."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), squeeze=False)
    for ax, (name, models) in zip(axes[0], results.items()):
        for model, values in models.items():
            curve = values["recall_curve"]
            ks = [int(k) for k in curve]
            ax.plot(ks, list(curve.values()), marker="o", markersize=3, label=model)
        ax.set_xscale("log")
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_xlabel("k")
        ax.set_ylabel("Recall@k")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        _label(ax, name)
    return save_png(plt, fig, path)


def plot_training(metrics_path: Path, path: Path) -> list[str]:
    rows = [r for r in read_metrics(metrics_path) if "train/loss" in r]
    if not rows:
        return []
    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    steps = [r["step"] for r in rows]
    a.plot(steps, [r["train/loss"] for r in rows])
    a.set_xlabel("step")
    a.set_ylabel("InfoNCE loss")
    b.plot(steps, [r["train/lr"] for r in rows], color="tab:orange")
    b.set_xlabel("step")
    b.set_ylabel("learning rate")
    return save_png(plt, fig, path)


def plot_lengths(lengths: dict[str, list[int]], path: Path) -> list[str]:
    """Histogram of kept query lengths in words, stacked by query type."""
    if not any(lengths.values()):
        return []
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    top = max(max(v) for v in lengths.values() if v)
    ax.hist(list(lengths.values()), bins=range(1, top + 2), label=list(lengths), stacked=True, align="left")
    ax.set_xlabel("words per kept query")
    ax.set_ylabel("queries")
    _label(ax, "Kept query lengths by type")
    return save_png(plt, fig, path)
