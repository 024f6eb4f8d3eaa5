"""The stages as functions of the root config, each reading the run folder and writing its own part of it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from embedtune.distributed import init_process_group_from_env, is_main, local_rank
from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path, read_rows, read_stage_table, write_json, write_parquet
from embedtune.manifest import MANIFEST, load_manifest
from embedtune.runs import RunFolder, skip, stage_of

PASSAGE_FILE_ROWS = 100_000


def prepare(cfg) -> dict:
    from transformers import AutoTokenizer

    from embedtune.assets import resolve_model
    from embedtune.corpus import chunk_documents, clean_documents, read_documents

    run = RunFolder(cfg)
    stage = stage_of(cfg, "prepare")
    if skip(stage, cfg.force):
        return load_manifest(run.passages)
    dropped: Counter = Counter()
    docs = clean_documents(read_documents(cfg.corpus, dropped), dropped)
    if not docs:
        raise EmbedtuneError(f"corpus '{cfg.corpus.name}' has no documents with text")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name).path)
    passages = chunk_documents(docs, tokenizer, cfg.corpus, dropped)
    if not passages:
        raise EmbedtuneError(f"corpus '{cfg.corpus.name}': every passage is shorter than corpus.min_chars")
    files = []
    for n, start in enumerate(range(0, len(passages), PASSAGE_FILE_ROWS)):
        files.append(f"part-{n:05d}.parquet")
        write_parquet(passages[start:start + PASSAGE_FILE_ROWS], run.passages / files[-1])
    extra = {}
    if cfg.corpus.format == "hpo":
        from embedtune.hpo import load_terms, write_beir

        release, terms = load_terms()
        # a corpus slice (corpus.max_documents) gets the matching slice of the labelled set
        extra["benchmark"] = write_beir(run.benchmarks / "hpo", terms[:cfg.corpus.max_documents], release)
    counts = {"documents": len(docs), "passages": len(passages), "dropped": dict(sorted(dropped.items()))}
    print(f"prepare: {len(docs):,} documents -> {len(passages):,} passages"
          + "".join(f"; {k.replace('_', ' ')} {v:,}" for k, v in sorted(dropped.items())))
    return stage.finish(counts, files=files, **extra)


def generate(cfg) -> dict | None:
    from embedtune.generate.runner import run_generate

    run = RunFolder(cfg)
    return run_generate(cfg.generator, run.passages, run.queries, load_manifest(run.passages), cfg.force)


def filter_and_split(cfg) -> dict:
    from embedtune.filter import filter_queries, split_of, split_pairs, write_splits
    from embedtune.generate.runner import read_queries
    from embedtune.model import passage_text
    from embedtune.query_report import EXTRACTION_STAGE, rates, reason_counts, write_query_report

    run = RunFolder(cfg)
    stage = stage_of(cfg, "filter")
    if skip(stage, cfg.force):
        return load_manifest(run.pairs)
    outputs = read_queries(run.queries)
    passages = _passages(run)
    texts = {p["id"]: passage_text(p["title"], p["text"]) for p in passages}
    doc_of = {p["id"]: f"{p['source']}\x00{p['doc_id']}" for p in passages}
    unknown = [q["passage_id"] for q in outputs if q["passage_id"] not in doc_of]
    if unknown:
        raise EmbedtuneError(f"{len(unknown)} queries name passages that are not in passages/ (e.g. {unknown[0]}): "
                             "rerun generate after prepare (force=true)")
    extraction: dict[str, list[dict]] = {}
    for q in outputs:
        if q["reason"]:
            extraction.setdefault(q["reason"], []).append(q)
    kept, dropped = filter_queries([q for q in outputs if not q["reason"]], cfg.filter, texts)
    if cfg.filter.roundtrip_top_k:
        # held-out test queries are not filtered by the base model: that would bias the base-vs-tuned test
        held_out = {q["query_id"] for q in kept if split_of(doc_of[q["passage_id"]], cfg.filter) == "test"}
        kept, dropped["roundtrip"] = roundtrip(cfg, run, kept, passages, texts, held_out)
    if cfg.filter.judge.enabled:
        from embedtune.judge import judge_queries

        scores = judge_queries(kept, texts, cfg.filter.judge)
        judged = [{**q, "judge_score": s} for q, s in zip(kept, scores)]
        kept = [q for q in judged if q["judge_score"] >= cfg.filter.judge.min_score]
        dropped["judge"] = [q for q in judged if q["judge_score"] < cfg.filter.judge.min_score]
    splits = split_pairs(kept, doc_of, cfg.filter)
    write_splits(splits, run.pairs)
    by_stage = {EXTRACTION_STAGE: dict(sorted(extraction.items())), "filter": dropped}
    train_ids = {q["query_id"] for q in splits["train"]}
    measured = rates(outputs, [q for q in kept if q["query_id"] in train_ids], texts, cfg.filter)
    report = write_query_report(run.queries, cfg.run_name, outputs, kept, train_ids, by_stage,
                                {p["id"]: p["title"] for p in passages}, measured, cfg.filter.seed)
    counts_out = {"generated": len(outputs), "kept": len(kept), "dropped": reason_counts(by_stage),
                  **{s: len(rows) for s, rows in splits.items()}}
    print(f"filter: kept {len(kept):,} of {len(outputs):,} outputs ({len(kept) / max(1, len(outputs)):.0%}); dropped "
          + ", ".join(f"{k} {v:,}" for k, v in counts_out["dropped"].items() if v) + "; "
          + ", ".join(f"{s} {len(r):,}" for s, r in splits.items()))
    print(f"filter: chatter in {measured['chatter_in_outputs']:.1%} of outputs, {measured['chatter_in_kept']:.1%} of "
          f"kept training queries; passage copies {measured['copies_in_outputs']:.1%} and "
          f"{measured['copies_in_kept']:.1%}; samples in {report}")
    if not splits["train"]:
        raise EmbedtuneError(f"filter: no training query survived ({len(outputs):,} outputs, {len(kept):,} kept, all "
                             f"held out or dropped); see why in {report}")
    return stage.finish(counts_out, files=[f"{s}.parquet" for s in splits], rates=measured, report=str(report))


def roundtrip(cfg, run: RunFolder, queries: list[dict], passages: list[dict], texts: dict[str, str],
              exempt: set[str]):
    """Queries whose own passage the base model ranks in the top `filter.roundtrip_top_k` (or whose id is in
    `exempt`), each with its rank; and the dropped ones."""
    import torch

    from embedtune.evaluate import autocast
    from embedtune.filter import roundtrip_ranks
    from embedtune.model import Encoder

    encoder = on_device(Encoder.load(cfg.model))
    cache = embedding_cache(run, base_fingerprint(cfg), cfg)
    with autocast(cfg.eval.precision):
        passage_emb = cache.encode(encoder, [texts[p["id"]] for p in passages], "passage", cfg.mining.batch_size,
                                   desc="filter: passages")
        query_emb = cache.encode(encoder, [q["text"] for q in queries], "query", cfg.mining.batch_size,
                                 desc="filter: queries")
    row_of = {p["id"]: n for n, p in enumerate(passages)}
    positives = torch.tensor([row_of[q["passage_id"]] for q in queries], dtype=torch.long)
    ranks = roundtrip_ranks(query_emb, passage_emb, positives) if queries else []
    ranked = [{**q, "roundtrip_rank": r} for q, r in zip(queries, ranks)]
    keep = [r["roundtrip_rank"] <= cfg.filter.roundtrip_top_k or r["query_id"] in exempt for r in ranked]
    return [r for r, k in zip(ranked, keep) if k], [r for r, k in zip(ranked, keep) if not k]


def _passages(run: RunFolder) -> list[dict]:
    return read_stage_table(run.passages, ["id", "doc_id", "title", "text", "source"]).to_pylist()


def mine(cfg) -> dict:
    from embedtune.evaluate import autocast
    from embedtune.mine import mine_hard_negatives
    from embedtune.model import Encoder, passage_text

    run = RunFolder(cfg)
    stage = stage_of(cfg, "mine")
    if skip(stage, cfg.force):
        return load_manifest(run.negatives)
    pairs = read_rows(run.pairs / "train.parquet")
    passages = _passages(run)
    several = init_process_group_from_env()  # under accelerate launch / torchrun: ranks split the encoding
    encoder = on_device(Encoder.load(cfg.model))
    cache = embedding_cache(run, base_fingerprint(cfg), cfg)
    with autocast(cfg.eval.precision):
        passage_emb = cache.encode(encoder, [passage_text(p["title"], p["text"]) for p in passages], "passage",
                                   cfg.mining.batch_size, desc="mine: passages")
        query_emb = cache.encode(encoder, [q["query"] for q in pairs], "query", cfg.mining.batch_size,
                                 desc="mine: queries")
    doc_of = {p["id"]: (p["source"], p["doc_id"]) for p in passages}
    held_out = frozenset(doc_of[q["passage_id"]] for split in ("dev", "test") if (run.pairs / f"{split}.parquet").exists()
                         for q in read_rows(run.pairs / f"{split}.parquet"))
    rows = mine_hard_negatives(pairs, passages, query_emb, passage_emb, cfg.mining, held_out)
    if several and not is_main():  # every rank mined the same rows; one writes them
        return {}
    write_parquet(rows, run.negatives / "train.parquet")
    n_neg = [len(r["negative_ids"]) for r in rows]
    short = sum(1 for n in n_neg if n < cfg.mining.num_negatives)
    counts = {"queries": len(rows), "negatives": sum(n_neg), "queries_without_negatives": n_neg.count(0),
              "queries_with_fewer_negatives": short}
    print(f"mine: {sum(n_neg):,} hard negatives for {len(rows):,} queries; {short:,} got fewer than "
          f"{cfg.mining.num_negatives} ({n_neg.count(0):,} none)")
    return stage.finish(counts, files=["train.parquet"])


def on_device(encoder):
    """The encoder on this process's GPU when there is one (encoding stages), else left on the CPU."""
    import torch

    if torch.cuda.is_available():
        return encoder.to(torch.device("cuda", local_rank() % torch.cuda.device_count()))
    return encoder


def embedding_cache(run: RunFolder, model_fingerprint: str, cfg):
    """The run's embedding cache for one model at eval.precision (shared by filter, mine and eval)."""
    from embedtune.encode import EmbeddingCache
    from embedtune.evaluate import cache_fingerprint

    return EmbeddingCache(run.cache, cache_fingerprint(model_fingerprint, cfg.eval.precision))


def base_fingerprint(cfg) -> str:
    from embedtune.manifest import fingerprint

    return "base:" + fingerprint(cfg.model)


def _dev_evaluator(cfg, run: RunFolder, passages: dict[str, str]):
    """evaluator(encoder) -> dev-split metrics, for train.eval_every (None when there is no dev split)."""
    from embedtune.beir import RetrievalSet
    from embedtune.evaluate import training_evaluator

    dev = read_rows(run.pairs / "dev.parquet") if (run.pairs / "dev.parquet").exists() else []
    if not cfg.train.eval_every or not dev:
        return None
    return training_evaluator(RetrievalSet("dev", passages, {q["query_id"]: q["query"] for q in dev},
                                           {q["query_id"]: {q["passage_id"]: 1} for q in dev}), cfg.eval)


def train(cfg) -> dict:
    from omegaconf import OmegaConf

    from embedtune.model import passage_text
    from embedtune.train import TrainData, run_training

    run = RunFolder(cfg)
    negatives, pairs = load_manifest(run.negatives), load_manifest(run.pairs)
    if negatives["inputs"].get("pairs") != pairs.get("run_id", pairs["key"]):
        raise EmbedtuneError(f"{run.negatives} was mined from older pairs than {run.pairs} (filter ran again "
                             "since): run `embedtune mine` first (or `embedtune run`, which reruns what is stale)")
    stage = stage_of(cfg, "train")
    if skip(stage, cfg.force):
        return load_manifest(run.checkpoints)
    rows = read_rows(run.negatives / "train.parquet")
    queries = {r["query_id"]: r["query"] for r in read_rows(run.pairs / "train.parquet")}
    passages = {p["id"]: passage_text(p["title"], p["text"]) for p in _passages(run)}
    data = TrainData(rows, queries, passages, cfg.train)
    config_dict = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    result = run_training(cfg.model, cfg.peft, cfg.loss, cfg.train, cfg.logger, data, run.checkpoints,
                          cfg.run_name, config_dict, key=stage.key,
                          evaluator=_dev_evaluator(cfg, run, passages))
    main = result.pop("main_process")
    if result["halted"]:
        if main:
            why = f"stopped by {result['stopped_by']}" if result["stopped_by"] else "halted"
            print(f"train: {why}; saved {result['final']} of {result['steps']} steps; the same command resumes it")
        return result
    del result["halted"], result["stopped_by"]
    if not main:  # one writer of the manifest
        return result
    print(f"train: {result['steps']} steps, {result['pairs']:,} pairs in {result['seconds']:.0f}s "
          f"({result['pairs_per_s']:.1f} pairs/s, {result['processes']} process(es)); "
          f"{result['pairs_dropped_per_epoch']} pair(s) per epoch left out to give every process as many")
    return stage.finish({"steps": result["steps"], "pairs": result["pairs"],
                         "pairs_dropped_per_epoch": result["pairs_dropped_per_epoch"]}, **result)


def final_encoder_dir(run: RunFolder) -> Path:
    manifest = load_manifest(run.checkpoints)
    return run.checkpoints / manifest["final"] / "encoder"


def _eval_sets(cfg, run: RunFolder) -> list:
    from embedtune.beir import RetrievalSet, read_beir

    sets = []
    if run.benchmarks.exists():
        for folder in sorted(p for p in run.benchmarks.iterdir() if p.is_dir()):
            sets.append(read_beir(folder, cfg.eval.builtin_split, f"{folder.name} ({cfg.eval.builtin_split}, human)"))
    for extra in cfg.eval.beir:
        sets.append(read_beir(Path(extra.path), extra.split, extra.name or Path(extra.path).name))
    if cfg.eval.synthetic:
        test = read_rows(run.pairs / "test.parquet")
        if test:
            from embedtune.model import passage_text

            corpus = {p["id"]: passage_text(p["title"], p["text"]) for p in _passages(run)}
            sets.append(RetrievalSet("synthetic (held-out)", corpus, {q["query_id"]: q["query"] for q in test},
                                     {q["query_id"]: {q["passage_id"]: 1} for q in test}))
    if not sets:
        raise EmbedtuneError("eval: nothing to evaluate on; set eval.beir or keep eval.synthetic=true")
    return sets


def evaluate(cfg) -> dict:
    from embedtune.evaluate import comparison_table, comparisons, evaluate_set, markdown_table, recall_table
    from embedtune.model import Encoder
    from embedtune.plots import plot_metrics, plot_recall, plot_training

    run = RunFolder(cfg)
    train_manifest = load_manifest(run.checkpoints)
    stage = stage_of(cfg, "eval")
    if skip(stage, cfg.force):
        return load_manifest(run.eval)
    sets = _eval_sets(cfg, run)
    several = init_process_group_from_env()  # under accelerate launch / torchrun: ranks split the encoding
    models = {"base": (lambda: on_device(Encoder.load(cfg.model)), base_fingerprint(cfg)),
              "tuned": (lambda: on_device(Encoder.load(cfg.model, path=str(final_encoder_dir(run)))),
                        "tuned:" + train_manifest["run_id"])}
    results: dict[str, dict] = {s.name: {} for s in sets}
    for label, (load, fp) in models.items():
        encoder, cache = load(), embedding_cache(run, fp, cfg)
        for s in sets:
            results[s.name][label] = evaluate_set(encoder, cache, s, cfg.eval, label)
    if cfg.eval.bm25:
        from embedtune.evaluate import evaluate_bm25

        for s in sets:
            results[s.name]["bm25"] = evaluate_bm25(s, cfg.eval)
    if several and not is_main():  # every rank has the same results; one writes the report
        return {}
    table = markdown_table(results)
    compared = comparisons(results)
    intervals = ("Paired bootstrap (queries resampled, 1,000 draws, seed 0) of the per-query nDCG@10 "
                 "differences:\n\n" + comparison_table(compared)) if compared else ""
    run.eval.mkdir(parents=True, exist_ok=True)
    plots = plot_metrics(results, run.eval / "metrics.png")
    plots += plot_recall(results, run.eval / "recall.png")
    plots += plot_training(run.checkpoints / "metrics.jsonl", run.eval / "training.png")
    queries_report = Path("..") / run.queries.name / "report.md"
    caveats = "".join(f"{s.name}: {s.missing_documents:,} judgements name documents absent from the corpus "
                      f"(no model can retrieve them; they lower recall).\n\n" for s in sets if s.missing_documents)
    report = (f"# embedtune eval: {cfg.run_name}\n\nBase model `{cfg.model.name}` vs tuned "
              f"(`{train_manifest['final']}`). Metrics by trec_eval (pytrec_eval), mean over queries. "
              f"The synthetic training queries, with samples: [{queries_report}]({queries_report}).\n\n"
              f"{caveats}{table}\n{intervals}\nRecall@k:\n\n{recall_table(results)}\n"
              + "".join(f"![{p}]({p})\n" for p in plots))
    with atomic_path(run.eval / "report.md") as tmp:
        tmp.write_text(report, encoding="utf-8")
    write_json({**results, "comparisons": compared}, run.eval / "report.json")
    print("\n" + table + ("\n" + comparison_table(compared) if compared else ""))
    counts = {name: next(iter(r.values()))["queries"] for name, r in results.items()}
    judged = {s.name: {"missing_documents": s.missing_documents, "unjudged_queries": s.unjudged_queries} for s in sets}
    return stage.finish(counts, table=table, plots=plots, sets=judged)


def export(cfg) -> dict:
    from embedtune.export import export_model
    from embedtune.model import passage_text

    run = RunFolder(cfg)
    stage = stage_of(cfg, "export")
    if skip(stage, cfg.force):
        return load_manifest(run.model)
    inputs = {"eval": load_manifest(run.eval)} if (run.eval / MANIFEST).exists() else {}
    sample = [passage_text(p["title"], p["text"]) for p in _passages(run)[:64]]
    card = model_card(cfg, run, inputs)
    result = export_model(final_encoder_dir(run), run.model, sample, cfg.export, card)
    onnx = f", ONNX {result['onnx_max_abs_diff']:.1e}" if 'onnx_max_abs_diff' in result else ''
    print(f"export: {run.model} (max |diff| vs trained encoder: sentence-transformers {result['max_abs_diff']:.1e}{onnx})")
    return stage.finish({"texts_checked": result["texts_checked"]}, **result)


def model_card(cfg, run: RunFolder, inputs: dict) -> str:
    pairs = load_manifest(run.pairs)
    table = inputs["eval"]["table"] if "eval" in inputs else "(no eval run before export)\n"
    return (f"---\nlibrary_name: sentence-transformers\npipeline_tag: sentence-similarity\n"
            f"tags: [embedtune, sentence-transformers, feature-extraction]\n---\n\n"
            f"# {cfg.run_name}: a {cfg.corpus.name} embedding model\n\n"
            f"Fine-tuned from `{cfg.model.name}` by embedtune on {pairs['counts']['train']:,} synthetic "
            f"query-passage pairs written by `{cfg.generator.model}` for the corpus `{cfg.corpus.name}` "
            f"({load_manifest(run.passages)['counts']['passages']:,} passages).\n\n"
            f"```python\nfrom sentence_transformers import SentenceTransformer\n"
            f"model = SentenceTransformer(\"path/to/this/folder\")\n"
            f"q = model.encode([\"...\"], prompt_name=\"query\")\np = model.encode([\"...\"], prompt_name=\"passage\")\n```\n\n"
            f"Queries and passages are read up to {cfg.model.passage_max_length} tokens "
            f"(training cut queries at {cfg.model.query_max_length}).\n\n"
            + ("ONNX: `onnx/sentence_embedding.onnx` takes `input_ids` and `attention_mask` (from this folder's "
               "tokenizer, with the query/passage prompt prepended) and returns the sentence embedding, pooling "
               "and normalisation included (onnxruntime parity checked at export).\n\n" if cfg.export.onnx else "")
            + f"## Evaluation\n\n{table}\n"
            f"## Training\n\nInfoNCE (temperature {cfg.loss.temperature}), batch {cfg.train.batch_size}, "
            f"{cfg.train.hard_negatives} hard negative(s) per query, lr {cfg.train.lr}, "
            f"{'LoRA r=%d' % cfg.peft.r if cfg.peft.enabled else 'full fine-tuning'}, "
            f"{'gradient caching (chunks of %d), ' % cfg.train.chunk_size if cfg.train.grad_cache else ''}"
            f"{load_manifest(run.checkpoints)['steps']} steps.\n")


STAGES = {"prepare": prepare, "generate": generate, "filter": filter_and_split, "mine": mine,
          "train": train, "eval": evaluate, "export": export}


def run_all(cfg) -> dict:
    """Every stage in order; a stage that is up to date is skipped (force=true reruns them all)."""
    times = {}
    for name, fn in STAGES.items():
        started = time.time()
        result = fn(cfg)
        times[name] = time.time() - started
        if name == "generate" and result is None:
            raise EmbedtuneError("generate: shards are missing (see above); run them, then `embedtune run` again")
        if name == "train" and result.get("halted") is not None:
            print("run: training stopped before its last step; `embedtune run` again resumes it")
            return times
    pairs = load_manifest(RunFolder(cfg).pairs)
    measured = pairs.get("rates", {})
    print(f"\nqueries: kept {pairs['counts']['kept']:,} of {pairs['counts']['generated']:,} outputs "
          f"({pairs['counts']['kept'] / max(1, pairs['counts']['generated']):.0%}); of the kept training queries "
          f"{measured.get('chatter_in_kept', 0):.1%} chatter, {measured.get('copies_in_kept', 0):.1%} passage copies "
          f"(samples: {RunFolder(cfg).queries / 'report.md'})")
    print("stage wall times: " + ", ".join(f"{n} {t:.0f}s" for n, t in times.items())
          + f" (total {sum(times.values()) / 60:.1f} min)")
    print(f"report: {RunFolder(cfg).eval / 'report.md'}   model: {RunFolder(cfg).model}")
    return times
