"""The stages as functions of the root config: each reads the run folder, calls the module that does the
work, and writes its own part of the folder with its manifest. Orchestration only."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from embedtune.beir import RetrievalSet
from embedtune.candidates import CandidateSearch, Kept, candidates_fingerprint, drop_others, folder_name, passage_contents
from embedtune.config import Config
from embedtune.corpus import doc_key
from embedtune.distributed import barrier, init_process_group_from_env, is_main
from embedtune.embedding_cache import embedding_cache
from embedtune.errors import EmbedtuneError
from embedtune.eval_models import eval_summary, models_to_score, report_heading, score_models
from embedtune.evaluate import comparisons, eval_sets, training_evaluator, write_report
from embedtune.export import export_model
from embedtune.filter import filter_queries, roundtrip_filter, split_of, split_pairs, write_splits
from embedtune.generate.runner import read_queries, write_shard_and_merge
from embedtune.hf_dataset import write_pairs_dataset
from embedtune.judge import judge_filter
from embedtune.manifest import MANIFEST, load_manifest, read_manifest
from embedtune.merge import merged_encoder
from embedtune.mine import PassageRows, held_out_documents, mining_summary, write_negatives
from embedtune.model import Encoder, base_fingerprint, on_device, passage_text
from embedtune.model_card import dataset_description, model_card
from embedtune.passages import prepare_passages
from embedtune.precision import autocast
from embedtune.query_report import (EXTRACTION_STAGE, extraction_reasons, filter_summary, rates, reason_counts,
                                    write_query_report)
from embedtune.refresh import reuse_encoder, training_rows
from embedtune.runs import RunFolder, run_summary, skip, stage_of
from embedtune.score import write_shard_and_merge as score_shard_and_merge
from embedtune.search import Searcher
from embedtune.train import TrainData, TrainJob, run_training
from embedtune.version_history import gate_drops, gate_line, gate_of, history, record_export
from embedtune.versions import list_versions


def prepare(cfg: Config) -> dict:
    run, stage = RunFolder(cfg), stage_of(cfg, "prepare")
    if skip(stage, cfg.force):
        return load_manifest(run.passages)
    return prepare_passages(cfg.corpus, cfg.model.name, run, stage, cfg.force)


def train_job(cfg: Config) -> TrainJob:
    """The sections training reads, from the root config."""
    return TrainJob(cfg.model, cfg.peft, cfg.loss, cfg.train, cfg.logger, cfg.run_name)


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
    found = run.passages_named({q["passage_id"] for q in outputs}, table)  # only passages with queries
    texts = {p["id"]: passage_text(p["title"], p["text"]) for p in found}
    doc_of = {p["id"]: doc_key(p["source"], p["doc_id"]) for p in found}
    kept, dropped = filter_queries([q for q in outputs if not q["reason"]], cfg.filter, texts)
    if cfg.filter.roundtrip_top_k:
        # held-out test queries are not filtered by the base model: that would bias the base-vs-tuned test
        held_out = {q["query_id"] for q in kept if split_of(doc_of[q["passage_id"]], cfg.filter) == "test"}
        cache = embedding_cache(run.cache, base_fingerprint(cfg.model), cfg.eval.precision)
        kept, dropped["roundtrip"] = roundtrip_filter(kept, table, run.passage_texts(table), held_out, cfg.model,
                                                      cfg.filter, cache, cfg.eval.precision,
                                                      cfg.mining.batch_size)
    if cfg.filter.judge.enabled:
        kept, dropped["judge"] = judge_filter(kept, texts, cfg.filter.judge)
    splits = split_pairs(kept, doc_of, cfg.filter)
    by_stage = {EXTRACTION_STAGE: extraction_reasons(outputs), "filter": dropped}
    train_ids = {q["query_id"] for q in splits["train"]}
    measured = rates(outputs, [q for q in kept if q["query_id"] in train_ids], texts, cfg.filter)
    report = write_query_report(run.queries, cfg.run_name, outputs, kept, train_ids, by_stage,
                                {p["id"]: p["title"] for p in found}, measured, cfg.filter.seed)
    counts_out = {"generated": len(outputs), "kept": len(kept), "dropped": reason_counts(by_stage),
                  **{s: len(rows) for s, rows in splits.items()}}
    print(filter_summary(outputs, kept, splits, counts_out["dropped"], measured, report))
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
    previous = read_manifest(run.negatives)
    kept, kept_in = Kept.load(run.negatives, previous, kept_as), folder_name(stage.key, previous)
    search = CandidateSearch(searcher, passage_vectors, passage_contents(passages), allowed, kept)
    counts = write_negatives(pairs, query_vectors, rows, passage_vectors, cfg.mining, search,
                             run.negatives / "train.parquet", run.negatives / kept_in)
    if several and not is_main():  # rank 0 joined every rank's rows and writes the manifest
        barrier()  # ... which every rank waits for: the next stage reads it
        return {}
    print(mining_summary(counts, searcher.describe(), cfg.mining.num_negatives, kept is not None, recall))
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
    passages, job = run.passage_texts(), train_job(cfg)
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
    if result.main_process:
        print(result.line())
    if result.halted or not result.main_process:  # one writer of the manifest, once every step is done
        return result.manifest()
    return stage.finish({"steps": result.steps, "pairs": result.pairs,
                         "pairs_dropped_per_epoch": result.pairs_dropped_per_epoch}, **result.manifest(),
                        **({"refresh": refreshed} if refreshed else {}))


def evaluate(cfg: Config) -> dict:
    run, stage = RunFolder(cfg), stage_of(cfg, "eval")
    if skip(stage, cfg.force):
        return load_manifest(run.eval)
    sets = eval_sets(cfg.eval, run.benchmarks, run.read_pairs("test"), run.passage_texts())
    several = init_process_group_from_env()  # under accelerate launch / torchrun: ranks split the encoding
    models, merge_info, previous = models_to_score(cfg, run, several)
    results, spend = score_models(models, sets, cfg.eval, run.cache)
    if several and not is_main():  # every rank has the same results; one writes the report
        return {}
    heading, gate = report_heading(cfg, run, merge_info, previous), None
    exported, compared = "merged" if merge_info else "tuned", comparisons(results)
    if previous is not None:
        gate = {"previous": previous["version"], "weights": previous["weights"], "row": exported,
                "drops": gate_drops(compared, list(results), exported)}
    candidate = {name: r[exported]["nDCG@10"] for name, r in results.items()}
    table, plots, verdict = write_report(
        run.eval, heading, results, sets, run.checkpoints / "metrics.jsonl", compared, spend,
        gate_line(gate) if gate else None, history(list_versions(run.root), candidate, run.eval))
    printed, warned = eval_summary(table, compared, spend, verdict, sets)
    print(printed)
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
        result.update(write_pairs_dataset(run.training_table(cfg).table, run.query_texts("train"), run.passage_texts(),
                                          run.dataset, cfg.run_name, dataset_description(cfg)))
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
    print("\n".join(run_summary(RunFolder(cfg), times)))
    return times
