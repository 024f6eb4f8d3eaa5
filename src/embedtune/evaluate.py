"""eval: retrieval metrics (trec_eval through pytrec_eval) for base vs tuned, report.md/json and plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from embedtune.baselines import RESERVED, BaselineConfig, spend_table
from embedtune.beir import RetrievalSet, read_beir
from embedtune.bm25 import bm25_search
from embedtune.embedding_cache import EmbeddingCache, NoCache
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path, write_json
from embedtune.manifest import not_in_key
from embedtune.search import exact_topk
from embedtune.store import TextLookup
from embedtune.plots import plot_metrics, plot_recall, plot_training
from embedtune.precision import autocast

METRICS = ["nDCG@10", "R@1", "R@10", "R@100", "MRR@10", "MAP@100"]
RECALL_KS = [1, 3, 5, 10, 20, 50, 100]  # points of the Recall@k curve
SYNTHETIC = "synthetic (held-out)"  # the set of held-out generated queries; every other set is human-labelled


@dataclass
class BeirSetConfig:
    name: str = ""       # label in the report
    path: str = ""       # folder with corpus.jsonl, queries.jsonl, qrels/
    split: str = "test"  # qrels file to use


@dataclass
class EvalConfig:
    beir: list[BeirSetConfig] = field(default_factory=list)  # extra human-labelled sets to report on
    builtin_split: str = "test"      # split of the corpus's built-in labelled set (hpo: dev or test)
    synthetic: bool = True           # also report on the held-out synthetic queries (pairs/test)
    batch_size: int = not_in_key(32)  # texts per encoding batch (small batches of length-sorted texts are fastest on CPU: bench/encode.py)
    precision: str = "auto"          # auto (bf16 where the CPU/GPU has it) | bf16 | fp32, for both models
    max_queries: int = 0             # evaluate at most this many queries per set (0: all)
    bm25: bool = True                # also a BM25 row (bm25s in corpus.language: bm25.py): the lexical baseline
    language: str = "en"              # corpus.language: BM25's stop words, stemmer and tokens
    baselines: list[BaselineConfig] = field(default_factory=list)  # models users already have, as more rows:
                                     # a sentence-transformers model or an OpenAI-compatible endpoint each


def trec_metrics(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean over judged queries of nDCG@10, Recall@1/10/100, MRR@10, MAP@100 (queries absent from the
    run count as 0), and "recall_curve": Recall@k for every k in RECALL_KS."""
    import pytrec_eval

    if not qrels:
        raise EmbedtuneError("no judged queries to evaluate")
    measures = {"ndcg_cut.10", "recall." + ",".join(map(str, RECALL_KS)), "map_cut.100"}
    per_query = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    top10 = {q: dict(sorted(docs.items(), key=lambda x: -x[1])[:10]) for q, docs in run.items()}
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    n = len(qrels)

    def mean(source, key):
        return sum(source.get(q, {}).get(key, 0.0) for q in qrels) / n
    return {"nDCG@10": mean(per_query, "ndcg_cut_10"), "R@1": mean(per_query, "recall_1"),
            "R@10": mean(per_query, "recall_10"), "R@100": mean(per_query, "recall_100"),
            "MRR@10": mean(rr, "recip_rank"), "MAP@100": mean(per_query, "map_cut_100"),
            "recall_curve": {str(k): mean(per_query, f"recall_{k}") for k in RECALL_KS},
            "per_query": {q: per_query.get(q, {}).get("ndcg_cut_10", 0.0) for q in qrels}}  # nDCG@10, for intervals


def paired_bootstrap(reference: dict[str, float], compared: dict[str, float], draws: int = 1000,
                     seed: int = 0) -> dict:
    """Mean of compared - reference over the queries both score (per-query metric by query id), and its 95%
    interval from `draws` resamples of the queries (paired: each draw takes the same queries for both).
    Significant when the interval excludes 0."""
    import numpy as np

    keys = sorted(set(reference) & set(compared))
    if not keys:
        raise EmbedtuneError("paired_bootstrap: the two runs share no query")
    diff = np.array([compared[k] - reference[k] for k in keys])
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(draws, len(diff)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"diff": float(diff.mean()), "low": float(lo), "high": float(hi), "queries": len(keys),
            "significant": bool(lo > 0 or hi < 0)}


def evaluate_set(encoder, cache: EmbeddingCache, data: RetrievalSet, cfg: EvalConfig, label: str) -> dict:
    """Metrics of `encoder` on one set. A corpus read from the run's passages (a TextLookup) is encoded and
    searched block by block through the cache; a BEIR corpus (a dict) as one list."""
    query_ids = list(data.queries)
    if cfg.max_queries:
        query_ids = query_ids[:cfg.max_queries]
    qrels = {q: data.qrels[q] for q in query_ids}
    with autocast(cfg.precision):
        if isinstance(data.corpus, TextLookup) and not isinstance(cache, NoCache):
            docs = cache.encode_corpus(encoder, data.corpus, "passage", cfg.batch_size,
                                       desc=f"{label}: {data.name} corpus")
        else:
            docs = cache.encode(encoder, list(data.corpus.values()), "passage", cfg.batch_size,
                                desc=f"{label}: {data.name} corpus")
        queries = cache.encode(encoder, [data.queries[q] for q in query_ids], "query", cfg.batch_size,
                               desc=f"{label}: {data.name} queries")
    scores, indices = exact_topk(queries, docs, 100, desc=f"{label}: {data.name} search")
    doc_ids = _ids_at(data.corpus, sorted({i for row in indices.tolist() for i in row if i >= 0}))
    run = {q: {doc_ids[i]: float(s) for s, i in zip(scores[n].tolist(), indices[n].tolist()) if i >= 0}
           for n, q in enumerate(query_ids)}
    return {"queries": len(query_ids), "documents": len(data.corpus), **trec_metrics(run, qrels)}


def _ids_at(corpus, rows: list[int]) -> dict[int, str]:
    """Corpus row -> document id, for the rows a search returned."""
    if isinstance(corpus, TextLookup):
        return dict(zip(rows, corpus.table.take(rows, [corpus.table.id_column]).column(0).to_pylist()))
    ids = list(corpus)
    return {r: ids[r] for r in rows}


def markdown_table(results: dict[str, dict[str, dict]]) -> str:
    """results[set][model] -> metrics; one row per (set, model) and a delta row per set."""
    lines = ["| set | model | queries | " + " | ".join(METRICS) + " |",
             "| --- | --- | ---: | " + " | ".join("---:" for _ in METRICS) + " |"]
    for name, models in results.items():
        for model, m in models.items():
            lines.append(f"| {name} | {model} | {m['queries']:,} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
        for model in ("tuned", "merged"):
            if "base" in models and model in models:
                d = {k: models[model][k] - models["base"][k] for k in METRICS}
                lines.append(f"| {name} | {model} - base | | " + " | ".join(f"{d[k]:+.3f}" for k in METRICS) + " |")
    return "\n".join(lines) + "\n"


def comparisons(results: dict[str, dict[str, dict]]) -> list[dict]:
    """tuned - base, tuned - bm25, tuned - previous version, tuned - each baseline (and merged - base, merged -
    tuned, merged - previous when merged) on every set: nDCG@10 difference with its paired-bootstrap 95% interval."""
    rows = []
    for name, models in results.items():
        extra = [m for m in models if m not in RESERVED]  # eval.baselines
        pairs = [("tuned", "base"), ("tuned", "bm25"), ("tuned", "previous"), ("merged", "base"), ("merged", "tuned"),
                 ("merged", "previous")]
        for model, other in pairs + [("tuned", b) for b in extra]:
            if model in models and other in models and "per_query" in models[other]:
                ci = paired_bootstrap(models[other]["per_query"], models[model]["per_query"])
                rows.append({"set": name, "comparison": f"{model} - {other}", **ci})
    return rows


def regressions(compared: list[dict]) -> list[str]:
    """A warning line for every set where tuned or merged is significantly worse than base (the paired
    interval is below 0)."""
    return [f"{r['comparison'].split(' - ')[0]} is significantly worse than base on {r['set']}: nDCG@10 "
            f"{r['diff']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]"
            for r in compared if r["comparison"] in ("tuned - base", "merged - base") and r["high"] < 0]


def verdicts(results: dict[str, dict[str, dict]]) -> list[str]:
    """Which model is best, by how much, with what interval: one line per human-labelled set (the synthetic
    held-out set only where there is none), the best row by nDCG@10 against the runner-up, paired."""
    human = [name for name in results if name != SYNTHETIC]
    lines = []
    for name in human or [n for n in results if n == SYNTHETIC]:
        (best, top), *rest = sorted(results[name].items(), key=lambda kv: -kv[1]["nDCG@10"])  # stable: eval's first
        twins = [m for m, row in rest if row["per_query"] == top["per_query"]]  # e.g. the best model, served
        others = [(m, row) for m, row in rest if row["per_query"] != top["per_query"]]
        if not others:
            continue
        second, runner = others[0]
        ci = paired_bootstrap(runner["per_query"], top["per_query"])
        interval = f"{ci['diff']:+.3f} [{ci['low']:+.3f}, {ci['high']:+.3f}]"
        same = f" ({', '.join(twins)}: the same score on every query)" if twins else ""
        if ci["significant"]:
            lines.append(f"{name}: {best} is best{same}, nDCG@10 {top['nDCG@10']:.3f}, {interval} over {second} "
                         f"({runner['nDCG@10']:.3f})")
        else:
            lines.append(f"{name}: {best}{same} ({top['nDCG@10']:.3f}) and {second} ({runner['nDCG@10']:.3f}) are tied "
                         f"within the noise: {interval}, the interval contains 0")
    return lines


def comparison_table(rows: list[dict]) -> str:
    lines = ["| set | comparison | nDCG@10 difference | 95% interval | |", "| --- | --- | ---: | --- | --- |"]
    for r in rows:
        verdict = "significant" if r["significant"] else "not significant (the interval contains 0)"
        lines.append(f"| {r['set']} | {r['comparison']} | {r['diff']:+.3f} | [{r['low']:+.3f}, {r['high']:+.3f}] "
                     f"| {verdict} |")
    return "\n".join(lines) + "\n"


def recall_table(results: dict[str, dict[str, dict]]) -> str:
    """The Recall@k curve as a table: one row per (set, model), one column per k."""
    lines = ["| set | model | " + " | ".join(f"R@{k}" for k in RECALL_KS) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in RECALL_KS) + " |"]
    for name, models in results.items():
        for model, m in models.items():
            lines.append(f"| {name} | {model} | " + " | ".join(f"{m['recall_curve'][str(k)]:.3f}" for k in RECALL_KS) + " |")
    return "\n".join(lines) + "\n"


def training_evaluator(data, cfg: EvalConfig):
    """evaluator(encoder) -> metrics on `data` (a RetrievalSet) with fresh embeddings every call: what the
    training loop logs every train.eval_every steps."""
    return lambda encoder: evaluate_set(encoder, NoCache(), data, cfg, data.name)


def evaluate_bm25(data, cfg: EvalConfig) -> dict:
    """The same metrics for BM25 in the corpus's language (bm25.py)."""
    doc_ids = list(data.corpus)
    query_ids = list(data.queries)[:cfg.max_queries or None]
    found, scores = bm25_search(list(data.corpus.values()), [data.queries[q] for q in query_ids], cfg.language, 100)
    run = {q: {doc_ids[int(i)]: float(sc) for i, sc in zip(found[n], scores[n]) if sc > 0}
           for n, q in enumerate(query_ids)}
    return {"queries": len(query_ids), "documents": len(doc_ids),
            **trec_metrics(run, {q: data.qrels[q] for q in query_ids})}


def eval_sets(cfg: EvalConfig, benchmarks: Path, synthetic_test: list[dict], corpus: dict[str, str]) -> list[RetrievalSet]:
    """What eval scores: the built-in labelled sets (benchmarks/<name>/, at eval.builtin_split), any BEIR
    folders of eval.beir, and the held-out synthetic test queries (eval.synthetic) against the corpus."""
    sets = []
    if benchmarks.exists():
        for folder in sorted(p for p in benchmarks.iterdir() if p.is_dir()):
            sets.append(read_beir(folder, cfg.builtin_split, f"{folder.name} ({cfg.builtin_split}, human)"))
    for extra in cfg.beir:
        sets.append(read_beir(Path(extra.path), extra.split, extra.name or Path(extra.path).name))
    if cfg.synthetic and synthetic_test:
        sets.append(RetrievalSet(SYNTHETIC, corpus, {q["query_id"]: q["query"] for q in synthetic_test},
                                 {q["query_id"]: {q["passage_id"]: 1} for q in synthetic_test}))
    if not sets:
        raise EmbedtuneError("eval: nothing to evaluate on; set eval.beir or keep eval.synthetic=true")
    return sets


def set_caveats(sets: list[RetrievalSet]) -> list[str]:
    """What a reader of the scores should know about each set: relevant judgements naming documents the corpus
    lacks (no model can retrieve them), queries with no judgement in the split (not scored)."""
    lines = []
    for s in sets:
        if s.missing_documents:
            lines.append(f"{s.name}: {s.missing_documents:,} relevant judgements name documents absent from the "
                         "corpus (no model can retrieve them; they lower recall)")
        if s.unjudged_queries:
            lines.append(f"{s.name}: {s.unjudged_queries:,} queries of queries.jsonl have no judgement in this split "
                         "and are not scored")
    return lines


def write_report(folder: Path, heading: str, results: dict[str, dict[str, dict]], sets: list[RetrievalSet],
                 training_metrics: Path, compared: list[dict], spend: list[dict] = (), gate: Optional[str] = None,
                 history: tuple[str, list[str]] = ("", [])) -> tuple[str, list[str], list[str]]:
    """report.md (the verdict first, then the gate, tables, paired intervals, Recall@k, the version history,
    plots, what baselines cost) and report.json in `folder`, below `heading`; `compared`: comparisons(results);
    `gate`: what export will do; returns (the metrics table, the plot files, the verdict lines)."""
    table, verdict_lines = markdown_table(results), verdicts(results)
    if gate is not None:
        verdict_lines = verdict_lines + [gate]
    verdict = "".join(f"**{line}.**\n\n" for line in verdict_lines)
    intervals = ("Paired bootstrap (queries resampled, 1,000 draws, seed 0) of the per-query nDCG@10 "
                 "differences:\n\n" + comparison_table(compared)) if compared else ""
    folder.mkdir(parents=True, exist_ok=True)
    plots = plot_metrics(results, folder / "metrics.png")
    plots += plot_recall(results, folder / "recall.png")
    plots += plot_training(training_metrics, folder / "training.png")
    versions = f"Versions of this run (nDCG@10 of each; `embedtune status` lists them):\n\n{history[0]}\n" if history[0] else ""
    plots += history[1]
    caveats = "".join(f"{line}.\n\n" for line in set_caveats(sets))
    warnings = "".join(f"**Warning: {w}.**\n\n" for w in regressions(compared))
    spent = ("Baselines: what this evaluation sent (texts already in the cache under cache/embeddings are never "
             "sent again):\n\n" + spend_table(list(spend)) + "\n") if spend else ""
    title, _, intro = heading.partition("\n\n")  # the verdict right below the title, before the run's details
    intro = f"{intro}\n\n" if intro else ""
    report = (f"{title}\n\n{verdict}{intro}{warnings}{caveats}{table}\n{intervals}\n{spent}Recall@k:\n\n"
              f"{recall_table(results)}\n{versions}" + "".join(f"![{p}]({p})\n" for p in plots))
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text(report, encoding="utf-8")
    summary = {"verdicts": verdict_lines, "baselines_spend": list(spend)}
    write_json({**results, "comparisons": compared, "summary": summary}, folder / "report.json")
    return table, plots, verdict_lines

