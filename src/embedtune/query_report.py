"""queries/report.md: what the user should read before trusting a run. Counts of kept and dropped queries per
reason and per query type, the chatter and copy rates, a length histogram, and random samples beside their
passage titles."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from embedtune.filter import FilterConfig, is_copy
from embedtune.generate.extract import ECHO, looks_like_chatter
from embedtune.io import atomic_path
from embedtune.plots import plot_lengths
from embedtune.text_units import word_count

EXTRACTION_STAGE = "extraction"
SAMPLES_PER_TYPE = 20
SAMPLES_PER_REASON = 5


def rates(outputs: list[dict], kept_train: list[dict], texts: dict[str, str], cfg: FilterConfig) -> dict:
    """Chatter and passage-copy rates among all generated outputs and among the kept training queries.

    Outputs: chatter = the extractor removed or dropped talk (labels, preambles, trailers, remarks on the
    task); copy = the prompt's "Text:" echoed, or an extracted query that is a passage excerpt (`is_copy`).
    Kept training queries: the same detectors run again on the final text (what training will see)."""
    n = max(1, len(outputs))
    chatter = sum(1 for q in outputs if q["chatter"])
    copies = sum(1 for q in outputs if q["reason"] == ECHO
                 or (q["text"] and is_copy(q["text"], texts[q["passage_id"]], cfg)))
    k = max(1, len(kept_train))
    kept_chatter = sum(1 for q in kept_train if looks_like_chatter(q["text"]))
    kept_copies = sum(1 for q in kept_train if is_copy(q["text"], texts[q["passage_id"]], cfg))
    return {"outputs": len(outputs), "chatter_in_outputs": chatter / n, "copies_in_outputs": copies / n,
            "kept_train": len(kept_train), "chatter_in_kept": kept_chatter / k, "copies_in_kept": kept_copies / k}


def _cell(text: str, limit: int = 140) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def write_query_report(folder: Path, run_name: str, outputs: list[dict], kept: list[dict], train_ids: set[str],
                       dropped: dict[str, dict[str, list[dict]]], titles: dict[str, str], measured: dict,
                       seed: int = 0) -> Path:
    """`dropped` maps a stage ("extraction", "filter") to reason -> dropped rows; `kept` are all kept queries
    (train, dev and test), `train_ids` the query ids of the training split."""
    kinds = sorted({q["prompt"] for q in outputs})
    n = max(1, len(outputs))
    lines = [f"# Synthetic queries: {run_name}", "",
             f"{len(outputs):,} generator outputs for {len({q['passage_id'] for q in outputs}):,} passages; "
             f"{len(kept):,} kept ({len(kept) / n:.1%}), {len(train_ids):,} of them for training.", "",
             "| rate | of all outputs | of kept training queries |", "| --- | ---: | ---: |",
             f"| chatter (labels, preambles, remarks on the task) | {measured['chatter_in_outputs']:.1%} "
             f"| {measured['chatter_in_kept']:.1%} |",
             f"| passage copies (the prompt's \"Text:\" echoed, or one long run of the passage's words) "
             f"| {measured['copies_in_outputs']:.1%} | {measured['copies_in_kept']:.1%} |", "",
             "## Dropped, by reason", "", "| stage | reason | outputs | share | example (raw output) |",
             "| --- | --- | ---: | ---: | --- |"]
    for stage, reasons in dropped.items():
        for reason, rows in reasons.items():
            example = _cell(rows[0].get("raw", rows[0]["text"])) if rows else ""
            lines.append(f"| {stage} | {reason} | {len(rows):,} | {len(rows) / n:.1%} | {example} |")
    lines += ["", "## By query type", "", "| type | outputs | kept | kept share | words (median) |",
              "| --- | ---: | ---: | ---: | ---: |"]
    lengths = {k: sorted(word_count(q["text"]) for q in kept if q["prompt"] == k) for k in kinds}
    for k in kinds:
        made = sum(1 for q in outputs if q["prompt"] == k)
        median = lengths[k][len(lengths[k]) // 2] if lengths[k] else 0
        lines.append(f"| {k} | {made:,} | {len(lengths[k]):,} | {len(lengths[k]) / max(1, made):.1%} | {median} |")
    plots = plot_lengths(lengths, Path(folder) / "lengths.png")
    lines += [""] + [f"![query lengths]({p})" for p in plots] + [""]
    rng = random.Random(seed)
    lines += [f"## {SAMPLES_PER_TYPE} random kept queries per type", ""]
    for k in kinds:
        pool = [q for q in kept if q["prompt"] == k]
        lines += [f"### {k}", "", "| query | passage title |", "| --- | --- |"]
        lines += [f"| {_cell(q['text'])} | {_cell(titles.get(q['passage_id'], ''), 80)} |"
                  for q in rng.sample(pool, min(SAMPLES_PER_TYPE, len(pool)))]
        lines.append("")
    lines += [f"## Up to {SAMPLES_PER_REASON} dropped outputs per reason", "",
              "| reason | raw output | extracted | passage title |", "| --- | --- | --- | --- |"]
    for reasons in dropped.values():
        for reason, rows in reasons.items():
            for q in rng.sample(rows, min(SAMPLES_PER_REASON, len(rows))):
                lines.append(f"| {reason} | {_cell(q.get('raw', q['text']))} | {_cell(q['text'])} "
                             f"| {_cell(titles.get(q['passage_id'], ''), 60)} |")
    path = Path(folder) / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def reason_counts(dropped: dict[str, dict[str, list[dict]]]) -> dict[str, int]:
    """reason -> count over all stages, for the manifest."""
    total: Counter = Counter()
    for reasons in dropped.values():
        for reason, rows in reasons.items():
            total[reason] += len(rows)
    return dict(total)


def extraction_reasons(outputs: list[dict]) -> dict[str, list[dict]]:
    """The outputs extraction dropped, by reason (the generator's answer held no usable query)."""
    found: dict[str, list[dict]] = {}
    for q in outputs:
        if q["reason"]:
            found.setdefault(q["reason"], []).append(q)
    return dict(sorted(found.items()))


def filter_summary(outputs: list[dict], kept: list[dict], splits: dict[str, list], dropped: dict[str, int],
                   measured: dict, report: Path) -> str:
    """filter's two printed lines: what was kept and dropped, then the chatter and copy rates."""
    return (f"filter: kept {len(kept):,} of {len(outputs):,} outputs ({len(kept) / max(1, len(outputs)):.0%}); dropped "
            + ", ".join(f"{k} {v:,}" for k, v in dropped.items() if v) + "; "
            + ", ".join(f"{s} {len(r):,}" for s, r in splits.items())
            + f"\nfilter: chatter in {measured['chatter_in_outputs']:.1%} of outputs, {measured['chatter_in_kept']:.1%} "
            f"of kept training queries; passage copies {measured['copies_in_outputs']:.1%} and "
            f"{measured['copies_in_kept']:.1%}; samples in {report}")
