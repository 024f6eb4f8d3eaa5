"""filter.py: which queries are dropped and why; the train/dev/test split by document (no leakage)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from embedtune.config import Config
from embedtune.errors import EmbedtuneError
from embedtune.filter import (
    FilterConfig,
    counts,
    filter_queries,
    is_copy,
    longest_shared_run,
    passes_roundtrip,
    split_pairs,
    write_splits,
)
from embedtune.io import read_rows
from embedtune.validate import problems


def q(text: str, n: int = 0, passage: str = "p0") -> dict:
    return {"query_id": f"q{n}", "passage_id": passage, "text": text}


def texts(rows: list[dict]) -> list[str]:
    return [r["text"] for r in rows]


# ---------------------------------------------------------------- filter_queries

def test_filter_queries_counts_each_reason():
    queries = [
        q(""), q("   \n"),                                   # empty
        q("kidney"),                                         # too short (min_words=2)
        q(" ".join(["word"] * 25)),                          # too long (max_words=24)
        q(" ".join(["word"] * 24)),                          # exactly max_words: kept
        q("what causes renal cysts?"),                       # kept
        q("What causes RENAL cysts"),                        # duplicate (case, punctuation)
        q("what  causes renal-cysts !"),                     # duplicate (spacing, hyphen)
        q("what causes renal stones?"),                      # kept
        q("two words"),                                      # exactly min_words: kept
    ]
    kept, dropped = filter_queries(queries, FilterConfig(min_words=2, max_words=24))
    assert counts(dropped) == {"empty": 2, "too_short": 1, "too_long": 1, "copy": 0, "duplicate": 2, "near_duplicate": 0}
    assert texts(kept) == [" ".join(["word"] * 24), "what causes renal cysts?", "what causes renal stones?",
                           "two words"]
    assert len(kept) + sum(counts(dropped).values()) == len(queries)


def test_filter_queries_keeps_the_first_of_duplicates_and_the_rows_themselves():
    queries = [q("Is it genetic?", 1), q("is it GENETIC", 2), q("Is it genetic...", 3)]
    kept, dropped = filter_queries(queries, FilterConfig())
    assert kept == [queries[0]]
    assert [r["query_id"] for r in dropped["duplicate"]] == ["q2", "q3"]


def test_filter_queries_dedup_off_keeps_duplicates():
    queries = [q("Is it genetic?"), q("is it genetic")]
    kept, dropped = filter_queries(queries, FilterConfig(dedup=False, near_dedup=False))
    assert texts(kept) == texts(queries)
    assert counts(dropped) == {"empty": 0, "too_short": 0, "too_long": 0, "copy": 0, "duplicate": 0, "near_duplicate": 0}


def test_filter_queries_length_filters_apply_before_dedup():
    # a too-short query does not enter the seen set, so a later long enough one is not its duplicate
    kept, dropped = filter_queries([q("genetic"), q("genetic"), q("genetic cause")],
                                   FilterConfig(min_words=2))
    assert texts(kept) == ["genetic cause"]
    assert counts(dropped) == {"empty": 0, "too_short": 2, "too_long": 0, "copy": 0, "duplicate": 0, "near_duplicate": 0}


def test_filter_queries_keeps_non_latin_words_apart():
    kept, _ = filter_queries([q("что такое почка"), q("что такое печень")], FilterConfig())
    assert len(kept) == 2  # normalisation keeps Unicode letters, it does not reduce them to nothing


# ---------------------------------------------------------------- split_pairs

def corpus(n_docs: int, chunks_per_doc: int, queries_per_chunk: int) -> tuple[list[dict], dict[str, str]]:
    """Queries on passages of several documents, and passage id -> document key as the pipeline builds it."""
    queries, doc_of = [], {}
    for d in range(n_docs):
        for c in range(chunks_per_doc):
            pid = f"doc{d}-chunk{c}"
            doc_of[pid] = f"source.jsonl\x00doc{d}"
            for k in range(queries_per_chunk):
                queries.append({"query_id": f"{pid}-q{k}", "passage_id": pid, "text": f"query {k} on {pid}"})
    return queries, doc_of


def test_split_pairs_puts_every_chunk_of_a_document_in_one_split():
    queries, doc_of = corpus(n_docs=60, chunks_per_doc=4, queries_per_chunk=2)
    splits = split_pairs(queries, doc_of, FilterConfig(dev_fraction=0.2, test_fraction=0.3))
    split_of_doc = defaultdict(set)
    for name, rows in splits.items():
        for row in rows:
            split_of_doc[doc_of[row["passage_id"]]].add(name)
    assert len(split_of_doc) == 60
    assert all(len(s) == 1 for s in split_of_doc.values())
    assert all(splits[name] for name in ("train", "dev", "test"))  # with 60 docs every split gets some
    assert sorted(r["query_id"] for rows in splits.values() for r in rows) == sorted(x["query_id"] for x in queries)


def test_split_pairs_rows_have_the_pair_schema():
    queries, doc_of = corpus(n_docs=1, chunks_per_doc=1, queries_per_chunk=1)
    splits = split_pairs(queries, doc_of, FilterConfig(dev_fraction=0, test_fraction=0))
    assert splits == {"train": [{"query_id": "doc0-chunk0-q0", "query": "query 0 on doc0-chunk0",
                                 "passage_id": "doc0-chunk0", "roundtrip_rank": None,
                                 "judge_score": None}], "dev": [], "test": []}


def test_split_pairs_fractions_are_roughly_honoured():
    queries, doc_of = corpus(n_docs=2000, chunks_per_doc=1, queries_per_chunk=1)
    splits = split_pairs(queries, doc_of, FilterConfig(dev_fraction=0.05, test_fraction=0.1))
    sizes = {name: len(rows) for name, rows in splits.items()}
    assert sum(sizes.values()) == 2000
    assert 60 <= sizes["dev"] <= 140    # expected 100, sd ~10
    assert 145 <= sizes["test"] <= 255  # expected 200, sd ~13


def test_split_pairs_is_deterministic_and_seed_dependent():
    queries, doc_of = corpus(n_docs=200, chunks_per_doc=2, queries_per_chunk=1)
    cfg = FilterConfig(dev_fraction=0.2, test_fraction=0.2)

    def assignment(c: FilterConfig) -> dict[str, str]:
        return {r["query_id"]: name for name, rows in split_pairs(queries, doc_of, c).items() for r in rows}

    first = assignment(cfg)
    assert assignment(cfg) == first
    assert assignment(FilterConfig(dev_fraction=0.2, test_fraction=0.2, seed=1)) != first


def test_split_pairs_unknown_passage_is_an_error():
    queries, doc_of = corpus(n_docs=2, chunks_per_doc=1, queries_per_chunk=1)
    queries.append({"query_id": "stray", "passage_id": "gone", "text": "where is it"})
    with pytest.raises(EmbedtuneError, match="query stray names passage gone.*force=true"):
        split_pairs(queries, doc_of, FilterConfig())


@pytest.mark.parametrize("dev, test", [(0.5, 0.5), (0.9, 0.2), (-0.5, 0.2)])
def test_fractions_outside_the_unit_interval_are_refused(dev, test):
    """Named before anything runs (validate.py)."""
    found = problems(Config(filter=FilterConfig(dev_fraction=dev, test_fraction=test)))
    assert any(f"filter.dev_fraction={dev} + filter.test_fraction={test} must be below 1" in p for p in found), found


def test_write_splits_writes_one_parquet_per_split(tmp_path: Path):
    queries, doc_of = corpus(n_docs=30, chunks_per_doc=2, queries_per_chunk=1)
    splits = split_pairs(queries, doc_of, FilterConfig(dev_fraction=0.2, test_fraction=0.2))
    splits["dev"] = []  # an empty split still gets a file with the schema
    write_splits(splits, tmp_path / "pairs")
    for name in ("train", "dev", "test"):
        assert read_rows(tmp_path / "pairs" / f"{name}.parquet") == splits[name]
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["dev.parquet", "test.parquet",
                                                                       "train.parquet"]


def test_near_duplicates_share_their_set_of_words():
    queries = [q("enlarged heart"), q("Heart, enlarged"), q("enlarged heart muscle")]
    kept, dropped = filter_queries(queries, FilterConfig())
    assert texts(kept) == ["enlarged heart", "enlarged heart muscle"] and len(dropped["near_duplicate"]) == 1


def test_copy_filter_drops_passage_excerpts_but_keeps_term_names_and_paraphrases():
    passage = "Patchy sclerosis of the 1st metacarpal. Uneven increase in bone density within the first metacarpal."
    queries = [q("Patchy sclerosis of the 1st metacarpal. Uneven increase in bone density", 0),  # an excerpt
               q("patchy sclerosis of the 1st metacarpal", 1),                # the term name (6 words, verbatim)
               q("uneven bone density in the thumb bone of the hand", 2),     # a paraphrase
               q("increase in bone density within the first metacarpal bone", 3)]  # 8 of 9 words one run
    passages = {"p0": passage}
    assert longest_shared_run(queries[0]["text"], passage) == 11 and longest_shared_run(queries[2]["text"], passage) == 2
    kept, dropped = filter_queries(queries, FilterConfig(copy_max_share=0.9, copy_min_words=6), passages)
    assert [r["query_id"] for r in dropped["copy"]] == ["q0", "q1"]
    kept, dropped = filter_queries(queries, FilterConfig(copy_max_share=0.9, copy_min_words=7), passages)
    assert [r["query_id"] for r in dropped["copy"]] == ["q0"]  # term names below copy_min_words stay
    assert is_copy(queries[3]["text"], passage, FilterConfig(copy_max_share=0.8))
    kept, dropped = filter_queries(queries, FilterConfig(copy_max_share=None), passages)
    assert dropped["copy"] == [] and len(kept) == 4


def test_the_round_trip_rule_keeps_a_top_k_rank_or_with_a_margin_a_near_tie_with_the_best():
    rank_only = FilterConfig(roundtrip_top_k=10)
    assert passes_roundtrip(10, 0.3, rank_only) and not passes_roundtrip(11, 0.001, rank_only)
    tolerant = FilterConfig(roundtrip_top_k=10, roundtrip_margin=0.05)
    assert passes_roundtrip(40, 0.05, tolerant) and passes_roundtrip(3, 0.4, tolerant)
    assert not passes_roundtrip(11, 0.0501, tolerant)


@pytest.mark.parametrize("settings, needle", [
    ({"roundtrip_margin": -0.1}, "filter.roundtrip_margin=-0.1"),
    ({"roundtrip_twin_cosine": 0.0}, "filter.roundtrip_twin_cosine=0.0"),
    ({"roundtrip_twin_cosine": 1.5}, "filter.roundtrip_twin_cosine=1.5"),
    ({"roundtrip_top_k": None, "roundtrip_margin": 0.05}, "set filter.roundtrip_top_k too"),
])
def test_round_trip_settings_outside_their_range_are_refused(settings, needle):
    found = problems(Config(filter=FilterConfig(**settings)))
    assert any(needle in p for p in found), found
    assert not problems(Config(filter=FilterConfig(roundtrip_margin=0.05, roundtrip_twin_cosine=0.95)))
