"""What every generator backend returns for a prompt: the answer's first line, and whether the model ended it;
and P(yes) of a yes/no answer from its first token's log-probabilities (the LLM teacher and judge read it)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Answer:
    text: str        # the answer's first line
    finished: bool   # False when it ran into max_new_tokens (a ramble or a loop, cut mid-way)


def first_line(text: str) -> str:
    """The answer up to its first line break after some text."""
    stripped = text.lstrip()
    return stripped.split("\n", 1)[0] if stripped else ""


def answer_of(text: str, hit_limit: bool) -> Answer:
    """An answer is finished when the model ended it (end of sequence or a line break) within its budget."""
    return Answer(first_line(text), not hit_limit or "\n" in text.lstrip())


def yes_no_probability(logprobs: dict[str, float]) -> float:
    """P(yes) among yes/no from a next token's log-probabilities by token text (case and spaces ignored);
    nan when neither word is among them."""
    yes = sum(math.exp(lp) for token, lp in logprobs.items() if token.strip().lower() == "yes")
    no = sum(math.exp(lp) for token, lp in logprobs.items() if token.strip().lower() == "no")
    return yes / (yes + no) if yes + no > 0 else math.nan
