"""Versions of a run's model: every export that changes the weights is one, kept in
`runs/<name>/versions/<n>/` with what made it and how it scored:

    version.json     its number, the weights' content id (what `embedtune serve` names), the passages it was
                     trained on (their stage id and counts), the training's final checkpoint, its eval scores
    passages.parquet id and 8-byte content digest of every passage it was trained on (what a later version
                     compares with to say which stored vectors went stale)
    model/           the exported folder, hard-linked (no second copy on disk where links work)
    encoder/         the trained encoder it was exported from (what train.init=previous starts a refresh from
                     and eval compares the next version with), hard-linked
    report.md        the eval report it was exported with
    config.*.yaml    the resolved config of each stage as it last ran (secrets removed)

`model/` is the newest version; `model/REEMBED.md` (+ `reembed.json`) tells users who stored vectors of the
previous version what to embed again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.corpus_changes import content_digests, passage_batches
from embedtune.io import atomic_path, write_json, write_parquet

def list_versions(root: Path) -> list[dict]:
    """Every recorded version of the run at `root` (runs/<name>), oldest first."""
    found = []
    for folder in (Path(root) / "versions").glob("*"):
        if folder.name.isdigit() and (folder / "version.json").exists():
            found.append(json.loads((folder / "version.json").read_text(encoding="utf-8")))
    return sorted(found, key=lambda v: v["version"])


def _link_tree(source: Path, target: Path) -> None:
    for path in sorted(source.rglob("*")):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, dest)
        except OSError:  # another file system, or no hard links: a copy
            shutil.copy2(path, dest)


def _scores(eval_folder: Path, train_manifest: dict) -> dict:
    """nDCG@10 of the tuned model (and of base) on each evaluated set, from eval's report.json, where eval read
    this training (an export without a new eval has no scores: the report's are another model's)."""
    report, manifest = eval_folder / "report.json", eval_folder / "manifest.json"
    if not report.exists():
        return {}
    if manifest.exists() and json.loads(manifest.read_text())["inputs"].get("train") != train_manifest.get("run_id"):
        return {}
    rows = json.loads(report.read_text(encoding="utf-8"))
    return {name: {label: round(rows[name][label]["nDCG@10"], 4) for label in ("tuned", "base") if label in rows[name]}
            for name in rows if name not in ("comparisons", "summary")}


def previous_version(root: Path, train_run_id: Optional[str] = None,
                     passages_run_id: Optional[str] = None) -> Optional[dict]:
    """The version a new training is compared with (and, with train.init=previous, starts from): the newest
    that was promoted, leaving out the one made by the training `train_run_id` (so exporting it changes
    nothing upstream) and, given `passages_run_id`, those trained on these same passages (a refresh starts
    from another state of the corpus). None when there is none."""
    found = [v for v in list_versions(root) if v.get("promoted", True)
             and (train_run_id is None or v["train"].get("run_id") != train_run_id)
             and (passages_run_id is None or v["passages"].get("run_id") != passages_run_id)]
    return found[-1] if found else None


def version_folder(root: Path, version: dict) -> Path:
    return Path(root) / "versions" / str(version["version"])


def fresh_passages(root: Path, version: dict, passages: Path, files: list[str]) -> set[str]:
    """Ids of the passages (in `files` under `passages`) added or changed since `version` was trained."""
    old = pq.read_table(version_folder(root, version) / "passages.parquet").to_pydict()
    before = dict(zip(old["id"], old["digest"]))
    now = _passage_digests(passages, files).to_pydict()
    return {i for i, d in zip(now["id"], now["digest"]) if before.get(i) != d}


def record_version(root: Path, model: Path, weights: str, passages: Path, passages_manifest: dict,
                   train_manifest: dict, eval_folder: Path, encoder: Optional[Path] = None,
                   promoted: bool = True, vectors: Optional[str] = None) -> Optional[dict]:
    """Record `model` (just exported from `encoder`; `weights`, its model_id) as the next version, unless the
    newest version has these weights and passages already (a re-export): then None. `promoted`: `model/` holds
    it (False: the gate kept the previous version); `vectors`: the fingerprint eval cached its embeddings under
    (a later eval scoring it as the previous version reuses them). Written under a temporary name and renamed whole."""
    versions = list_versions(root)
    if versions and versions[-1]["weights"] == weights \
            and versions[-1]["passages"].get("run_id") == passages_manifest.get("run_id"):
        if promoted and not versions[-1].get("promoted", True):  # export.promote=always after the gate held it
            newest = {**versions[-1], "promoted": True}
            write_json(newest, Path(root) / "versions" / str(newest["version"]) / "version.json")
            return newest
        return None
    number = versions[-1]["version"] + 1 if versions else 1
    final = Path(root) / "versions" / str(number)
    work = final.with_name(f".{number}.tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _link_tree(model, work / "model")
    if encoder is not None:
        _link_tree(encoder, work / "encoder")
    trained_on = _passage_digests(passages, passages_manifest["files"])
    write_parquet(trained_on, work / "passages.parquet")
    if (eval_folder / "report.md").exists():
        shutil.copy2(eval_folder / "report.md", work / "report.md")
    for config in Path(root).glob("config.*.yaml"):  # each stage's resolved config (secrets removed)
        shutil.copy2(config, work / config.name)
    version = {"version": number, "weights": weights, "promoted": promoted, "vectors": vectors,
               "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "passages": {"run_id": passages_manifest.get("run_id"), "count": trained_on.num_rows,
                            "changes": passages_manifest.get("changes")},
               "train": {"final": train_manifest.get("final"), "run_id": train_manifest.get("run_id")},
               "scores": _scores(eval_folder, train_manifest)}
    write_json(version, work / "version.json")
    os.replace(work, final)
    return version


def _passage_digests(passages: Path, files: list[str]) -> pa.Table:
    """id and content digest (title + text, as prepare compares them) of every passage, a batch at a time."""
    ids, digests = [], []
    for batch in passage_batches(passages, files):
        ids.extend(p["id"] for p in batch)
        digests.append(content_digests(batch))
    return pa.table({"id": pa.array(ids, pa.string()),
                     "digest": pa.array(np.concatenate(digests) if digests else np.zeros(0, np.uint64))})


def reembed_plan(root: Path, model: Path, version: dict) -> dict:
    """model/REEMBED.md and reembed.json: the new model's id; whether vectors stored from the previous promoted
    version still fit (only if the weights are identical); passages added, changed and removed since that version."""
    versions = [v for v in list_versions(root) if v["version"] < version["version"] and v.get("promoted", True)]
    plan = {"model": version["weights"], "version": version["version"], "previous": None, "compatible": False,
            "added": [], "changed": [], "removed": []}
    if versions:
        previous = versions[-1]
        folder = Path(root) / "versions"
        old = pq.read_table(folder / str(previous["version"]) / "passages.parquet").to_pydict()
        new = pq.read_table(folder / str(version["version"]) / "passages.parquet").to_pydict()
        before, after = dict(zip(old["id"], old["digest"])), dict(zip(new["id"], new["digest"]))
        plan.update(previous=previous["weights"], previous_version=previous["version"],
                    compatible=previous["weights"] == version["weights"],
                    added=sorted(set(after) - set(before)), removed=sorted(set(before) - set(after)),
                    changed=sorted(i for i in set(after) & set(before) if after[i] != before[i]))
    for folder in (model, Path(root) / "versions" / str(version["version"])):
        write_json(plan, folder / "reembed.json")
        with atomic_path(folder / "REEMBED.md") as tmp:
            tmp.write_text(_plan_text(plan), encoding="utf-8")
    return plan


def plan_line(plan: dict) -> str:
    if plan["previous"] is None:
        return "the first version: embed every passage with it"
    return (f"since version {plan['previous_version']}: {len(plan['added']):,} passages added, "
            f"{len(plan['changed']):,} changed, {len(plan['removed']):,} removed; "
            + ("stored vectors stay valid" if plan["compatible"] else "stored vectors must all be embedded again"))


def _plan_text(plan: dict) -> str:
    if plan["previous"] is None:
        return (f"# Re-embedding plan\n\nModel `{plan['model']}` is version {plan['version']}, the first: embed "
                "every passage with it.\n")
    counts = f"{len(plan['added']):,} added, {len(plan['changed']):,} changed, {len(plan['removed']):,} removed"
    if plan["compatible"]:
        action = ("Its weights are those of the previous version: stored vectors stay valid. Embed the added and "
                  "changed passages, and delete the vectors of the removed ones.")
    else:
        action = (f"Its weights differ from version {plan['previous_version']} (`{plan['previous']}`): vectors "
                  "stored from that version are not comparable with this model's. Embed every passage again (and "
                  "every query), and delete the vectors of the removed ones; never mix the two models in one index.")
    return (f"# Re-embedding plan\n\nModel `{plan['model']}` is version {plan['version']}. Since version "
            f"{plan['previous_version']}: {counts} passages (ids in reembed.json).\n\n{action}\n")
