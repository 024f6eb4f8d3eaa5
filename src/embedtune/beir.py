"""Read BEIR-format retrieval sets: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Read in full before any model is loaded, so a broken set stops the stage at once. A repeated document id,
query id or (query, document) judgement is an error naming the file, both lines and the id: keeping either
silently would score one text's judgements against another's.
"""

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
    missing_documents: int = 0          # relevant judgements naming documents absent from the corpus (they lower recall)
    unjudged_queries: int = 0           # queries in queries.jsonl without a judgement in this split


def _jsonl(path: Path, required: tuple[str, ...]):
    """(line number, record) of a BEIR JSONL file, with every repeated `_id` named."""
    if not path.exists():
        raise EmbedtuneError(f"missing BEIR file {path}")
    first_line: dict[str, int] = {}
    for lineno, record in iter_jsonl(path):
        for key in required:
            if key not in record:
                raise EmbedtuneError(f"{path}:{lineno}: missing field '{key}'")
            if key != "_id" and not isinstance(record[key], str):
                kind = "null" if record[key] is None else f"a {type(record[key]).__name__}"
                raise EmbedtuneError(f"{path}:{lineno}: field '{key}' is {kind}, not a string")
        if not isinstance(record.get("title") or "", str):
            raise EmbedtuneError(f"{path}:{lineno}: field 'title' is a {type(record['title']).__name__}, not a string")
        record_id = str(record["_id"])
        if record_id in first_line:
            raise EmbedtuneError(f"{path}:{lineno}: _id '{record_id}' repeats line {first_line[record_id]}; "
                                 "BEIR ids must be unique")
        first_line[record_id] = lineno
        yield lineno, {**record, "_id": record_id}


def _grade(text: str) -> int | None:
    """An integer grade ("2", or "2.0" as some exporters write it); None for anything else ("0.5", "high")."""
    try:
        return int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            return None
        return int(value) if value.is_integer() else None


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """query id -> {document id: grade}; grades are integers (BEIR), a judgement appears once."""
    if not path.exists():
        raise EmbedtuneError(f"missing BEIR qrels file {path}")
    qrels: dict[str, dict[str, int]] = {}
    first_line: dict[tuple[str, str], int] = {}
    bad: list[str] = []
    with open(path, encoding="utf-8-sig") as f:  # a byte-order mark is not part of the first id
        for lineno, line in enumerate(f, 1):
            parts = line.rstrip("\r\n").split("\t")
            if lineno == 1 and parts[0] in ("query-id", "query_id", "qid"):
                continue
            if not line.strip():
                continue
            if len(parts) != 3:
                bad.append(f"{path}:{lineno}: expected 3 tab-separated columns (query-id, corpus-id, score)")
                continue
            score = _grade(parts[2])
            if score is None:
                bad.append(f"{path}:{lineno}: score '{parts[2]}' is not an integer grade (BEIR grades are 0, 1, 2, ...)")
                continue
            pair = (parts[0], parts[1])
            if pair in first_line:
                bad.append(f"{path}:{lineno}: query '{pair[0]}' and document '{pair[1]}' are judged again (first on "
                           f"line {first_line[pair]})")
                continue
            first_line[pair] = lineno
            qrels.setdefault(parts[0], {})[parts[1]] = score
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise EmbedtuneError("; ".join(bad[:5]) + more)
    return qrels


def read_beir(folder: Path, split: str, name: str) -> RetrievalSet:
    folder = Path(folder)
    corpus = {r["_id"]: passage_text(r.get("title") or "", r["text"])
              for _, r in _jsonl(folder / "corpus.jsonl", ("_id", "text"))}
    qrels = read_qrels(folder / "qrels" / f"{split}.tsv")
    all_queries = {r["_id"]: r["text"] for _, r in _jsonl(folder / "queries.jsonl", ("_id", "text"))}
    queries = {q: text for q, text in all_queries.items() if q in qrels}
    missing = [q for q in qrels if q not in queries]
    if missing:
        raise EmbedtuneError(f"{folder}/qrels/{split}.tsv names {len(missing)} queries that are not in "
                             f"queries.jsonl (e.g. {missing[0]})")
    # a relevant judgement (grade > 0) naming a document the corpus lacks lowers every model's recall; a grade-0
    # one ("not relevant") costs nothing, so it is not counted
    absent = sum(1 for docs in qrels.values() for d, grade in docs.items() if grade > 0 and d not in corpus)
    return RetrievalSet(name, corpus, queries, qrels, missing_documents=absent,
                        unjudged_queries=len(all_queries) - len(queries))
