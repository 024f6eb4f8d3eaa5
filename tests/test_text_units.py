"""text_units.py: queries counted and compared in words in any script, English exactly as a split on spaces."""

from __future__ import annotations

from embedtune.filter import FilterConfig, filter_queries
from embedtune.text_units import word_count, words


def test_scripts_without_spaces_count_a_word_per_character_and_others_as_split():
    assert word_count("儿童发烧怎么办") == 7 and word_count("頭痛が続くのはなぜですか？") == 12
    assert word_count("iPhone手机") == 3
    for text in ("how-to guide", "St. John's wort", "Nebenwirkungen von Ibuprofen bei Kindern", "a - b", ""):
        assert word_count(text) == len(text.split())
    assert words("Ärztliche Schweigepflicht") == ["ärztliche", "schweigepflicht"]
    assert words("发烧 fever") == ["发", "烧", "fever"]


def test_a_chinese_query_is_not_too_short_and_near_duplicates_are_found_by_characters():
    queries = [{"query_id": "a", "passage_id": "p1", "text": "儿童发烧怎么办"},
               {"query_id": "b", "passage_id": "p2", "text": "发烧儿童怎么办"},  # the same characters reordered
               {"query_id": "c", "passage_id": "p3", "text": "高血压"},
               {"query_id": "d", "passage_id": "p4", "text": "Kinder Fieber"}]
    kept, dropped = filter_queries(queries, FilterConfig(min_words=2))
    assert [q["query_id"] for q in kept] == ["a", "c", "d"]
    assert [q["query_id"] for q in dropped["near_duplicate"]] == ["b"] and not dropped["too_short"]


def test_display_width_counts_wide_characters_twice():
    from embedtune.text_units import display_width

    assert display_width("kidney cyst") == 11 and display_width("肾囊肿") == 6 and display_width("iPhone手机") == 10
