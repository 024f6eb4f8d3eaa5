"""Read BEIR-format retrieval sets: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from embedtune.errors import EmbedtuneError
from embedtune.io import iter_jsonl
from embedtune.model import passage_text


@dataclass
class RetrievalSet:
    name: str
    corpus: dict[str, str]              # doc id -> text the encoder reads
    queries: dict[str, str]             # query id -> text (only those with judgements)
    qrels: dict[str, dict[str, int]]    # query id -> {doc id: relevance}


def _jsonl(path: Path, required: tuple[str, ...]):
    if not path.exists():
        raise EmbedtuneError(f"missing BEIR file {path}")
    for lineno, record in iter_jsonl(path):
        for key in required:
            if key not in record:
                raise EmbedtuneError(f"{path}:{lineno}: missing field '{key}'")
        yield record


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    if not path.exists():
        raise EmbedtuneError(f"missing BEIR qrels file {path}")
    qrels: dict[str, dict[str, int]] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\n").split("\t")
            if lineno == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                raise EmbedtuneError(f"{path}:{lineno}: expected 3 tab-separated columns "
                                     "(query-id, corpus-id, score)")
            try:
                score = int(float(parts[2]))
            except ValueError as e:
                raise EmbedtuneError(f"{path}:{lineno}: score '{parts[2]}' is not a number") from e
            qrels.setdefault(parts[0], {})[parts[1]] = score
    return qrels


def read_beir(folder: Path, split: str, name: str) -> RetrievalSet:
    folder = Path(folder)
    corpus = {r["_id"]: passage_text(r.get("title") or "", r["text"])
              for r in _jsonl(folder / "corpus.jsonl", ("_id", "text"))}
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    queries = {r["_id"]: r["text"] for r in _jsonl(folder / "queries.jsonl", ("_id", "text")) if r["_id"] in qrels}
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise EmbedtuneError(f"{folder}/qrels/{split}.tsv names {len(missing)} queries that are not in "
                             f"queries.jsonl (e.g. {missing[0]})")
    return RetrievalSet(name, corpus, queries, qrels)
