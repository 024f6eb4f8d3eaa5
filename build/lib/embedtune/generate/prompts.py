"""Prompt templates for synthetic queries: one per query style, with a domain slot and optional few-shot."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TEMPLATES = {
    "keyword": ("Write a short search query, a few words long, that someone looking for information on "
                "{domain} would type to find the text below. Reply with the query only."),
    "question": ("Write one question about {domain} that the text below answers. "
                 "Reply with the question only."),
    "claim": ("Write one short statement about {domain} that the text below supports, in your own words. "
              "Reply with the statement only."),
}


@dataclass
class FewShot:
    passage: str = ""   # an example passage
    query: str = ""     # the query it should produce


@dataclass
class PromptConfig:
    templates: list[str] = field(default_factory=lambda: ["keyword"])  # query styles: keyword, question, claim
    domain: str = "this subject"      # fills {domain}: what the corpus is about, e.g. "human phenotypes"
    examples: list[FewShot] = field(default_factory=list)  # few-shot examples shown before each passage
    sample_examples: int = 0          # without `examples`: bootstrap this many from the corpus (a zero-shot
                                      # query for each of a fixed sample of passages), the same in every shard
    passage_max_chars: int = 600      # passages are cut (at a word) to this length inside the prompt


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def render(template: str, title: str, text: str, cfg: PromptConfig) -> list[dict[str, str]]:
    """Chat messages for one passage (models without a chat template get them flattened by the backend)."""
    instruction = TEMPLATES[template].format(domain=cfg.domain)
    passage = _cut(f"{title}. {text}" if title else text, cfg.passage_max_chars)
    messages = []
    for ex in cfg.examples:
        messages.append({"role": "user", "content": f"{instruction}\n\nText: {ex.passage}"})
        messages.append({"role": "assistant", "content": ex.query})
    messages.append({"role": "user", "content": f"{instruction}\n\nText: {passage}"})
    return messages


def flatten(messages: list[dict[str, str]]) -> str:
    """A completion-style prompt for base models: the exchange as plain 'Text:/Query:' lines."""
    parts = []
    for m in messages:
        parts.append(m["content"] + "\nQuery:" if m["role"] == "user" else f" {m['content']}\n\n")
    return "".join(parts)


_LEAD = re.compile(r"^\s*(?:query|question|statement|search query|answer)\s*:\s*", re.I)
_NUMBER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")


def clean_query(raw: str) -> str:
    """First non-empty line of the output, without 'Query:' labels, list markers or wrapping quotes."""
    for line in raw.splitlines():
        line = _NUMBER.sub("", _LEAD.sub("", line)).strip().strip('"“”\'`').strip()
        if line:
            return " ".join(line.split())
    return ""
