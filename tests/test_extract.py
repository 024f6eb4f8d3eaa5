"""generate/extract.py: each answer reduced to its query or dropped with a named reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedtune.generate.extract import (CHATTER, ECHO, EMPTY, EXAMPLE, NOT_A_QUESTION, REPETITION, UNFINISHED,
                                        extract_query, looks_like_chatter)
from embedtune.generate.prompts import builtin_types

SAMPLE = Path(__file__).parent / "data" / "generator_outputs.jsonl"


def test_every_committed_real_output_extracts_as_a_person_read_it():
    types = builtin_types()
    lines = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == 420
    wrong = []
    for n, line in enumerate(lines, 1):
        examples = [ex.query for ex in types[line["kind"]].examples] if line["prompt"] == "few-shot" else []
        got = extract_query(line["raw"], line["kind"], line["passage"], examples, line["finished"])
        if (got.query, got.reason) != (line["query"], line["reason"]):
            wrong.append(f"line {n}: {line['raw']!r} -> {(got.query, got.reason)}, expected {(line['query'], line['reason'])}")
    assert not wrong, "\n".join(wrong[:20])
    # the sample covers every way an answer can go wrong, and plenty of good ones
    reasons = {line["reason"] for line in lines}
    assert {"", CHATTER, ECHO, REPETITION, EXAMPLE, UNFINISHED, NOT_A_QUESTION} <= reasons
    kept = [line for line in lines if not line["reason"]]
    assert sum(line["prompt"] == "few-shot" for line in kept) >= 250
    zero_shot = [line for line in lines if line["prompt"] == "zero-shot"]
    assert sum(1 for line in zero_shot if line["reason"]) > len(zero_shot) / 2  # the old prompt: mostly chatter


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
