"""prepare's work: the corpus read, cleaned and chunked into passages/ part files named for this run; compared with
the passages prepared last time (new, changed, removed); the cached vectors of texts that are gone deleted; the
part files of earlier runs removed once the new manifest names others. A corpus whose passages all came out as
they were keeps the earlier files and stage id, so nothing after prepare reruns."""

from __future__ import annotations

import time
from collections import Counter
from typing import Optional

import pyarrow.parquet as pq

from embedtune.assets import resolve_model
from embedtune.corpus import PASSAGES_SCHEMA, CorpusConfig, clean_documents, iter_passages, read_documents
from embedtune.corpus_changes import Digests, compare, gone_passages, previous_digests
from embedtune.embedding_cache import forget, text_keys
from embedtune.errors import EmbedtuneError
from embedtune.folder_corpus import FileLedger
from embedtune.hpo import load_terms, write_beir
from embedtune.io import write_json, write_parquet_parts
from embedtune.manifest import MANIFEST, Stage, fingerprint, read_manifest
from embedtune.model import passage_text
from embedtune.runs import RunFolder

PASSAGE_FILE_ROWS = 100_000


def prepare_passages(corpus: CorpusConfig, model_name: str, run: RunFolder, stage: Stage, force: bool) -> dict:
    """Write passages/ and its manifest (or keep the earlier one where nothing changed); the manifest."""
    from transformers import AutoTokenizer

    dropped, documents = Counter(), Counter()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model_name).path)

    def counted(docs):
        for doc in docs:
            documents["documents"] += 1
            yield doc
    ledger = FileLedger(run.passages / "files.jsonl") if corpus.format == "files" else None
    passages = iter_passages(counted(clean_documents(read_documents(corpus, dropped, ledger), dropped)),
                             tokenizer, corpus, dropped)
    previous = read_manifest(run.passages)  # the passages as prepared last time: what changed since
    before = previous_digests(run.passages, previous)
    digests = Digests()
    # file names carry this run's tag: the previous run's files stay whole until the new manifest names others
    tag = fingerprint(stage.key, time.time_ns())[:8]
    files = list(write_parquet_parts(digests.watch(passages), run.passages, f"part-{tag}", PASSAGES_SCHEMA,
                                     PASSAGE_FILE_ROWS))
    if not documents["documents"]:
        raise EmbedtuneError(f"corpus '{corpus.name}' has no documents with text")
    if not files:
        raise EmbedtuneError(f"corpus '{corpus.name}': every passage is shorter than corpus.min_chars")
    extra = {}
    if corpus.format == "hpo":
        release, terms = load_terms()
        # a corpus slice (corpus.max_documents) gets the matching slice of the labelled set
        extra["benchmark"] = write_beir(run.benchmarks / "hpo", terms[:corpus.max_documents], release)
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
        if changes.none() and not force:  # the same passages: keep the earlier ones, so nothing after reruns
            return _keep_previous(run, previous, files, stage.key, changes.counts(), counts.get("files"))
    if changes.removed or changes.changed:  # their texts' vectors leave the caches (never a result again)
        gone = gone_passages(run.passages, previous["files"], digests.arrays()[1])
        dropped_vectors = forget(run.cache, text_keys([passage_text(p["title"], p["text"]) for p in gone], "passage"))
        print(f"prepare: {len(gone):,} passage texts are gone; {dropped_vectors:,} cached vectors of them deleted")
    manifest = stage.finish(counts, files=files, changes=changes.counts(), **extra)
    for old in run.passages.glob("part-*.parquet"):  # files of earlier runs, named by no manifest now
        if old.name not in files:
            old.unlink()
    return manifest


def _keep_previous(run: RunFolder, previous: dict, files: list[str], key: str, changes: dict,
                   file_counts: Optional[dict]) -> dict:
    for name in files:
        (run.passages / name).unlink()
    print("prepare: the passages stay as they were, and so does every stage after prepare")
    manifest = {**previous, "key": key, "changes": changes,
                "counts": {**previous["counts"], **({"files": file_counts} if file_counts is not None else {})}}
    write_json(manifest, run.passages / MANIFEST)
    return manifest
