"""BM25 (bm25s, Lucene-style, k1=1.5, b=0.75) in the corpus's language: its stop words and Snowball stemmer where
bm25s and PyStemmer have them, overlapping character pairs for Chinese and Japanese (written without spaces, so
words are not found by splitting). English keeps the unstemmed form the README's tables were measured with."""

from __future__ import annotations

import logging

from embedtune.text_units import words

# language -> (bm25s stop words, Snowball stemmer); None: none
SETTINGS = {"en": ("en", None), "de": ("german", "german"), "fr": ("french", "french"), "es": ("spanish", "spanish"),
            "it": ("italian", "italian"), "pt": ("portuguese", "portuguese"), "nl": ("dutch", "dutch"),
            "ru": ("russian", "russian"), "sv": ("swedish", "swedish"), "da": ("danish", "danish"),
            "no": ("norwegian", "norwegian"), "tr": ("turkish", "turkish"), "zh": ("chinese", None), "ja": (None, None)}
CHARACTER_PAIRS = ("zh", "ja")


def _pairs(text: str) -> list[str]:
    """Overlapping pairs of CJK characters within each run of them (a lone one kept), other words whole."""
    tokens = []
    for chunk in text.split():
        run = []
        for u in words(chunk) + [""]:
            if len(u) == 1 and ord(u) >= 0x3040:
                run.append(u)
                continue
            tokens += [a + b for a, b in zip(run, run[1:])] or run
            run = []
            if u:
                tokens.append(u)
    return tokens


def tokenize(texts: list[str], language: str):
    import bm25s

    stopwords, stemmer_name = SETTINGS.get(language, (None, None))
    if language in CHARACTER_PAIRS:
        from bm25s.stopwords import STOPWORDS_CHINESE

        stop = set(STOPWORDS_CHINESE) if stopwords else set()
        return [[t for t in _pairs(text) if t not in stop] for text in texts]
    stemmer = None
    if stemmer_name:
        import Stemmer

        stemmer = Stemmer.Stemmer(stemmer_name)
    return bm25s.tokenize(texts, stopwords=stopwords or [], stemmer=stemmer, show_progress=False)


def bm25_search(corpus: list[str], queries: list[str], language: str, k: int) -> tuple[list, list]:
    """(rows, scores) of the top `k` corpus texts for each query."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    retriever = bm25s.BM25()
    retriever.index(tokenize(corpus, language), show_progress=False)
    found, scores = retriever.retrieve(tokenize(queries, language), k=min(k, len(corpus)), show_progress=False)
    return found, scores
