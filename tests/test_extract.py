"""generate/extract.py: each answer reduced to its query or dropped with a named reason."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from embedtune.generate.extract import (CHATTER, ECHO, EMPTY, EXAMPLE, NOT_A_QUESTION, REPETITION, UNFINISHED,
                                        extract_query, looks_like_chatter)
from embedtune.generate.extraction_check import NOT_EXTRACTION, agreement

SAMPLE = Path(__file__).parent / "data" / "generator_outputs.jsonl"
CASES = Path(__file__).parent / "data" / "extraction_cases.jsonl"


def test_extraction_agrees_with_people_on_real_answers_and_hard_cases():
    """Labels written by a person who never saw the extractor's output; the floors are what it measures now
    (sample: precision 0.785, recall 0.921; hard cases 0.947 and 1.000; before the fixes for abbreviations,
    lists, quotes and other languages: 0.779/0.914 and 0.632/0.667)."""
    lines = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 420 and sum(bool(line["query"]) for line in lines) == 266
    real = agreement(SAMPLE)
    extraction_only = agreement(SAMPLE, skip_reasons=NOT_EXTRACTION)
    cases = agreement(CASES)
    assert real.precision >= 0.78 and real.recall >= 0.92, "\n".join(real.disagreements[:30])
    assert extraction_only.precision >= 0.86, "\n".join(extraction_only.disagreements[:30])
    assert cases.precision >= 0.94 and cases.recall == 1.0, "\n".join(cases.disagreements)
    # the hard cases hold what the issue named: an abbreviation, a list, quotes, and queries without spaces
    raws = {json.loads(line)["raw"] for line in CASES.read_text(encoding="utf-8").splitlines()}
    assert {"St. John's wort for mild depression", "aspirin vs. Tylenol for fever",
            "fever, a sore throat and cough in children"} <= raws
    assert sum(1 for r in raws if re.search(r"[\u3040-\u30ff\u4e00-\u9fff]", r)) >= 6


@pytest.mark.parametrize("raw, kind, query", [
    ("The query is: \"supraclavicular lymphadenopathy.", "keyword", "supraclavicular lymphadenopathy"),
    ('A search query for "pleural mesothelioma" would be:', "keyword", "pleural mesothelioma"),
    ("A short search query to find the text: 3-4 toe cutaneous syndactyly.", "keyword", "3-4 toe cutaneous syndactyly"),
    ("The query should be: Enlarged kidney. An abnormal increase in the size of the kidney.", "keyword", "Enlarged kidney"),
    ('Sure! Here is a search query: "heart murmur in kids" - this query finds pages', "keyword", "heart murmur in kids"),
    ("Query: how to bake bread", "keyword", "how to bake bread"),
    ("A: \"Human Skeletal System", "keyword", "Human Skeletal System"),
    ("What is X? It is a thing that ...", "question", "What is X?"),
    ("distal clavicle thinning, a condition of the clavicle bone.", "plain", "distal clavicle thinning"),
    ("x concentration. reduced x concentration", "keyword", "x concentration"),
    ("keyword research tools: free options", "keyword", "keyword research tools: free options"),  # a real colon
    ("How do banks set mortgage rates?", "question", "How do banks set mortgage rates?"),  # "how do" is no echo
    ("Bread rises because yeast makes gas.", "claim", "Bread rises because yeast makes gas"),
    ("A lack of collagen binding to vWF. A lack of vWB.", "claim", "A lack of collagen binding to vWF"),  # acronym end
    ("Rash on the arms, e.g. A patch", "claim", "Rash on the arms, e.g. A patch"),  # an abbreviation is no end
])
def test_extraction_rules(raw, kind, query):
    examples = ["How do you make bread rise without store-bought yeast?"] if kind == "question" else []
    got = extract_query(raw, kind, "passage words: bread yeast gas x concentration", examples)
    assert (got.query, got.reason) == (query, "")


@pytest.mark.parametrize("raw, kind, reason", [
    ("", "keyword", EMPTY), ("  ...  ", "keyword", EMPTY),
    ("The text you provided is a medical term related to the foot.", "keyword", CHATTER),
    ("What is the answer to this question?", "question", CHATTER),
    ("The query should be:", "keyword", CHATTER),
    ("The text supports the concept of bread by describing yeast.", "claim", CHATTER),
    ("Text: Pes cavus. An increase in height of the arch", "keyword", ECHO),
    ("blood blood blood blood blood", "keyword", REPETITION),
    ("What a fascinating topic! Yeast is a fungus.", "question", NOT_A_QUESTION),
])
def test_drop_reasons(raw, kind, reason):
    assert extract_query(raw, kind, "bread yeast").reason == reason


def test_unfinished_answers_drop_only_when_the_limit_cut_the_query_itself():
    cut = "reduced circulating 4-hydroxyphenylpyruvate dioxygenase activity reduced circ"
    assert extract_query(cut, "keyword", "", finished=False).reason == UNFINISHED
    assert extract_query(cut, "keyword", "", finished=True).query == cut
    rambled = "A skull defect. A congenital defect that results from abnormal embryological develo"
    assert extract_query(rambled, "claim", "", finished=False).query == "A skull defect"
    ended = "What is the difference between a kidney and a kidney stone?"
    assert extract_query(ended, "question", "", finished=False).query == ended


def test_few_shot_echo_is_cut_from_the_end_or_dropped():
    examples = ["bond duration interest rates", "why my bond fund dropped when rates went up"]
    passage = "Right ventricular systolic pressure. The pressure in the right ventricle."
    tail = extract_query("right ventricular systolic pressure when rates went up", "plain", passage, examples)
    assert (tail.query, tail.chatter) == ("right ventricular systolic pressure", True)
    assert extract_query("bond duration of the right ventricle", "keyword", passage, examples).reason == EXAMPLE
    # words of an example that the passage has too are no echo
    kept = extract_query("interest rates and pressure", "keyword", "interest rates rise", examples)
    assert kept.reason == ""


def test_looks_like_chatter_is_broader_than_extraction():
    assert looks_like_chatter("the text about bread") and looks_like_chatter("here is my query")
    assert not looks_like_chatter("sourdough starter wild yeast")
    assert not looks_like_chatter("How do you make bread rise?")
