"""Words for counting and comparing queries in any script. Scripts written without spaces (Chinese, Japanese kana
and kanji) count one unit per character, as their words are one or two characters long; other scripts count their
runs of word characters, so English, German or Russian count exactly as a split on words does."""

from __future__ import annotations

import re
import unicodedata

_CJK = "\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"  # kana, CJK ideographs
_UNIT = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")
_CJK_CHAR = re.compile(rf"[{_CJK}]")


def words(text: str) -> list[str]:
    """Lower-cased words: runs of word characters, each CJK character on its own."""
    return _UNIT.findall(text.lower())


def word_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) in `text` of each of its `words`."""
    return [m.span() for m in _UNIT.finditer(text)]


def is_cjk_char(word: str) -> bool:
    """A single kana or CJK ideograph (what `words` yields one character at a time)."""
    return len(word) == 1 and bool(_CJK_CHAR.match(word))


def word_count(text: str) -> int:
    """Words as a reader counts them: space-separated tokens, with each CJK character of a token one word
    ("how-to guide" 2, "儿童发烧怎么办" 7, "iPhone手机" 3)."""
    count = 0
    for token in text.split():
        cjk, rest = len(_CJK_CHAR.findall(token)), _CJK_CHAR.sub("", token)
        count += cjk + (1 if rest and (not cjk or re.search(r"\w", rest)) else 0)
    return count


def display_width(text: str) -> int:
    """Length as a reader sees it: wide (East Asian) characters count 2, as on a terminal; a 15-character
    Chinese sentence says about what 30 Latin letters do."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)
