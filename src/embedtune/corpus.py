"""prepare: read a corpus, clean it, chunk it into token-bounded passages with stable ids, drop duplicates."""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import pyarrow as pa
from tqdm import tqdm

from embedtune.documents import Document, field_text, record_document
from embedtune.errors import EmbedtuneError
from embedtune.folder_corpus import DOCUMENT_SUFFIXES, FileLedger, FolderReading, read_files, walk
from embedtune.hf_dataset import hf_records
from embedtune.hpo import load_terms
from embedtune.io import iter_jsonl
from embedtune.store import DigestSet, hash64
from embedtune.text_units import display_width

PASSAGES_SCHEMA = pa.schema([("id", pa.string()), ("doc_id", pa.string()), ("title", pa.string()),
                             ("text", pa.string()), ("source", pa.string()), ("n_tokens", pa.int64())])
CHUNK_BATCH = 256   # documents tokenized and chunked at once
ID_BATCH = 4096     # records whose ids are checked for repeats at once


@dataclass
class CorpusConfig:
    name: str = "hpo"                 # label used in reports and model cards
    format: str = "hpo"               # hpo | files | jsonl | parquet | beir | hf (anything datasets.load_dataset opens)
    domain: str = "this subject"      # what the corpus is about, in a few words (fills the generator prompt)
    language: str = "en"              # the corpus's language (ISO 639-1): prompts, examples and BM25 in it (en de fr es zh ja)
    path: Optional[str] = None        # folder (files) or file (jsonl, parquet, beir corpus.jsonl); hf: a hub id, a
                                      # dataset folder, save_to_disk output, or Parquet/JSON files (globs too)
    subset: Optional[str] = None      # hf: the dataset's configuration name, if it has several
    split: str = "train"              # hf: the split to read
    streaming: bool = False           # hf: iterate the records without converting the dataset first (any size)
    text_field: str = "text"          # JSONL/Parquet field with the document text
    title_field: Optional[str] = "title"  # JSONL/Parquet field with a title (null: none)
    id_field: Optional[str] = None    # JSONL/Parquet field with a document id (null: the record's position)
    list_separator: Optional[str] = None  # a text or title field that is a list of strings is joined with this (null: an error)
    duplicate_ids: str = "error"      # a repeated id: error (name both records) | keep_first | suffix (id#2, id#3)
    chunk_tokens: int = 200           # passage length bound in base-model tokens (title not counted)
    chunk_overlap: int = 32           # tokens shared by consecutive chunks of one document
    min_chars: int = 20               # passages shorter than this after cleaning are dropped (a CJK character counts 2)
    max_documents: Optional[int] = None  # read only the first N documents (debugging, tiny runs)
    extensions: list[str] = field(default_factory=lambda: list(DOCUMENT_SUFFIXES))  # files read (add .csv/.tsv/.json/.jsonl: rows as documents)
    follow_symlinks: bool = False     # files: read symbolically linked files and folders (else listed as skipped)
    max_file_mb: float = 100.0        # files: larger files are listed as skipped (size)


@functools.cache
def _invisible() -> tuple[re.Pattern, re.Pattern]:
    """Control characters (Unicode Cc, become spaces) and format characters (Cf: zero-width, BOM, ...)."""
    def char_class(category: str) -> re.Pattern:
        chars = (chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) == category)
        return re.compile("[" + "".join(re.escape(c) for c in chars) + "]")
    return char_class("Cc"), char_class("Cf")


def clean_text(text: str) -> str:
    """NFKC, no control or format (zero-width) characters, runs of whitespace collapsed to one space."""
    control, invisible = _invisible()
    text = invisible.sub("", control.sub(" ", unicodedata.normalize("NFKC", text)))
    return " ".join(text.split())


def _records_jsonl(path: Path, counts: Optional[Counter] = None) -> Iterator[tuple[str, dict]]:
    for lineno, record in iter_jsonl(path, counts):
        yield f"{path}:{lineno}", record


def _records_parquet(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise EmbedtuneError(f"{path}: not a readable Parquet file ({e})") from e
    names = table.schema_arrow.names
    if cfg.text_field not in names:
        raise EmbedtuneError(f"{path}: no column '{cfg.text_field}' (columns: {', '.join(names)}); "
                             "set corpus.text_field")
    row = 0
    for batch in table.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            row += 1
            yield f"{path}: row {row}", record


def record_documents(records: Callable[[Optional[Counter]], Iterator[tuple[str, dict]]], fields: tuple,
                     cfg: CorpusConfig, source: str, counts: Optional[Counter] = None) -> Iterator[Document]:
    """Documents of (where, record) pairs. A repeated id is never silent: every later lookup by it would keep
    one text for another's queries (corpus.duplicate_ids says what to do instead of stopping). Ids seen are
    kept as 8-byte digests, checked a batch at a time; `records` is called again only to name the first
    record of an id that repeats."""
    text_field, title_field, id_field = fields
    seen, repeats = DigestSet(), Counter()

    def docs() -> Iterator[tuple[str, Document]]:
        for n, (where, record) in enumerate(records(counts)):
            doc = record_document(record, where, fields, n, source, cfg.list_separator, counts)
            if doc is not None:
                yield where, doc

    def first_where(doc_id: str) -> str:
        return next(w for w, r in records(None) if field_text(r, id_field, w, required=True) == doc_id)

    batch_docs, yielded = docs(), 0
    # never read past what corpus.max_documents can use (a bad record beyond it is never met)
    while batch := list(itertools.islice(batch_docs, min(ID_BATCH, (cfg.max_documents or 1 << 62) - yielded))):
        digests = hash64(doc.doc_id for _, doc in batch)
        if seen.fresh(digests).all():  # the usual case: every id new
            seen.add(digests)
            yielded += len(batch)
            yield from (doc for _, doc in batch)
            continue
        for where, doc in batch:  # a repeat in this batch: one record at a time
            if not seen.add_new(hash64([doc.doc_id]))[0]:
                if cfg.duplicate_ids == "keep_first":
                    if counts is not None:
                        counts["repeated_id_dropped"] += 1
                    continue
                if cfg.duplicate_ids != "suffix":
                    raise EmbedtuneError(f"{where}: id '{doc.doc_id}' ({id_field}) repeats {first_where(doc.doc_id)}; "
                                         "ids must be unique (or set corpus.duplicate_ids=keep_first or suffix)")
                original = doc.doc_id
                while not seen.add_new(hash64([f"{original}#{repeats[original] + 2}"]))[0]:
                    repeats[original] += 1
                repeats[original] += 1
                doc.doc_id = f"{original}#{repeats[original] + 1}"
                if counts is not None:
                    counts["repeated_id_renamed"] += 1
            yielded += 1
            yield doc


def read_records(path: Path, cfg: CorpusConfig, beir: bool, counts: Optional[Counter] = None) -> Iterator[Document]:
    """Documents of a JSONL/Parquet/BEIR file."""
    def records(counts: Optional[Counter]) -> Iterator[tuple[str, dict]]:
        return _records_parquet(path, cfg) if path.suffix == ".parquet" else _records_jsonl(path, counts)
    fields = ("text", "title", "_id") if beir else (cfg.text_field, cfg.title_field, cfg.id_field)
    return record_documents(records, fields, cfg, path.name, counts)


def source_stamp(cfg: CorpusConfig) -> Optional[str]:
    """What prepare's key knows of the corpus's files: a hash of every file's path, size and modification time
    under corpus.path (a file or a folder), so an added, edited or removed document reruns prepare. None for the
    built-in corpus and for what is not a local path (an hf hub id: force=true re-reads it)."""
    if cfg.format == "hpo" or not cfg.path:
        return None
    path = Path(cfg.path).expanduser()
    if not path.exists():
        return None  # read_documents names the missing path
    if path.is_file():
        files, root = [path], path.parent
    elif cfg.format == "files":
        files, root = walk(path, folder_reading(cfg)), path
    else:  # a dataset folder: every file in it
        files, root = (Path(d) / f for d, _, names in sorted(os.walk(path)) for f in sorted(names)), path
    digest = hashlib.sha256()
    for f in files:
        try:
            stat = f.stat()
        except OSError:  # a broken link, or a file removed meanwhile: the reader decides what that means
            continue
        digest.update(f"{f.relative_to(root).as_posix()}\x00{stat.st_size}\x00{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def folder_reading(cfg: CorpusConfig) -> FolderReading:
    return FolderReading(list(cfg.extensions), cfg.text_field, cfg.title_field, cfg.id_field, cfg.list_separator,
                         cfg.follow_symlinks, cfg.max_file_mb)


def read_documents(cfg: CorpusConfig, counts: Optional[Counter] = None,
                   ledger: Optional[FileLedger] = None) -> Iterator[Document]:
    """Documents of the configured corpus, in a stable order (`counts` gathers what was dropped or changed;
    `ledger`, for a folder corpus, what became of every file)."""
    if cfg.format == "hpo":
        _, terms = load_terms()
        docs = (Document(t.id, t.name, t.definition, "hpo") for t in terms)
    else:
        if not cfg.path:
            raise EmbedtuneError(f"corpus.format={cfg.format} needs corpus.path")
        path = Path(cfg.path).expanduser()
        if not path.exists() and cfg.format != "hf":  # hf: also a hub id or a glob of files
            raise EmbedtuneError(f"corpus.path {path} does not exist")
        if cfg.format == "files":
            if not path.is_dir():
                raise EmbedtuneError(f"corpus.path {path} must be a folder for corpus.format=files")
            docs = read_files(path, folder_reading(cfg), counts, ledger)
        elif cfg.format == "hf":
            docs = record_documents(lambda _: hf_records(cfg.path, cfg.subset, cfg.split, cfg.streaming),
                                    (cfg.text_field, cfg.title_field, cfg.id_field), cfg, path.name, counts)
        elif cfg.format in ("jsonl", "parquet", "beir"):
            if path.is_dir() and cfg.format == "beir":
                path = path / "corpus.jsonl"
            if not path.is_file():
                raise EmbedtuneError(f"corpus.path {path} must be a file for corpus.format={cfg.format}")
            docs = read_records(path, cfg, beir=cfg.format == "beir", counts=counts)
        else:
            raise EmbedtuneError(f"corpus.format={cfg.format} is not one of hpo, files, jsonl, parquet, beir, hf")
    for n, doc in enumerate(docs):
        if cfg.max_documents is not None and n >= cfg.max_documents:
            return
        yield doc


def doc_key(source: str, doc_id: str) -> str:
    """A passage's document: its source (file or corpus) and doc_id. Splits and same-document checks use it."""
    return f"{source}\x00{doc_id}"


def passage_id(source: str, doc_id: str, chunk: int) -> str:
    """Stable across reruns: a hash of where the passage comes from, not of when it was read."""
    return hashlib.sha1(f"{source}\x00{doc_id}\x00{chunk}".encode("utf-8")).hexdigest()[:16]


def chunk_spans(offsets: list[tuple[int, int]], size: int, overlap: int,
                words: list[int] | None = None) -> list[tuple[int, int, int]]:
    """(char start, char end, n tokens) of windows of at most `size` tokens, about `overlap` tokens apart.

    With `words` (the word index of each token), window edges move to word starts so no word is cut,
    unless a single word is longer than the window.
    """
    n = len(offsets)
    if n == 0:
        return []

    def word_start(i: int) -> bool:
        return words is None or i == 0 or i >= n or words[i] is None or words[i] != words[i - 1]

    spans, start = [], 0
    while True:
        end = min(start + size, n)
        if end < n and not word_start(end):
            edge = end - 1
            while edge > start + 1 and not word_start(edge):
                edge -= 1
            if word_start(edge):
                end = edge  # end before the word that would be cut
        spans.append((offsets[start][0], offsets[end - 1][1], end - start))
        if end == n:
            return spans
        nxt = max(start + 1, end - overlap)
        # start on a word: the last word start in (start, nxt], else the first in (nxt, end], else cut
        before = [i for i in range(nxt, start, -1) if word_start(i)]
        after = [i for i in range(nxt + 1, end + 1) if word_start(i)]
        start = before[0] if before else after[0] if after else nxt


def iter_passages(docs: Iterable[Document], tokenizer, cfg: CorpusConfig, counts: Optional[Counter] = None,
                  seen: Optional[DigestSet] = None) -> Iterator[dict]:
    """Passages (schema of DESIGN.md) from cleaned documents, a batch of documents at a time; exact duplicates
    (title + text, case-insensitive) dropped by their 8-byte digests in `seen`, and passages shorter than
    corpus.min_chars (`counts` gets both numbers)."""
    counts = Counter() if counts is None else counts
    seen = DigestSet() if seen is None else seen
    docs = iter(docs)
    with tqdm(desc="prepare: chunk", unit="doc", mininterval=1.0, leave=False) as bar:
        while part := list(itertools.islice(docs, CHUNK_BATCH)):
            enc = tokenizer([d.text for d in part], add_special_tokens=False, return_offsets_mapping=True,
                            truncation=False, verbose=False)
            candidates = []
            for j, (doc, offsets) in enumerate(zip(part, enc["offset_mapping"])):
                spans = chunk_spans(offsets, cfg.chunk_tokens, cfg.chunk_overlap, enc.word_ids(j))
                for n, (start, end, n_tokens) in enumerate(spans):
                    text = doc.text[start:end].strip()
                    if display_width(text) < cfg.min_chars:
                        counts["passage_too_short"] += 1
                        continue
                    candidates.append({"id": passage_id(doc.source, doc.doc_id, n), "doc_id": doc.doc_id,
                                       "title": doc.title, "text": text, "source": doc.source, "n_tokens": n_tokens})
            new = seen.add_new(hash64(f"{p['title'].lower()}\x00{p['text'].lower()}" for p in candidates))
            counts["duplicate_passage"] += int((~new).sum())
            yield from (p for p, keep in zip(candidates, new) if keep)
            bar.update(len(part))
    if not counts["duplicate_passage"]:
        del counts["duplicate_passage"]


def chunk_documents(docs: list[Document], tokenizer, cfg: CorpusConfig, counts: Optional[Counter] = None) -> list[dict]:
    """Every passage of `docs` (iter_passages, as a list)."""
    return list(iter_passages(docs, tokenizer, cfg, counts))


def clean_documents(docs: Iterable[Document], counts: Optional[Counter] = None) -> Iterator[Document]:
    """Cleaned documents (clean_text on title and text); those left without text are dropped and counted."""
    for doc in docs:
        doc.title, doc.text = clean_text(doc.title), clean_text(doc.text)
        if doc.text:
            yield doc
        elif counts is not None:
            counts["empty_after_cleaning"] += 1
