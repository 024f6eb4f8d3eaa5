"""Extraction measured against people: precision and recall of `extract_query` on answers a person labelled
(the query they would keep, or why they would drop it), independently of the extractor. The labelled files are
tests/data/generator_outputs.jsonl (real answers of the default generator) and tests/data/extraction_cases.jsonl
(hand-written hard cases: abbreviations, lists, units, code, quotes, other languages); bench/extraction.py prints
the table."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from embedtune.generate.extract import extract_query
from embedtune.generate.prompts import builtin_types

# reasons a person gives that extraction cannot see: the query is fine as text but poor as a query (vague, about
# something else) or a copy of the passage (the filter's copy rule and round trip judge those)
NOT_EXTRACTION = ("off_topic",)


def same_query(a: str, b: str) -> bool:
    """Equal up to case, spacing and a final period."""
    def norm(q: str) -> str:
        return re.sub(r"\s+", " ", q.strip().rstrip(".。").strip()).lower()
    return norm(a) == norm(b)


@dataclass
class Agreement:
    kept_by_extractor: int = 0
    kept_by_person: int = 0
    both: int = 0  # kept by both, as the same query
    disagreements: list = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.both / self.kept_by_extractor if self.kept_by_extractor else 1.0

    @property
    def recall(self) -> float:
        return self.both / self.kept_by_person if self.kept_by_person else 1.0


def agreement(path: Path, skip_reasons: tuple[str, ...] = ()) -> Agreement:
    types, result = builtin_types(), Agreement()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        if row["reason"] in skip_reasons:
            continue
        examples = [ex.query for ex in types[row["kind"]].examples] if row["prompt"] == "few-shot" else []
        got = extract_query(row["raw"], row["kind"], row["passage"], examples, row["finished"])
        result.kept_by_extractor += bool(got.query)
        result.kept_by_person += bool(row["query"])
        agree = bool(got.query) and bool(row["query"]) and same_query(got.query, row["query"])
        result.both += agree
        if not agree and (got.query or row["query"]):
            result.disagreements.append(f"line {n}: {row['raw']!r} -> {got.query or got.reason!r}; "
                                        f"person: {row['query'] or row['reason']!r}")
    return result
