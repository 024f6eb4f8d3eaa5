"""A document as every reader hands it on, and a record's field read as text (the one rule for JSONL, Parquet,
datasets, CSV and JSON rows)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Optional

from embedtune.errors import EmbedtuneError


@dataclass
class Document:
    doc_id: str
    title: str
    text: str
    source: str   # file (relative to the corpus root) or built-in corpus name


def field_text(record: dict, name: str, where: str, required: bool, separator: Optional[str] = None) -> Optional[str]:
    """A record's field as text: a string as it is; a number as written (ids, years); a list of strings joined
    by `separator` where one is set. None where the value is null; anything else is an error naming it."""
    if name not in record:
        if not required:
            return ""
        keys = ", ".join(sorted(record)) or "none"
        raise EmbedtuneError(f"{where}: no field '{name}' (fields: {keys}); set corpus.text_field / "
                             "corpus.title_field / corpus.id_field")
    value = record[name]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        if separator is not None:
            return separator.join(value)
        raise EmbedtuneError(f"{where}: field '{name}' is a list of {len(value)} strings, not a string; set "
                             "corpus.list_separator (e.g. \"\\n\") to join them")
    raise EmbedtuneError(f"{where}: field '{name}' is a {type(value).__name__}, not a string")


def record_document(record: dict, where: str, fields: tuple, position: int, source: str,
                    separator: Optional[str] = None, counts: Optional[Counter] = None) -> Optional[Document]:
    """The document of one record, its (text, title, id) fields named by `fields` (a null title or id field: no
    title, the record's `position` as id). None for a record whose text is null (counted as null_text_skipped)."""
    text_field, title_field, id_field = fields
    text = field_text(record, text_field, where, required=True, separator=separator)
    if text is None:
        if counts is not None:
            counts["null_text_skipped"] += 1
        return None
    title = field_text(record, title_field, where, required=False, separator=separator) if title_field else ""
    doc_id = field_text(record, id_field, where, required=True) if id_field else str(position)
    if doc_id is None:
        raise EmbedtuneError(f"{where}: field '{id_field}' (the id) is null")
    return Document(doc_id=doc_id, title=title or "", text=text, source=source)
