"""What every local generator backend does the same way: the prompt's text and token ids from the model's own
tokenizer, the shared few-shot start of a group of prompts, and the no-repeat rule for answers."""

from __future__ import annotations

import numpy as np

from embedtune.generate.prompts import Prompt

MIN_SHARED_TOKENS = 16  # a shared prompt start shorter than this is not worth a cache
NO_REPEAT = 3           # no token 3-gram twice within an answer


def prompt_text(tokenizer, chat: bool, prompt: Prompt) -> str:
    """The prompt through the model's chat template (or as a completion for base models), then its prefill."""
    if chat:
        text = tokenizer.apply_chat_template(prompt.messages, tokenize=False, add_generation_prompt=True)
    else:
        text = prompt.completion
    return text + prompt.prefill


def prompt_ids(tokenizer, chat: bool, prompts: list[Prompt]) -> list[list[int]]:
    """Token ids of each prompt (a chat template writes its own special tokens)."""
    return tokenizer([prompt_text(tokenizer, chat, p) for p in prompts], add_special_tokens=not chat)["input_ids"]


def shared_start(sequences: list[list[int]]) -> int:
    """Length of the longest common start of token sequences, leaving every sequence at least one token."""
    n = min(len(s) for s in sequences) - 1
    first = sequences[0]
    for s in sequences[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return max(n, 0)


def banned_tokens(answer: list[int], n: int = NO_REPEAT) -> list[int]:
    """The tokens that would complete an n-gram the answer already holds (the prompt may repeat freely, so
    passage terms can still be copied). Greedy decoding of small models otherwise loops ("blood blood ...")."""
    if len(answer) < n:
        return []
    tail = answer[len(answer) - n + 1:]
    return [answer[i + n - 1] for i in range(len(answer) - n + 1) if answer[i:i + n - 1] == tail]


def prompt_groups(prompts: list[Prompt]) -> dict[tuple[str, int], list[int]]:
    """Indices of the prompts by (group, token budget): the prompts that share a few-shot start and a length."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault((p.group, p.max_new_tokens), []).append(i)
    return groups


def line_break_tables(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: whether its text holds a line break, and whether it holds any non-blank text (an answer
    stops at its first line break after some text)."""
    pieces = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return np.array(["\n" in p for p in pieces]), np.array([bool(p.strip()) for p in pieces])
