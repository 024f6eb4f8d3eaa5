"""Optional LLM judge for synthetic queries: any generator backend rates how well a passage answers a query."""

from __future__ import annotations

import re
from dataclasses import dataclass

from embedtune.generate.backends import BackendConfig, make_backend
from embedtune.generate.prompts import Prompt

PROMPT = ("Rate how well the passage answers the search query, from 1 (unrelated) to 5 (a perfect answer). "
          "Reply with the number only.\n\nQuery: {query}\n\nPassage: {passage}")


@dataclass
class JudgeConfig(BackendConfig):
    enabled: bool = False             # score every kept query with an LLM and drop low scores
    min_score: int = 3                # keep queries the judge rates at least this (1-5); unparsable = 0
    max_new_tokens: int = 4           # a number is all the judge should write
    passage_max_chars: int = 1000     # passages are cut to this length in the prompt


def parse_score(text: str) -> int:
    """The first digit 1-5 in the judge's answer, or 0 when there is none."""
    match = re.search(r"[1-5]", text)
    return int(match.group()) if match else 0


def judge_queries(queries: list[dict], passages: dict[str, str], cfg: JudgeConfig) -> list[int]:
    """A 0-5 score per query (0: the judge's answer held no score)."""
    if not queries:
        return []
    backend = make_backend(cfg)
    prompts = []
    for q in queries:
        text = PROMPT.format(query=q["text"], passage=passages[q["passage_id"]][:cfg.passage_max_chars])
        prompts.append(Prompt([{"role": "user", "content": text}], f"{text}\n\nScore:", cfg.max_new_tokens,
                              group="judge"))
    return [parse_score(answer.text) for answer in backend.generate(prompts)]


def judge_filter(queries: list[dict], passages: dict[str, str], cfg: JudgeConfig) -> tuple[list[dict], list[dict]]:
    """(kept, dropped): each query with its `judge_score`, kept where it is at least cfg.min_score."""
    judged = [{**q, "judge_score": s} for q, s in zip(queries, judge_queries(queries, passages, cfg))]
    return ([q for q in judged if q["judge_score"] >= cfg.min_score],
            [q for q in judged if q["judge_score"] < cfg.min_score])
