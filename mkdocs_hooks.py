"""MkDocs hooks: the pages generated at build time, so the site cannot disagree with the code or the measurements.

- reference/configuration.md: every config field (embedtune.config_reference, read from the dataclasses);
- benchmarks.md: every table in bench/results/*.md as its script wrote it, with the PNG of the same name."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

from embedtune.config_reference import markdown

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "bench" / "results"
TITLES = {  # bench/results/<stem>.md -> section title (others: the stem)
    "train": "Training throughput", "train_memory": "Training memory", "serve": "Serving",
    "serve_soak": "Serving soak", "scale": "Large corpora: prepare, search, loading", "refresh_time": "Refresh time",
    "refresh_sim": "Refresh recipes (simulation)", "extraction": "Query extraction against people's labels",
    "passage_format": "Passage format", "gpu_search": "Search on a GPU",
}


def benchmarks_page() -> str:
    out = ["# Benchmarks", "", "Every table below is the file its script wrote under `bench/results/` (each names the",
           "command that regenerates it, and the machine and date where timings are involved). Timings depend on the",
           "machine: compare rows of one table, not tables of different machines.", ""]
    for path in sorted(RESULTS.glob("*.md"), key=lambda p: (list(TITLES).index(p.stem) if p.stem in TITLES else 99,
                                                           p.stem)):
        text = path.read_text(encoding="utf-8")
        text = demote_headings(text)
        text = re.sub(r"\]\(([\w.-]+\.png)\)", lambda m: f"](benchmarks/{m.group(1)})"
                      if (RESULTS / m.group(1)).exists() else m.group(0), text)  # its own plots, where the site has them
        out += [f"## {TITLES.get(path.stem, path.stem)}", "", f"`bench/results/{path.name}`", "", text.strip(), ""]
        if (RESULTS / f"{path.stem}.png").exists() and f"benchmarks/{path.stem}.png" not in text:
            out += [f"![{path.stem}](benchmarks/{path.stem}.png)", ""]
    return "\n".join(out)


def demote_headings(text: str) -> str:
    """Markdown headings two levels down (below the page's section), leaving lines inside code fences alone."""
    lines, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        lines.append(re.sub(r"^(#+) ", r"##\1 ", line) if not fenced and not line.startswith("```") else line)
    return "\n".join(lines)


def on_files(files, config):
    files.append(File.generated(config, "reference/configuration.md", content=markdown()))
    files.append(File.generated(config, "benchmarks.md", content=benchmarks_page()))
    for png in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"benchmarks/{png.name}", abs_src_path=str(png)))
    return files
