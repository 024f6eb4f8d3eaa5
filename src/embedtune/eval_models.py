"""Which models eval scores, each with the fingerprint its vectors are cached under: base, the new training, the
promoted version it must beat (the gate before promotion), and the merge with the base (export.merge_alpha)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

from embedtune.baselines import baseline_cache, baseline_encoder, check_served_model, spend_line, spend_table
from embedtune.beir import RetrievalSet
from embedtune.config import Config
from embedtune.distributed import barrier, is_main
from embedtune.embedding_cache import embedding_cache
from embedtune.evaluate import EvalConfig, comparison_table, evaluate_bm25, evaluate_set, regressions, set_caveats
from embedtune.manifest import load_manifest
from embedtune.merge import check as check_merge
from embedtune.merge import describe as describe_merge
from embedtune.merge import merged_encoder
from embedtune.model import Encoder, base_fingerprint, on_device
from embedtune.runs import RunFolder
from embedtune.versions import version_folder

Models = dict[str, tuple[Callable[[], Encoder], str]]  # label -> (load it, its vectors' fingerprint)


def models_to_score(cfg: Config, run: RunFolder, several: bool) -> tuple[Models, Optional[dict], Optional[dict]]:
    """(models, the merge's info or None, the promoted version compared with or None). Under a launcher, rank 0
    builds the merged model (and chooses its alpha) before any rank reads it."""
    train = load_manifest(run.checkpoints)

    def loader(path: Optional[str]) -> Callable[[], Encoder]:
        return lambda: Encoder.load(cfg.model, path=path, precision=cfg.eval.precision)
    models: Models = {"base": (loader(None), base_fingerprint(cfg.model)),
                      "tuned": (loader(str(run.final_encoder())), "tuned:" + train["run_id"])}
    previous = run.compared_version()
    if previous is not None:  # the gate: the promoted version, on the same sets, with its eval's cached vectors
        models["previous"] = (loader(str(version_folder(run.root, previous) / "encoder")),
                              previous.get("vectors") or "version:" + previous["weights"])
    merge_info = None
    if cfg.export.merge_alpha is not None:
        check_merge(cfg, run)
        if several and not is_main():
            barrier()  # rank 0 builds it; then every rank finds it built
        merged_dir, merge_info = merged_encoder(cfg, run)
        if several and is_main():
            barrier()
        models["merged"] = (loader(str(merged_dir)), "merged:" + merge_info["key"])
    return models, merge_info, previous


def report_heading(cfg: Config, run: RunFolder, merge_info: Optional[dict], previous: Optional[dict]) -> str:
    queries_report = f"../{run.queries.name}/report.md"
    heading = (f"# embedtune eval: {cfg.run_name}\n\nBase model `{cfg.model.name}` vs tuned "
               f"(`{load_manifest(run.checkpoints)['final']}`). Metrics by trec_eval (pytrec_eval), mean over queries. "
               f"The synthetic training queries, with samples: [{queries_report}]({queries_report}).")
    if merge_info:
        heading += " " + describe_merge(merge_info)
    if previous is not None:
        heading += f" previous = version {previous['version']} (`{previous['weights']}`), the promoted model."
    return heading


def score_models(models: Models, sets: list[RetrievalSet], cfg: EvalConfig, cache_folder: Path
                 ) -> tuple[dict[str, dict], list[dict]]:
    """({set: {row: metrics}}, what each endpoint baseline was sent): every model, BM25 and every baseline (the
    models users already have) on the same sets with the same metrics, vectors cached by what makes them."""
    results: dict[str, dict] = {s.name: {} for s in sets}
    for label, (load, model_fp) in models.items():
        encoder, cache = on_device(load()), embedding_cache(cache_folder, model_fp, cfg.precision)
        for s in sets:
            results[s.name][label] = evaluate_set(encoder, cache, s, cfg, label)
    if cfg.bm25:
        for s in sets:
            results[s.name]["bm25"] = evaluate_bm25(s, cfg)
    spend = []
    for baseline in cfg.baselines:
        encoder, cache = baseline_encoder(baseline), baseline_cache(cache_folder, baseline)
        for s in sets:
            results[s.name][baseline.name] = evaluate_set(encoder, cache, s, cfg, baseline.name)
        check_served_model(baseline, cache, encoder)
        spend.append(spend_line(baseline, encoder))
    return results, spend


def eval_summary(table: str, compared: list[dict], spend: list[dict], verdict: list[str],
                 sets: list[RetrievalSet]) -> tuple[str, list[str]]:
    """(what eval prints, the warnings it records): the table, the paired comparisons, what endpoints cost, the
    verdict, any set where tuned is significantly worse than base, and caveats about the sets' labels."""
    warned = regressions(compared)
    text = ("\n" + table + ("\n" + comparison_table(compared) if compared else "")
            + ("\n" + spend_table(spend) if spend else "") + "".join(f"\neval: {line}" for line in verdict)
            + "".join(f"\neval: warning: {line}" for line in warned)
            + "".join(f"\neval: {line}" for line in set_caveats(sets)))
    return text, warned
