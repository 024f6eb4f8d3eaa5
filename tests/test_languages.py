"""Corpora in other languages: the prompts and examples come in the corpus's language, lengths and duplicates are
counted in its words, BM25 uses its stop words, stemmer or character pairs; a small German and a small Chinese
corpus run end to end (scripted generator on 127.0.0.1, the packaged base model, a few steps)."""

from __future__ import annotations

import json
import re

import pytest
from helpers import ChatServer, compose_config, passage_in

from embedtune import pipeline
from embedtune.bm25 import bm25_search
from embedtune.generate.prompts import PromptConfig, builtin_types, render

GERMAN = [("Fieber bei Kindern", "Fieber über 38,5 Grad bei Kindern senkt man mit Paracetamol und viel Flüssigkeit."),
          ("Bluthochdruck", "Dauerhaft erhöhter Blutdruck schädigt Gefäße, Herz und Nieren; Salz meiden hilft."),
          ("Sonnenbrand", "Eine Entzündung der Haut durch UV-Strahlung; kühlen und die Sonne meiden."),
          ("Heuschnupfen", "Eine Allergie gegen Pollen mit Niesen, Juckreiz und tränenden Augen im Frühling."),
          ("Migräne", "Starke, oft einseitige Kopfschmerzen mit Übelkeit und Lichtempfindlichkeit."),
          ("Sodbrennen", "Magensäure steigt in die Speiseröhre und brennt hinter dem Brustbein."),
          ("Zeckenbiss", "Nach einem Zeckenbiss die Zecke rasch entfernen und auf Wanderröte achten."),
          ("Schlafstörung", "Wer lange nicht einschlafen kann, sollte feste Zeiten und wenig Koffein einhalten."),
          ("Rückenschmerzen", "Bewegung und Kräftigung der Rumpfmuskeln lindern die meisten Rückenschmerzen."),
          ("Husten", "Ein akuter Husten nach einer Erkältung klingt meist in zwei bis drei Wochen ab.")]
CHINESE = [("儿童发烧", "儿童体温超过三十八度五时可以服用对乙酰氨基酚，并多喝水。"),
           ("高血压", "长期血压升高会损伤血管、心脏和肾脏，少吃盐有帮助。"),
           ("晒伤", "紫外线引起的皮肤炎症，应冷敷并避免日晒。"),
           ("花粉过敏", "春天对花粉过敏，会打喷嚏、发痒和流眼泪。"),
           ("偏头痛", "剧烈的单侧头痛，常伴有恶心和怕光。"),
           ("胃灼热", "胃酸反流进入食道，在胸骨后面有烧灼感。"),
           ("蜱虫叮咬", "被蜱虫叮咬后要尽快取出蜱虫，并注意皮肤红斑。"),
           ("失眠", "长期难以入睡的人应保持固定作息并减少咖啡因。"),
           ("腰痛", "运动和加强核心肌肉可以缓解大多数腰痛。"),
           ("咳嗽", "感冒后的急性咳嗽通常在两到三周内消失。")]


def test_the_built_in_prompts_come_in_the_corpus_language_unless_the_user_wrote_their_own():
    german = render("question", "Fieber bei Kindern.", PromptConfig(domain="Gesundheit", language="de"), 32)
    assert "Gesundheit" in german.messages[0]["content"] and "Suchanfragen" in german.messages[0]["content"]
    assert "Frage" in german.messages[-1]["content"]
    assert any("Wie geht Brot ohne gekaufte Hefe auf?" == m["content"] for m in german.messages)
    chinese = render("keyword", "儿童发烧。", PromptConfig(language="zh"), 24)
    assert "搜索词" in chinese.messages[0]["content"] and "酸面团 野生酵母" in chinese.completion
    mine = builtin_types("en")
    mine["keyword"].instruction = "Type a search."
    kept = render("keyword", "x", PromptConfig(language="de", types=mine), 24)
    assert "Type a search." in kept.messages[-1]["content"]  # types a user replaced are used as they are
    assert set(builtin_types("ja")) == set(builtin_types("en")) == set(builtin_types("fr"))


def test_bm25_uses_the_language_stemmer_and_character_pairs():
    found, _ = bm25_search(["Fieber bei Kindern senken", "Bluthochdruck bei Erwachsenen"], ["Kinder"], "de", 2)
    assert int(found[0][0]) == 0  # "Kinder" meets "Kindern" only through the German stemmer
    found, scores = bm25_search(["儿童发烧的处理方法", "成人高血压的饮食"], ["孩子发烧怎么办"], "zh", 2)
    assert int(found[0][0]) == 0 and scores[0][0] > 0 and scores[0][1] == 0


def answer_in(language: str):
    """A generator that answers in the corpus's language: a question where asked for one, else the passage's
    title as a keyword search."""
    def answer(messages) -> str:
        title = passage_in(messages).split(".", 1)[0].split("。", 1)[0]
        asked = messages[-1]["content"]
        if "Frage" in asked:
            return f"Was hilft bei {title}?"
        if "问题" in asked:
            return f"{title}怎么办？"
        if "Aussage" in asked or "陈述" in asked:
            return f"{title} ist behandelbar." if language == "de" else f"{title}可以治疗。"
        return f"{title} Behandlung" if language == "de" else f"{title}的治疗"
    return answer


@pytest.mark.slow  # two small runs end to end, in this process
@pytest.mark.parametrize("language, documents", [("de", GERMAN), ("zh", CHINESE)])
def test_a_small_corpus_in_another_language_runs_end_to_end(language, documents, tmp_path, capsys):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}, ensure_ascii=False) + "\n"
                              for i, (t, x) in enumerate(documents)), encoding="utf-8")
    server = ChatServer(None, answer=answer_in(language))
    try:
        cfg = compose_config("debug=tiny", "corpus=jsonl", f"corpus.path={corpus}", "corpus.id_field=id",
                             f"corpus.language={language}", f"paths.runs={tmp_path / 'runs'}", "run_name=r",
                             "generator.backend=openai", "generator.model=scripted", f"generator.api_base={server.url}",
                             "generator.max_passages=null", "generator.queries_per_passage=3",
                             "filter.roundtrip_top_k=null", "filter.min_words=2",
                             "filter.dev_fraction=0.1", "filter.test_fraction=0.2", "eval.synthetic=true",
                             "export.onnx=false")  # the ONNX graph is tested elsewhere; here the languages
        pipeline.run_all(cfg)
    finally:
        server.close()
    system = server.requests[0]["body"]["messages"][0]["content"]
    assert ("Suchanfragen" in system) if language == "de" else ("搜索词" in system)
    run = tmp_path / "runs" / "r"
    prepared = json.loads((run / "passages" / "manifest.json").read_text())
    generated = json.loads((run / "queries" / "manifest.json").read_text())
    kept = json.loads((run / "pairs" / "manifest.json").read_text())
    assert prepared["counts"]["documents"] == prepared["counts"]["passages"] == 10  # short CJK passages count wide
    assert generated["counts"]["written"] == 30  # 10 passages x 3 types
    assert kept["counts"]["kept"] >= 25, kept["counts"]  # not "too short": words are counted in the language
    assert not kept["counts"]["dropped"].get("too_short") and not kept["counts"]["dropped"].get("not_a_question")
    report = (run / "eval" / "report.md").read_text(encoding="utf-8")
    assert re.search(r"\| bm25 \|", report, re.I) and (run / "model" / "modules.json").exists()
