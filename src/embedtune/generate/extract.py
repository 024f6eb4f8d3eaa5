"""Reduce a generator's answer to the query it contains, or drop it with a named reason.

Small models wrap queries in chatter ("The query is: ...", 'A search query for "X" would be:'), echo the
prompt's "Text:" label with the passage after it, run on into a copy of the passage, repeat themselves, or
append words from the few-shot examples. Each rule below handles one of those forms, seen in real outputs
of the default generator (tests/data/generator_outputs.jsonl holds a sample with the expected results).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from embedtune.text_units import is_cjk_char, word_spans, words

# Reasons an answer holds no query (the keys of the `dropped` counts of the filter stage).
EMPTY = "empty"                # nothing, or only punctuation
CHATTER = "chatter"            # talk about the task or the text, no query in it
ECHO = "prompt_echo"           # the prompt's "Text:" label with (part of) the passage after it
REPETITION = "repetition"      # a degenerate loop ("dental disease, dental disease, ...")
EXAMPLE = "example_echo"       # words of a few-shot example that are not in the passage
UNFINISHED = "unfinished"      # cut by max_new_tokens: a ramble or a loop that never ended
NOT_A_QUESTION = "not_a_question"  # asked for a question, got something else

META = r"(?:search\s+)?(?:query|queries|question|keywords?|search|statement|claim|answer|output|response|text)"
_ADJ = r"(?:(?:short|simple|possible|good|final|suggested|keyword|plain|everyday|one|relevant|new)\s+)*"
_COPULA = r"(?:is|are|would\s+be|could\s+be|should\s+be|might\s+be|will\s+be|can\s+be)"
_LABEL = re.compile(rf"^\s*(?:[QA]\s*:|{_ADJ}{META}\s*:|"                        # "Query:", "A:"
                    rf"(?:the|a|an|my|your|one)\s+{_ADJ}{META}(?:\s+\S+){{0,8}}?\s*:|"  # "The query to find it is:"
                    rf"{_ADJ}{META}(?:\s+\S+){{0,8}}?\s+{_COPULA}\s*:)\s*", re.I)   # "Search query for X would be:"
_POLITE = re.compile(r"^\s*(?:sure|okay|ok|certainly|of course|absolutely|great|here(?:'s| is| are)|"
                     r"i(?:'d| would) (?:search|type|use|suggest)|you (?:could|can|might) (?:search|type|use))"
                     r"\b[^:\n]{0,80}:\s*", re.I)
_FOR_X_WOULD_BE = re.compile(rf"^\s*(?:an?\s+|the\s+)?{_ADJ}{META}\s+(?:for|about|on|to find)\s+"
                             r"[\"“']([^\"”']{2,120})[\"”'].{0,60}?(?:would|could|should|might|is|:)", re.I)
_TEXT_LABEL = re.compile(r"^\s*(?:text|passage|document|article)\s*:", re.I)
# the same labels and openers in other languages (full-width colons too): "搜索：...", "Suchanfrage: ..."
_LABEL_I18N = re.compile(r"^\s*(?:搜索查询|搜索|查询|问题|検索クエリ|クエリ|検索|質問|suchanfrage|suchbegriff|suche|anfrage|"
                         r"frage|requête|recherche|consulta|búsqueda|pregunta)\s*[:：]\s*", re.I)
_POLITE_I18N = re.compile(r"^\s*(?:好的|当然|这是|以下是|はい|こちら|hier ist|hier sind|gerne|voici|aquí está|aquí tienes)"
                          r"[^:：\n]{0,60}[:：]\s*", re.I)
_EXCLAMATION = re.compile(r"^[^.!?:]{0,60}!\s+")  # "What a fascinating topic! ..."
_INTERROGATIVE = re.compile(r"^\s*(?:what|which|who|whom|whose|when|where|why|how|is|are|was|were|do|does|did|"
                            r"can|could|should|would|will|may|might|has|have|had|in what|at what)\b", re.I)
_CHATTER = re.compile(
    r"^\s*(?:(?:the|this|that|your)\s+(?:text|passage|document|article|query|question|search)\s+"
    r"(?:you\s+)?(?:provided|given|above|below|supports?|asks?|describes?|discusses|mentions|highlights|explains|"
    r"talks|says|states|provides|suggests|shows|refers|seems|appears|is\s+(?:about|asking|describing|discussing|"
    r"related|talking))|"
    r"i(?:'m| am)\s+(?:sorry|not sure|unable|happy)|i\s+(?:cannot|can't|can not|don't|do not|would|will)\b|"
    r"as an ai\b|sorry\b|unfortunately\b|(?:here(?:'s| is| are)|sure|okay|certainly)\b|"
    r"(?:der|dieser|die|diese|das) (?:text|passage|abschnitt|dokument)\b|(?:这段|该)(?:文字|文本|段落))"
    r"|\b(?:would type to find|to find (?:the|this) (?:text|passage)|the (?:text|passage) (?:below|above)|"
    r"you provided|reply with the|let me know|hope this helps)\b", re.I)
# Words that carry no topic: a query made only of these and stopwords is talk about the task.
META_WORDS = frozenset("""answer answers ask asked asking asks about article document fascinating explore further
    dive deeper mean means meaning passage query question questions requires response specific text topic
    concise accurate lets let s""".split())
_TRAILER = re.compile(r"(?:\s+[-–—]\s+(?:this|it|which|that)\b|"
                      r"\s*\((?:this|it|which|that|note|the query|the text)\b|"
                      r"[.!]\s+(?:this|it|that|these|the query|the text|i|note)\b).*$", re.I | re.S)
_APPOSITION = re.compile(r",\s+(?:which|that|where|when|who|often|usually|also)\s.*$|"
                         r",\s+(?:a|an|the)\s(?=[^,]*\b(?:that|which|who|where|characteri[sz]ed|caused|causes|condition|"
                         r"disorder|disease|syndrome|term|type|form|refers|affects|occurs|results|is|are|was|were)\b).*$",
                         re.I | re.S)  # "x, a rare disorder that ...": search + definition; "fever, a sore throat" a list
_SENTENCE_END = re.compile(r"(?:(?<=\w\w)|(?<=[)\]]))[.!;]\s+(?=[A-Z(])|[。！；]")  # "vWF. A lack" splits, "e.g. A" not
# words whose period is no sentence end ("St. John's wort", "aspirin vs. Tylenol", "Vitamin D bzw. Calcium")
ABBREVIATIONS = frozenset("""st dr mr mrs ms mx prof vs etc approx ca cf fig no nr vol ed eds inc ltd jr sr dept
    bzw usw ggf evtl sog ca resp ref""".split())
_LOWER_SENTENCE_END = re.compile(r"(?<=\w\w\w)[.!;]\s+(?=[a-z])")  # "x concentration. reduced x ..." ("vs. b" stays)
_QUESTION_END = re.compile(r"\?\s+\S.*$", re.S)
_QUOTES = "\"“”'‘’`「」『』„"
_CLOSING = {'"': '"”', "“": "”\"", "'": "'’", "‘": "’'", "`": "`", "「": "」", "『": "』", "„": "“\"", "”": "”"}


@dataclass(frozen=True)
class Extraction:
    query: str            # the query, "" when dropped
    reason: str = ""      # why it was dropped ("" when kept)
    chatter: bool = False  # the answer held more than the query (labels, preambles, trailers)




def _unquote(text: str) -> str:
    """The text inside an opening quote and its own closing quote; the whole text where words follow the
    closing quote ('"heart murmur" in infants': a quoted part of a longer query); a lone trailing quote dropped."""
    text = text.strip()
    if text[:1] in _CLOSING:
        closing = _CLOSING[text[0]]
        close = next((i for i in range(1, len(text)) if text[i] in closing), None)
        inner = text[1:close] if close else text[1:]
        if close and re.match(r"\s*[\w(]", text[close + 1:]):
            return text
        return inner.strip()
    return text[:-1] if text and text[-1] in _QUOTES and not _balanced(text) else text


def _balanced(text: str) -> bool:
    """Whether the text's last character closes a quote opened in it ("open 'package.json'")."""
    last = text[-1]
    if last in "'\"`":
        return text.count(last) % 2 == 0 or (last == "'" and text.count("'") > 1)
    return any(o in text for o, closes in _CLOSING.items() if last in closes and o != last)


def _first_sentence(text: str, ends: re.Pattern) -> str:
    """`text` up to the first sentence end that does not follow an abbreviation or a single initial."""
    for end in ends.finditer(text):
        before = re.search(r"(\w+)\W*$", text[:end.start() + 1])
        word = before.group(1).lower() if before else ""
        if text[end.start()] == "." and (word in ABBREVIATIONS or len(word) == 1):
            continue
        return text[:end.start()]
    return text


def _is_loop(tokens: list[str]) -> bool:
    """A word run or a 1-3-word phrase repeated three times or more in a row, or half the words repeats."""
    if len(tokens) >= 6 and len(set(tokens)) <= len(tokens) / 2:
        return True
    for size in (1, 2, 3):
        for i in range(len(tokens) - 3 * size + 1):
            unit = tokens[i:i + size]
            if tokens[i + size:i + 2 * size] == unit and tokens[i + 2 * size:i + 3 * size] == unit:
                return True
    return False


STOPWORDS = frozenset("""a about after all an and any are as at be been before between but by can could do does
    during for from had has have how i if in into is it its may might more most much no not of on or other our out
    over same should so some such than that the their then there these they this those to under up very was we were
    what when where which who why will with without would you your""".split())


def _example_echo(query: str, passage: str, example_queries: list[str]) -> str | None:
    """The query without a tail copied from a few-shot example, or None when an example's words stand
    elsewhere in it; the query itself when there is no echo. An echo is a run of 2+ words of an example
    query, none of them in the passage, not all of them stopwords ("how do" is no echo)."""
    q_words, p_words = words(query), set(words(passage))
    for example in example_queries:
        e_words = words(example)
        for size in range(len(e_words), 1, -1):
            for start in range(len(e_words) - size + 1):
                span = e_words[start:start + size]
                if any(w in p_words for w in span) or all(w in STOPWORDS for w in span) or _weight(span) < 2:
                    continue
                at = next((i for i in range(len(q_words) - size + 1) if q_words[i:i + size] == span), None)
                if at is None:
                    continue
                if at + size == len(q_words) and at > 0:
                    return query[:_nth_word_end(query, at)].rstrip(" ,;:-")
                return None
    return query


def _weight(span: list[str]) -> float:
    """Words in a span, a CJK character counting half (two-character words such as 怎么 are common to any two
    Chinese questions, so an echo needs four characters)."""
    return sum(0.5 if is_cjk_char(w) else 1 for w in span)


def _nth_word_end(text: str, n: int) -> int:
    """Index in `text` just after its n-th word."""
    spans = word_spans(text)
    return spans[n - 1][1] if n else 0


def _reaches_end(query: str, raw: str) -> bool:
    """Whether the query's last word is the answer's last word (nothing after it was cut away)."""
    q, r = words(query), words(raw)
    return bool(q) and r[-len(q):] == q


def extract_query(raw: str, kind: str = "keyword", passage: str = "",
                  example_queries: tuple[str, ...] | list[str] = (), finished: bool = True) -> Extraction:
    """The query in one answer of the generator for a query of type `kind` about `passage` (`finished`: the
    model ended the answer itself rather than running into max_new_tokens)."""
    text = " ".join(raw.strip().split("\n", 1)[0].split()) if raw.strip() else ""
    if not re.search(r"\w", text):
        return Extraction("", EMPTY)
    chatter = False
    if _TEXT_LABEL.match(text):
        return Extraction("", ECHO, True)
    opener = _EXCLAMATION.sub("", text, count=1)
    if opener != text and re.search(r"\w", opener):
        text, chatter = opener, True
    quoted = _FOR_X_WOULD_BE.match(text)
    if quoted:
        text, chatter = quoted.group(1), True
    for pattern in (_POLITE, _POLITE_I18N, _LABEL, _LABEL_I18N, _LABEL):  # "Sure! Here is a query: Query: ..." peels twice
        stripped = pattern.sub("", text, count=1)
        if stripped != text:
            text, chatter = stripped, True
    if _TEXT_LABEL.match(text):
        return Extraction("", ECHO, True)
    unquoted = _unquote(text)
    chatter |= unquoted != text and text[:1] in _QUOTES and len(unquoted) < len(text) - 2
    text = unquoted
    trimmed = _TRAILER.sub("", text)
    if trimmed != text and re.search(r"\w", trimmed):
        text, chatter = trimmed, True
    if kind == "question":
        text = _QUESTION_END.sub("?", text)
    else:
        text = _first_sentence(text, _SENTENCE_END)
    if kind in ("keyword", "plain"):  # "distal clavicle thinning, a condition of ..." is search + definition
        text = _APPOSITION.sub("", _first_sentence(text, _LOWER_SENTENCE_END))
    text = text.strip(" \t")
    if text[:1] in _CLOSING and text[-1:] in _CLOSING[text[0]] and len(text) > 2:
        text = text[1:-1].strip()
    if kind != "question":
        text = text.rstrip(" .,;:!。")
    if not re.search(r"\w", text):
        return Extraction("", CHATTER if chatter else EMPTY, chatter)
    if _CHATTER.search(text) or all(w in STOPWORDS or w in META_WORDS for w in words(text)):
        return Extraction("", CHATTER, True)
    if _is_loop(words(text)):
        return Extraction("", REPETITION, chatter)
    if not finished and _reaches_end(text, raw) and not raw.rstrip().endswith(("?", ".", "!", '"')):
        # the limit cut the query itself (not a ramble after it, nor at its natural end)
        return Extraction("", UNFINISHED, chatter)
    if kind == "question" and not (text.endswith(("?", "？")) or _INTERROGATIVE.match(text)):
        return Extraction("", NOT_A_QUESTION, chatter)
    if example_queries:
        kept = _example_echo(text, passage, list(example_queries))
        if kept is None or not re.search(r"\w", kept):
            return Extraction("", EXAMPLE, chatter)
        chatter |= kept != text
        text = kept
    return Extraction(text, "", chatter)


_META_LEFT = re.compile(r"\b(?:query|queries|search query|keywords?|the text|this text|the passage|this passage|"
                        r"here is|here's|reply|answer:)\b", re.I)


def looks_like_chatter(query: str) -> bool:
    """A second, broader look at a kept query for talk about the task: any label, preamble or remark form
    above, or meta words ("query", "the text", "here is") anywhere. Used to measure, not to filter: a corpus
    about databases has real queries that say "query"."""
    return bool(_LABEL.match(query) or _POLITE.match(query) or _TEXT_LABEL.match(query)
                or _CHATTER.search(query) or _META_LEFT.search(query)
                or all(w in STOPWORDS or w in META_WORDS for w in words(query)))
