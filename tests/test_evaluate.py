"""evaluate.py: trec metrics on a toy run checked by hand, and the markdown report table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from embedtune.errors import EmbedtuneError
from embedtune.evaluate import METRICS, RECALL_KS, markdown_table, recall_table, trec_metrics
from embedtune.precision import generator_dtype, native_bf16, train_precision, use_bf16

# q1: relevant d1 (grade 1) at rank 2 and d2 (grade 2) at rank 4
# q2: its only relevant document, d5, at rank 11 (inserted first, so the run's dict order is not its rank)
# q3: judged but absent from the run; q5: retrieved, but nothing relevant; q4: in the run but unjudged
RUN = {
    "q1": {"d3": 0.9, "d1": 0.8, "d4": 0.7, "d2": 0.6},
    "q2": {"d5": 0.05, **{f"x{i}": 1.0 - i / 20 for i in range(10)}, "x10": 0.01},
    "q5": {"d10": 0.5, "d11": 0.4},
    "q4": {"d1": 0.9},
}
QRELS = {
    "q1": {"d1": 1, "d2": 2, "d7": 0},
    "q2": {"d5": 1},
    "q3": {"d8": 1},
    "q5": {"d9": 1},
}


def log2(x: float) -> float:
    return math.log(x, 2)


def test_trec_metrics_match_hand_computed_values():
    m = trec_metrics(RUN, QRELS)
    # trec_eval's nDCG uses the grade as the gain: DCG = 1/log2(3) + 2/log2(5), ideal = 2/log2(2) + 1/log2(3)
    ndcg_q1 = (1 / log2(3) + 2 / log2(5)) / (2 / log2(2) + 1 / log2(3))
    expected = {
        "nDCG@10": ndcg_q1 / 4,           # q2's hit is at rank 11; q3 and q5 score 0
        "R@1": 0.0,
        "R@10": 1.0 / 4,                  # q1 only
        "R@100": 2.0 / 4,                 # q1 and q2
        "MRR@10": 0.5 / 4,                # q1's first hit at rank 2; q2's at 11 is past the cut
        "MAP@100": (0.5 * (1 / 2 + 2 / 4) + 1 / 11) / 4,
    }
    assert set(m) == set(METRICS) | {"recall_curve", "per_query"}
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-4), key
    assert sorted(m["per_query"]) == sorted(QRELS) and m["per_query"]["q1"] == pytest.approx(ndcg_q1, abs=1e-4)
    assert sum(m["per_query"].values()) / len(QRELS) == pytest.approx(m["nDCG@10"])
    # q1: d1 at rank 2 (half its relevant set), d2 at rank 4 (all of it); q2's d5 at rank 11
    curve = {1: 0.0, 3: 0.5 / 4, 5: 1.0 / 4, 10: 1.0 / 4, 20: 2.0 / 4, 50: 2.0 / 4, 100: 2.0 / 4}
    assert list(m["recall_curve"]) == [str(k) for k in RECALL_KS]
    for k, value in curve.items():
        assert m["recall_curve"][str(k)] == pytest.approx(value, abs=1e-4), k
    assert m["recall_curve"]["10"] == m["R@10"]


def test_trec_metrics_perfect_run_scores_one():
    run = {"q1": {"d2": 0.9, "d1": 0.8, "d3": 0.1}, "q2": {"d5": 0.7, "d6": 0.2}}
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d5": 1}}
    m = trec_metrics(run, qrels)
    assert m["nDCG@10"] == pytest.approx(1.0)
    assert m["MRR@10"] == pytest.approx(1.0)
    assert m["MAP@100"] == pytest.approx(1.0)
    assert m["R@10"] == pytest.approx(1.0)
    assert m["R@1"] == pytest.approx((1 / 2 + 1) / 2)  # q1 has two relevant documents


def test_trec_metrics_ignore_unjudged_queries():
    with_extra = trec_metrics(RUN, QRELS)
    without = trec_metrics({q: docs for q, docs in RUN.items() if q != "q4"}, QRELS)
    assert with_extra == without


def test_markdown_table_has_a_row_per_model_and_a_delta_row():
    base = {"queries": 1234, **{k: 0.5 for k in METRICS}}
    tuned = {"queries": 1234, **{k: 0.5 for k in METRICS}, "nDCG@10": 0.625, "R@1": 0.25}
    table = markdown_table({"hpo": {"base": base, "tuned": tuned}, "synthetic": {"base": base}})
    lines = table.strip().splitlines()
    assert lines[0] == "| set | model | queries | " + " | ".join(METRICS) + " |"
    assert len(lines) == 2 + 3 + 1  # header, hpo: base, tuned, delta; synthetic: base only
    assert "| hpo | base | 1,234 | 0.500 |" in table
    delta = [line for line in lines if "tuned - base" in line]
    assert len(delta) == 1 and delta[0].startswith("| hpo |")
    cells = [c.strip() for c in delta[0].strip("|").split("|")]
    assert cells[3:] == ["+0.125", "-0.250", "+0.000", "+0.000", "+0.000", "+0.000"]


def test_recall_table_and_plot(tmp_path):
    from embedtune.plots import plot_recall

    # tuned: q1 finds d1 then d2 (R@1 = 1/2), q3 finds d8 first: R@1 = (0.5 + 1) / 4
    results = {"hpo": {"base": trec_metrics(RUN, QRELS),
                       "tuned": trec_metrics({"q1": {"d1": 1.0, "d2": 0.9}, "q3": {"d8": 1.0}}, QRELS)}}
    table = recall_table(results)
    lines = table.strip().splitlines()
    assert lines[0] == "| set | model | " + " | ".join(f"R@{k}" for k in RECALL_KS) + " |"
    assert lines[2] == "| hpo | base | 0.000 | 0.125 | 0.250 | 0.250 | 0.500 | 0.500 | 0.500 |"
    assert lines[3] == "| hpo | tuned | 0.375 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 | 0.500 |"
    assert plot_recall(results, tmp_path / "recall.png") == ["recall.png"]
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_use_bf16_honours_explicit_precision():
    assert use_bf16("bf16") is True
    assert use_bf16("fp32") is False


def test_auto_precision_is_bf16_only_where_the_hardware_has_it():
    """On an AVX2-only CPU bf16 is emulated (~50x slower than fp32): auto must pick fp32 there."""
    flags = Path("/proc/cpuinfo").read_text()
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else (
        "avx512_bf16" in flags or "amx_bf16" in flags)
    assert native_bf16() is native
    assert use_bf16("auto") is native
    assert train_precision("auto") == ("bf16" if native else "no")
    assert generator_dtype("auto") == ("bfloat16" if native else "float32")
    assert train_precision("auto", launcher="bf16") == "bf16"  # a launch config that names one decides
    assert train_precision("no", launcher="bf16") == "no"      # (and check_launch refuses the contradiction)
    assert generator_dtype("float32") == "float32" and train_precision("fp16") == "fp16"


# ---------------------------------------------------------------- BM25 row

def test_bm25_ranks_the_lexical_match_first_and_misses_a_paraphrase():
    from embedtune.beir import RetrievalSet
    from embedtune.evaluate import EvalConfig, evaluate_bm25

    corpus = {"d1": "The heart pumps blood through the arteries", "d2": "Kidney stones cause pain",
              "d3": "Fever is a raised body temperature", "d4": "The liver filters the blood"}
    queries = {"q1": "kidney stones", "q2": "raised temperature", "q3": "cardiac muscle"}  # q3: no shared word
    qrels = {"q1": {"d2": 1}, "q2": {"d3": 1}, "q3": {"d1": 1}}
    m = evaluate_bm25(RetrievalSet("toy", corpus, queries, qrels), EvalConfig())
    assert m["queries"] == 3 and m["documents"] == 4
    assert math.isclose(m["nDCG@10"], 2 / 3, rel_tol=1e-9)  # 1, 1 and 0
    assert math.isclose(m["MRR@10"], 2 / 3, rel_tol=1e-9)


def test_paired_bootstrap_interval_brackets_the_mean_difference_and_flags_noise():
    import random

    from embedtune.evaluate import paired_bootstrap

    rng = random.Random(0)
    base = {f"q{i}": rng.random() for i in range(2000)}
    better = {q: min(1.0, v + 0.05) for q, v in base.items()}
    ci = paired_bootstrap(base, better)
    assert ci["low"] < ci["diff"] < ci["high"] and ci["significant"] and ci["queries"] == 2000
    assert ci == paired_bootstrap(base, better)  # seeded
    noisy = {q: v + rng.gauss(0, 0.2) for q, v in base.items()}
    shifted = paired_bootstrap(base, noisy)
    assert shifted["low"] < 0 < shifted["high"] and not shifted["significant"]
    with pytest.raises(EmbedtuneError):
        paired_bootstrap({"a": 1.0}, {"b": 1.0})
    # pairing: every query gains exactly 0.01 while queries spread over [0, 0.9]; resampled together the interval
    # is that gain alone, where two separate resamples would spread it by about +-0.016 and call it noise
    steady = {q: v * 0.9 for q, v in base.items()}
    ci = paired_bootstrap(steady, {q: v + 0.01 for q, v in steady.items()})
    assert ci["high"] - ci["low"] < 1e-9 and ci["diff"] == pytest.approx(0.01) and ci["significant"]
