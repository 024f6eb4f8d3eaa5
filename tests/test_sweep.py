"""sweep.py: the sweep table's comparison of every point with the first, with paired intervals."""

from __future__ import annotations

import json
import random

from embedtune.sweep import against_first, sweep_table


def point(folder, shift: float, noise: float, seed: int) -> dict:
    rng = random.Random(seed)
    per_query = {f"q{i}": min(1.0, max(0.0, 0.5 + shift + rng.gauss(0, noise))) for i in range(1500)}
    mean = sum(per_query.values()) / len(per_query)
    report = {"hpo (dev, human)": {"tuned": {"nDCG@10": mean, "R@10": 0.8, "per_query": per_query}},
              "comparisons": []}
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "report.json").write_text(json.dumps(report))
    return {"point": folder.name, "overrides": [], "folder": str(folder), "metrics": {"hpo (dev, human) nDCG@10": mean}}


def test_later_points_are_compared_with_the_first_and_noise_is_called_noise(tmp_path):
    rows = [point(tmp_path / "t=0.05", 0.0, 0.0, 0), point(tmp_path / "t=0.02", 0.05, 0.01, 1),
            point(tmp_path / "t=0.1", 0.0, 0.2, 2)]
    text = against_first(rows)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| t=")}
    assert "Against the first point (t=0.05)" in text
    assert "+0.05" in lines["t=0.02"] and lines["t=0.02"].endswith("| significant |")
    assert lines["t=0.1"].endswith("| not significant |")
    assert "| t=0.05 |" in sweep_table(rows)
