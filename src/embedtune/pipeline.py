"""The stages as functions of the root config: each reads the run folder, calls the module that does the
work, and writes its own part of the folder with its manifest. Orchestration only."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Optional

import pyarrow.parquet as pq

from embedtune.assets import resolve_model
from embedtune.baselines import baseline_cache, baseline_encoder, check_served_model, spend_line, spend_table
from embedtune.beir import RetrievalSet
from embedtune.config import Config
from embedtune.corpus_changes import Digests, compare, gone_passages, previous_digests
from embedtune.corpus import PASSAGES_SCHEMA, clean_documents, doc_key, iter_passages, read_documents
from embedtune.distributed import barrier, init_process_group_from_env, is_main
from embedtune.embedding_cache import embedding_cache, forget, text_keys
from embedtune.errors import EmbedtuneError
from embedtune.evaluate import (
    comparison_table,
    comparisons,
    eval_sets,
    regressions,
    evaluate_bm25,
    set_caveats,
    evaluate_set,
    training_evaluator,
    write_report,
)
from embedtune.export import export_model, model_card
from embedtune.folder_corpus import FileLedger
from embedtune.filter import (
    filter_queries,
    roundtrip_filter,
    split_of,
    split_pairs,
    write_splits,
)
from embedtune.generate.runner import read_queries, write_shard_and_merge
from embedtune.hf_dataset import write_pairs_dataset
from embedtune.hpo import load_terms, write_beir
from embedtune.judge import judge_queries
from embedtune.candidates import CandidateSearch, Kept, candidates_fingerprint, drop_others, folder_name, passage_contents
from embedtune.io import write_json, write_parquet_parts
from embedtune.manifest import MANIFEST, fingerprint, load_manifest
from embedtune.merge import describe as describe_merge
from embedtune.merge import check as check_merge
from embedtune.merge import merged_encoder
from embedtune.mine import PassageRows, held_out_documents, write_negatives
from embedtune.model import Encoder, base_fingerprint, on_device, passage_text
from embedtune.precision import autocast
from embedtune.query_report import (
    EXTRACTION_STAGE,
    rates,
    reason_counts,
    write_query_report,
)
from embedtune.runs import RunFolder, skip, stage_of
from embedtune.score import write_shard_and_merge as score_shard_and_merge
from embedtune.search import Searcher
from embedtune.train import TrainData, TrainJob, run_training
from embedtune.refresh import reuse_encoder, training_rows
from embedtune.version_history import gate_drops, gate_line, gate_of, history, record_export
from embedtune.versions import list_versions, version_folder

PASSAGE_FILE_ROWS = 100_000


def prepare(cfg: Config) -> dict:
    from transformers import AutoTokenizer

    run, stage = RunFolder(cfg), stage_of(cfg, "prepare")
    if skip(stage, cfg.force):
        return load_manifest(run.passages)
    dropped, documents = Counter(), Counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.model.name).path)

    def counted(docs):
        for doc in docs:
            documents["documents"] += 1
            yield doc
    ledger = FileLedger(run.passages / "files.jsonl") if cfg.corpus.format == "files" else None
    passages = iter_passages(counted(clean_documents(read_documents(cfg.corpus, dropped, ledger), dropped)),
                             tokenizer, cfg.corpus, dropped)
    previous = _read_manifest(run.passages)  # the passages as prepared last time: what changed since
    before = previous_digests(run.passages, previous)
    digests = Digests()
    passages = digests.watch(passages)
    # file names carry this run's tag: the previous run's files stay whole until the new manifest names others
    tag = fingerprint(stage.key, time.time_ns())[:8]
    files = list(write_parquet_parts(passages, run.passages, f"part-{tag}", PASSAGES_SCHEMA, PASSAGE_FILE_ROWS))
    if not documents["documents"]:
        raise EmbedtuneError(f"corpus '{cfg.corpus.name}' has no documents with text")
    if not files:
        raise EmbedtuneError(f"corpus '{cfg.corpus.name}': every passage is shorter than corpus.min_chars")
    extra = {}
    if cfg.corpus.format == "hpo":
        release, terms = load_terms()
        # a corpus slice (corpus.max_documents) gets the matching slice of the labelled set
        extra["benchmark"] = write_beir(run.benchmarks / "hpo", terms[:cfg.corpus.max_documents], release)
    n_passages = sum(pq.ParquetFile(run.passages / f).metadata.num_rows for f in files)
    changes = compare(before, digests.arrays())
    counts = {"documents": documents["documents"], "passages": n_passages, "dropped": dict(sorted(dropped.items()))}
    if ledger is not None:  # every file of a folder corpus: read, skipped (by reason) or failed
        ledger.close()
        counts["files"] = ledger.counts()
        print("\n".join(ledger.lines()))
    print(f"prepare: {documents['documents']:,} documents -> {n_passages:,} passages"
          + "".join(f"; {k.replace('_', ' ')} {v:,}" for k, v in sorted(dropped.items())))
    if before is not None:
        print(changes.line())
        if changes.none() and not cfg.force:  # the same passages: keep the earlier ones, so nothing after reruns
            for name in files:
                (run.passages / name).unlink()
            print("prepare: the passages stay as they were, and so does every stage after prepare")
            manifest = {**previous, "key": stage.key, "changes": changes.counts(),
                        "counts": {**previous["counts"], **({"files": counts["files"]} if ledger else {})}}
            write_json(manifest, run.passages / MANIFEST)
            return manifest
    if changes.removed or changes.changed:  # their texts' vectors leave the caches (never a result again)
        gone = gone_passages(run.passages, previous["files"], digests.arrays()[1])
        dropped_vectors = forget(run.cache, text_keys([passage_text(p["title"], p["text"]) for p in gone], "passage"))
        print(f"prepare: {len(gone):,} passage texts are gone; {dropped_vectors:,} cached vectors of them deleted")
    manifest = stage.finish(counts, files=files, changes=changes.counts(), **extra)
    for old in run.passages.glob("part-*.parquet"):  # files of earlier runs, named by no manifest now
        if old.name not in files:
            old.unlink()
    return manifest


def _read_manifest(folder: Path) -> Optional[dict]:
    try:
        return load_manifest(folder)
    except (EmbedtuneError, OSError, ValueError):
        return None


def generate(cfg: Config) -> Optional[dict]:
    """This worker's shard; the manifest once every shard is there (None while some are missing)."""
    run, stage = RunFolder(cfg), stage_of(cfg, "generate")
    if skip(stage, cfg.force):
        return load_manifest(run.queries)
    return write_shard_and_merge(cfg.generator, stage, run.passages, cfg.force, run.generations)


def filter_and_split(cfg: Config) -> dict:
    run, stage = RunFolder(cfg), stage_of(cfg, "filter")
    if skip(stage, cfg.force):
        return load_manifest(run.pairs)
    outputs, table = read_queries(run.queries), run.passage_table()
    corpus_texts = run.passage_texts(table)
    named = sorted({q["passage_id"] for q in outputs})  # only the passages that have queries, not the corpus
    rows = table.rows_of(named, missing_ok=True)
    if (rows < 0).any():
        unknown = [pid for pid, r in zip(named, rows) if r < 0]
        raise EmbedtuneError(f"{len(unknown)} queries name passages that are not in passages/ (e.g. {unknown[0]}): "
                             "rerun generate after prepare (force=true)")
    found = table.take(rows, ["id", "title", "text", "source", "doc_id"]).to_pylist()
    texts = {p["id"]: passage_text(p["title"], p["text"]) for p in found}
    doc_of = {p["id"]: doc_key(p["source"], p["doc_id"]) for p in found}
    extraction: dict[str, list[dict]] = {}
    for q in outputs:
        if q["reason"]:
            extraction.setdefault(q["reason"], []).append(q)
    kept, dropped = filter_queries([q for q in outputs if not q["reason"]], cfg.filter, texts)
    if cfg.filter.roundtrip_top_k:
        # held-out test queries are not filtered by the base model: that would bias the base-vs-tuned test
        held_out = {q["query_id"] for q in kept if split_of(doc_of[q["passage_id"]], cfg.filter) == "test"}
        cache = embedding_cache(run.cache, base_fingerprint(cfg.model), cfg.eval.precision)
        kept, dropped["roundtrip"] = roundtrip_filter(kept, table, corpus_texts, held_out, cfg.model,
                                                      cfg.filter.roundtrip_top_k, cache, cfg.eval.precision,
                                                      cfg.mining.batch_size)
    if cfg.filter.judge.enabled:
        judged = [{**q, "judge_score": s} for q, s in zip(kept, judge_queries(kept, texts, cfg.filter.judge))]
        kept = [q for q in judged if q["judge_score"] >= cfg.filter.judge.min_score]
        dropped["judge"] = [q for q in judged if q["judge_score"] < cfg.filter.judge.min_score]
    splits = split_pairs(kept, doc_of, cfg.filter)
    by_stage = {EXTRACTION_STAGE: dict(sorted(extraction.items())), "filter": dropped}
    train_ids = {q["query_id"] for q in splits["train"]}
    measured = rates(outputs, [q for q in kept if q["query_id"] in train_ids], texts, cfg.filter)
    report = write_query_report(run.queries, cfg.run_name, outputs, kept, train_ids, by_stage,
                                {p["id"]: p["title"] for p in found}, measured, cfg.filter.seed)
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
    write_splits(splits, run.pairs)
    return stage.finish(counts_out, files=[f"{s}.parquet" for s in splits], rates=measured, report=str(report))


def mine(cfg: Config) -> dict:
    run, stage = RunFolder(cfg), stage_of(cfg, "mine")
    if skip(stage, cfg.force):
        return load_manifest(run.negatives)
    passages, pairs = run.passage_table(), run.pairs_table("train")
    several = init_process_group_from_env()  # under accelerate launch / torchrun: ranks split encoding and search
    encoder = on_device(Encoder.load(cfg.model, precision=cfg.eval.precision))
    cache = embedding_cache(run.cache, base_fingerprint(cfg.model), cfg.eval.precision)
    with autocast(cfg.eval.precision):
        passage_vectors = cache.encode_corpus(encoder, run.passage_texts(passages), "passage", cfg.mining.batch_size,
                                              desc="mine: passages")
        query_vectors = cache.encode_corpus(encoder, run.query_texts("train", pairs), "query", cfg.mining.batch_size,
                                            desc="mine: queries")
    held_out = {doc for split in ("dev", "test") for doc in held_out_documents(passages, run.read_pairs(split))}
    rows = PassageRows.of_table(passages)
    allowed = rows.allowed(held_out)
    searcher = Searcher(passage_vectors, cfg.mining, allowed, index_folder=cache.folder / "index" / passages.folder.name)
    recall = searcher.recall(query_vectors, cfg.mining.top_k + 1) if is_main() else None  # before any file changes
    kept_as = candidates_fingerprint(base_fingerprint(cfg.model), cfg.eval.precision, cfg.mining, cfg.mining.top_k + 1)
    previous = _read_manifest(run.negatives)
    kept, kept_in = Kept.load(run.negatives, previous, kept_as), folder_name(stage.key, previous)
    search = CandidateSearch(searcher, passage_vectors, passage_contents(passages), allowed, kept)
    counts = write_negatives(pairs, query_vectors, rows, passage_vectors, cfg.mining, search,
                             run.negatives / "train.parquet", run.negatives / kept_in)
    if several and not is_main():  # rank 0 joined every rank's rows and writes the manifest
        barrier()  # ... which every rank waits for: the next stage reads it
        return {}
    print(f"mine: {counts['negatives']:,} hard negatives for {counts['queries']:,} queries by {searcher.describe()}; "
          f"{counts['queries_with_fewer_negatives']:,} got fewer than {cfg.mining.num_negatives} "
          f"({counts['queries_without_negatives']:,} none)")
    if kept is not None:
        print(f"mine: {counts['queries_updated']:,} queries answered from the last mining plus a search of "
              f"{counts['passages_new_to_search']:,} new or changed passages; {counts['queries_searched_in_full']:,} "
              f"searched in full (new, or a kept candidate is gone)")
    if recall:
        print(f"mine: {recall['index']}: recall@{recall['k']} {recall['recall']:.3f} against exact search on "
              f"{recall['sample']:,} sampled queries")
    manifest = stage.finish(counts, files=["train.parquet"], search=recall or {"index": searcher.describe()},
                            candidates={"fingerprint": kept_as, "folder": kept_in})
    drop_others(run.negatives, kept_in)
    if several:
        barrier()
    return manifest


def score(cfg: Config) -> Optional[dict]:
    """A teacher's scores for the mined pairs (this worker's shard; merged once every shard is there).
    Off (None, nothing written) with teacher.kind=none."""
    if not cfg.teacher.enabled:
        print("score: off (teacher.kind=none)")
        return None
    run, stage = RunFolder(cfg), stage_of(cfg, "score")
    if skip(stage, cfg.force):
        return load_manifest(run.scores)
    queries, passages = run.query_texts("train"), run.passage_texts()
    return score_shard_and_merge(cfg.teacher, stage, run.negatives / "train.parquet", queries, passages, cfg.force,
                                 run.teacher_scores)


def train(cfg: Config) -> dict:
    run = RunFolder(cfg)
    negatives, pairs = load_manifest(run.negatives), load_manifest(run.pairs)
    if cfg.teacher.enabled:
        scores = run.scores / MANIFEST
        if not scores.exists() or not stage_of(cfg, "score").is_done():  # another teacher, or older negatives
            raise EmbedtuneError(f"{run.scores}: no scores of this teacher (teacher.kind={cfg.teacher.kind}) for the "
                                 "current negatives: run `embedtune score` first (or `embedtune run`)")
    if negatives["inputs"].get("pairs") != pairs.get("run_id", pairs["key"]):
        raise EmbedtuneError(f"{run.negatives} was mined from older pairs than {run.pairs} (filter ran again "
                             "since): run `embedtune mine` first (or `embedtune run`, which reruns what is stale)")
    stage = stage_of(cfg, "train")
    if skip(stage, cfg.force):
        return load_manifest(run.checkpoints)
    passages, job = run.passage_texts(), TrainJob.of(cfg)
    rows, refreshed = training_rows(run, cfg, job)  # a refresh (train.init=previous): what changed + replay
    if refreshed is not None and not rows:  # nothing new to learn: that version's weights stay (and stored vectors)
        if not is_main():  # under a launcher: one process copies them and writes the manifest
            return {"final": "step-0", "steps": 0, "pairs": 0}
        print(f"train: nothing new to learn; the model stays version {refreshed['version']}'s weights")
        return stage.finish({"steps": 0, "pairs": 0}, final=reuse_encoder(Path(job.init_from), run.checkpoints),
                            steps=0, pairs=0, refresh=refreshed)
    data = TrainData(rows, run.query_texts("train"), passages, cfg.train)
    dev = run.read_pairs("dev")
    evaluator = training_evaluator(RetrievalSet("dev", passages, {q["query_id"]: q["query"] for q in dev},
                                                {q["query_id"]: {q["passage_id"]: 1} for q in dev}),
                                   cfg.eval) if cfg.train.eval_every and dev else None
    result = run_training(job, data, run.checkpoints, stage.key, evaluator)
    if result.halted:
        if result.main_process:
            why = "halted" if result.stop_reason == "halt_at_step" else f"stopped by {result.stop_reason}"
            print(f"train: {why}; saved {result.final} of {result.steps} steps; the same command resumes it")
        return result.manifest()
    if not result.main_process:  # one writer of the manifest
        return result.manifest()
    print(f"train: {result.steps} steps, {result.pairs:,} pairs in {result.seconds:.0f}s "
          f"({result.pairs_per_s:.1f} pairs/s, {result.processes} process(es)); "
          f"{result.pairs_dropped_per_epoch} pair(s) per epoch left out to give every process as many")
    return stage.finish({"steps": result.steps, "pairs": result.pairs,
                         "pairs_dropped_per_epoch": result.pairs_dropped_per_epoch}, **result.manifest(),
                        **({"refresh": refreshed} if refreshed else {}))


def evaluate(cfg: Config) -> dict:
    run, train_manifest = RunFolder(cfg), load_manifest(RunFolder(cfg).checkpoints)
    stage = stage_of(cfg, "eval")
    if skip(stage, cfg.force):
        return load_manifest(run.eval)
    sets = eval_sets(cfg.eval, run.benchmarks, run.read_pairs("test"), run.passage_texts())
    several = init_process_group_from_env()  # under accelerate launch / torchrun: ranks split the encoding
    models = {"base": (lambda: Encoder.load(cfg.model, precision=cfg.eval.precision), base_fingerprint(cfg.model)),
              "tuned": (lambda: Encoder.load(cfg.model, path=str(run.final_encoder()), precision=cfg.eval.precision),
                        "tuned:" + train_manifest["run_id"])}
    previous = run.compared_version()
    if previous is not None:  # the gate: the promoted version, on the same sets
        folder = version_folder(run.root, previous) / "encoder"
        models["previous"] = (lambda: Encoder.load(cfg.model, path=str(folder), precision=cfg.eval.precision),
                              previous.get("vectors") or "version:" + previous["weights"])  # its eval's vectors
    merge_info = None
    if cfg.export.merge_alpha is not None:  # merging is built (and its alpha chosen) before any rank reads it
        check_merge(cfg, run)
        if several and not is_main():
            barrier()  # rank 0 builds it; then every rank finds it built
        merged_dir, merge_info = merged_encoder(cfg, run)
        if several and is_main():
            barrier()
        models["merged"] = (lambda: Encoder.load(cfg.model, path=str(merged_dir), precision=cfg.eval.precision),
                            "merged:" + merge_info["key"])
    results: dict[str, dict] = {s.name: {} for s in sets}
    for label, (load, model_fp) in models.items():
        encoder, cache = on_device(load()), embedding_cache(run.cache, model_fp, cfg.eval.precision)
        for s in sets:
            results[s.name][label] = evaluate_set(encoder, cache, s, cfg.eval, label)
    if cfg.eval.bm25:
        for s in sets:
            results[s.name]["bm25"] = evaluate_bm25(s, cfg.eval)
    spend = []
    for baseline in cfg.eval.baselines:  # models users already have: same sets, same metrics, vectors cached
        encoder, cache = baseline_encoder(baseline), baseline_cache(run.cache, baseline)
        for s in sets:
            results[s.name][baseline.name] = evaluate_set(encoder, cache, s, cfg.eval, baseline.name)
        check_served_model(baseline, cache, encoder)
        spend.append(spend_line(baseline, encoder))
    if several and not is_main():  # every rank has the same results; one writes the report
        return {}
    queries_report = f"../{run.queries.name}/report.md"
    heading = (f"# embedtune eval: {cfg.run_name}\n\nBase model `{cfg.model.name}` vs tuned "
               f"(`{train_manifest['final']}`). Metrics by trec_eval (pytrec_eval), mean over queries. "
               f"The synthetic training queries, with samples: [{queries_report}]({queries_report}).")
    if merge_info:
        heading += " " + describe_merge(merge_info)
    gate, exported = None, "merged" if merge_info else "tuned"
    compared = comparisons(results)
    if previous is not None:
        heading += f" previous = version {previous['version']} (`{previous['weights']}`), the promoted model."
        gate = {"previous": previous["version"], "weights": previous["weights"], "row": exported,
                "drops": gate_drops(compared, list(results), exported)}
    candidate = {name: r[exported]["nDCG@10"] for name, r in results.items()}
    table, plots, verdict = write_report(
        run.eval, heading, results, sets, run.checkpoints / "metrics.jsonl", compared, spend,
        gate_line(gate) if gate else None, history(list_versions(run.root), candidate, run.eval))
    print("\n" + table + ("\n" + comparison_table(compared) if compared else "")
          + ("\n" + spend_table(spend) if spend else "") + "".join(f"\neval: {line}" for line in verdict))
    warned = regressions(compared)
    for line in warned:
        print(f"eval: warning: {line}")
    for line in set_caveats(sets):
        print(f"eval: {line}")
    counts = {name: next(iter(r.values()))["queries"] for name, r in results.items()}
    judged = {s.name: {"missing_documents": s.missing_documents, "unjudged_queries": s.unjudged_queries} for s in sets}
    extra = {"merge": {k: merge_info[k] for k in ("alpha", "setting", "grid")}} if merge_info else {}
    extra.update({"gate": gate} if gate else {})
    return stage.finish(counts, table=table, plots=plots, sets=judged, regressions=warned, baselines_spend=spend,
                        **extra)


def export(cfg: Config) -> dict:
    run, stage = RunFolder(cfg), stage_of(cfg, "export")
    if skip(stage, cfg.force):
        return load_manifest(run.model)
    eval_table = load_manifest(run.eval)["table"] if (run.eval / MANIFEST).exists() else None
    sample = run.passage_texts().at(0, 64)
    card = model_card(cfg, load_manifest(run.pairs), load_manifest(run.passages), load_manifest(run.checkpoints),
                      eval_table)
    if cfg.export.merge_alpha is not None:
        source, info = merged_encoder(cfg, run)
        vectors = "merged:" + info["key"]  # what eval cached this model's vectors under
    else:
        source, vectors = run.final_encoder(), "tuned:" + load_manifest(run.checkpoints)["run_id"]
    gate = gate_of(run)
    promote = not (gate and gate["drops"]) or cfg.export.promote == "always"
    target = run.model if promote else run.root / "candidate"  # kept out of model/ by the gate
    result = export_model(source, target, sample, cfg.export, card)
    if cfg.export.dataset:
        described = (f"Made by embedtune from the corpus `{cfg.corpus.name}` ({cfg.corpus.domain}): queries written by "
                     f"`{cfg.generator.model}`, hard negatives mined with `{cfg.model.name}`.")
        result.update(write_pairs_dataset(run.training_table(cfg).table, run.query_texts("train"), run.passage_texts(),
                                          run.dataset, cfg.run_name, described))
        print(f"export: {run.dataset} ({result['dataset_rows']:,} training pairs as a Hugging Face dataset)")
    onnx = f", ONNX {result['onnx_max_abs_diff']:.1e}" if 'onnx_max_abs_diff' in result else ''
    print(f"export: {target} (max |diff| vs trained encoder: sentence-transformers {result['max_abs_diff']:.1e}{onnx})")
    if is_main():  # the version, promoted or held back by the gate; status reads model/'s id in the manifest
        result.update(record_export(run, target, source, vectors, gate, promote))
    return stage.finish({"texts_checked": result["texts_checked"]}, **result)


STAGES = {"prepare": prepare, "generate": generate, "filter": filter_and_split, "mine": mine, "score": score,
          "train": train, "eval": evaluate, "export": export}


def run_all(cfg: Config) -> dict:
    """Every stage in order; a stage that is up to date is skipped (force=true reruns them all)."""
    times = {}
    for name, fn in STAGES.items():
        started = time.time()
        result = fn(cfg)
        times[name] = time.time() - started
        if name in ("generate", "score") and result is None and (name == "generate" or cfg.teacher.enabled):
            raise EmbedtuneError(f"{name}: shards are missing (see above); run them, then `embedtune run` again")
        if name == "train" and result.get("halted"):
            print("run: training stopped before its last step; `embedtune run` again resumes it")
            return times
    run = RunFolder(cfg)
    pairs = load_manifest(run.pairs)
    measured = pairs.get("rates", {})
    print(f"\nqueries: kept {pairs['counts']['kept']:,} of {pairs['counts']['generated']:,} outputs "
          f"({pairs['counts']['kept'] / max(1, pairs['counts']['generated']):.0%}); of the kept training queries "
          f"{measured.get('chatter_in_kept', 0):.1%} chatter, {measured.get('copies_in_kept', 0):.1%} passage copies "
          f"(samples: {run.queries / 'report.md'})")
    print("stage wall times: " + ", ".join(f"{n} {t:.0f}s" for n, t in times.items())
          + f" (total {sum(times.values()) / 60:.1f} min)")
    print(f"report: {run.eval / 'report.md'}   model: {run.model}")
    for line in load_manifest(run.eval).get("regressions", []):  # last, where nobody misses it
        print(f"embedtune run: warning: {line}")
    return times
