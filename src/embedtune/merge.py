"""Merging with the base (WiSE-FT, Wortsman et al. 2022; LM-Cocktail): weights alpha x tuned + (1 - alpha) x
base, which keeps more of what the base model knew. export.merge_alpha is a number, or `auto`: the alpha of
GRID with the best nDCG@10 on the synthetic dev queries (pairs/dev) against their passages and a seeded sample
of others (ties go to the larger alpha). The merged encoder is saved once per (training run, setting) in
<run>/merged/ and shared by eval (which reports it beside base and tuned) and export.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np

from embedtune.beir import RetrievalSet
from embedtune.config import Config
from embedtune.embedding_cache import NoCache
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path
from embedtune.manifest import fingerprint, load_manifest
from embedtune.model import Encoder, on_device, passage_text
from embedtune.runs import RunFolder
from embedtune.store import TextLookup

GRID = (0.25, 0.5, 0.75, 1.0)
GRID_PASSAGES = 2000  # passages besides the dev positives that the auto grid retrieves from
INFO = "merge.json"


def interpolate(base: Encoder, tuned: Encoder, alpha: float) -> None:
    """Set `tuned`'s weights to alpha x tuned + (1 - alpha) x base, in place (float weights in float32)."""
    base_state, tuned_state = base.backbone.state_dict(), tuned.backbone.state_dict()
    if set(base_state) != set(tuned_state):
        odd = sorted(set(base_state) ^ set(tuned_state))[:3]
        raise EmbedtuneError(f"merge: the tuned and base weights do not match (e.g. {odd}): not the same architecture")
    merged = {}
    for name, t in tuned_state.items():
        b = base_state[name]
        if t.shape != b.shape:
            raise EmbedtuneError(f"merge: {name} is {tuple(t.shape)} tuned but {tuple(b.shape)} in the base")
        merged[name] = (alpha * t.float() + (1 - alpha) * b.float().to(t.device)).to(t.dtype) if t.is_floating_point() else t
    tuned.backbone.load_state_dict(merged)


def grid_set(dev: list[dict], passages: TextLookup, seed: int = 0) -> RetrievalSet:
    """The synthetic dev queries against their own passages plus GRID_PASSAGES others (seeded)."""
    own_ids = sorted({q["passage_id"] for q in dev})
    own_rows = passages.table.rows_of(own_ids)
    others = np.setdiff1d(np.arange(len(passages)), own_rows)  # rows in table order, the dev positives left out
    sample = others[random.Random(seed).sample(range(len(others)), min(GRID_PASSAGES, len(others)))]
    rows = np.sort(np.concatenate([own_rows, sample]))
    found = passages.table.take(rows, ["id", "title", "text"]).to_pylist()
    corpus = {p["id"]: passage_text(p["title"], p["text"]) for p in found}
    return RetrievalSet("synthetic dev (merge grid)", corpus, {q["query_id"]: q["query"] for q in dev},
                        {q["query_id"]: {q["passage_id"]: 1} for q in dev})


def choose_alpha(base: Encoder, tuned_dir: Path, data: RetrievalSet, eval_cfg) -> tuple[float, dict[str, float]]:
    """(best alpha of GRID, nDCG@10 per alpha) on `data`."""
    from embedtune.evaluate import evaluate_set

    scores = {}
    for alpha in GRID:
        tuned = on_device(Encoder.load(None, path=str(tuned_dir), precision="fp32"))
        interpolate(base, tuned, alpha)
        scores[f"{alpha:g}"] = evaluate_set(tuned, NoCache(), data, eval_cfg, f"merge {alpha:g}")["nDCG@10"]
        del tuned
    best = max(GRID, key=lambda a: (round(scores[f"{a:g}"], 6), a))
    return best, scores


def check(cfg: Config, run: RunFolder) -> None:
    """What merging needs, checked on every rank before rank 0 builds it (no rank may wait on a failed one)."""
    if cfg.export.merge_alpha == "auto" and not run.read_pairs("dev"):
        raise EmbedtuneError("export.merge_alpha=auto picks alpha on the synthetic dev queries, and "
                             "pairs/dev.parquet has none (filter.dev_fraction=0?): set a number instead")


def merged_encoder(cfg: Config, run: RunFolder) -> tuple[Path, dict]:
    """(folder of the merged encoder, {alpha, grid, key}) for export.merge_alpha, built once per training run
    and setting and reused after."""
    setting = cfg.export.merge_alpha
    train = load_manifest(run.checkpoints)
    key = fingerprint("merge", setting, train["run_id"], cfg.model, cfg.eval.precision,
                      load_manifest(run.pairs)["run_id"] if setting == "auto" else None)
    info_path = run.merged / INFO
    saved = json.loads(info_path.read_text()) if info_path.exists() else {}
    if saved.get("key") == key:
        return run.merged / "encoder", saved
    check(cfg, run)
    tuned_dir = run.final_encoder()
    # weights are mixed in float32 whatever this machine's bf16 support (the folder is reused elsewhere)
    base = on_device(Encoder.load(cfg.model, precision="fp32"))
    grid: dict[str, float] = {}
    if setting == "auto":
        alpha, grid = choose_alpha(base, tuned_dir, grid_set(run.read_pairs("dev"), run.passage_texts()), cfg.eval)
    else:
        alpha = float(setting)
    merged = Encoder.load(None, path=str(tuned_dir), fingerprint=f"merged:{key}", precision="fp32")
    interpolate(base, merged, alpha)
    info_path.unlink(missing_ok=True)  # no stale key may name the folder while it is replaced
    tmp = run.merged / ".encoder.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save(tmp)
    shutil.rmtree(run.merged / "encoder", ignore_errors=True)
    tmp.rename(run.merged / "encoder")
    info = {"key": key, "alpha": alpha, "setting": setting, "grid": grid, "tuned": str(tuned_dir)}
    with atomic_path(info_path) as t:
        t.write_text(json.dumps(info, indent=2))
    if grid:
        print("merge: nDCG@10 on the synthetic dev queries by alpha: "
              + ", ".join(f"{a} {v:.3f}" for a, v in grid.items()) + f"; chose {alpha:g}")
    return run.merged / "encoder", info


def describe(info: dict) -> str:
    """One line for the eval report: what `merged` is."""
    how = (f"alpha={info['alpha']:g}, the best nDCG@10 on the synthetic dev queries of the grid "
           + ", ".join(f"{a}: {v:.3f}" for a, v in info["grid"].items())) if info["grid"] else f"alpha={info['alpha']:g}"
    return f"`merged` = alpha x tuned + (1 - alpha) x base weights ({how})."
