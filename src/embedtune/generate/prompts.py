"""Prompts for synthetic queries: one query type per prompt (keyword, question, claim, plain), each with a
few domain-neutral examples shown as earlier chat turns, or as earlier 'Text:/Label:' blocks for base models.

Small generators copy the form of the examples far more reliably than they follow an instruction, so every
type carries examples; users replace them (and add types) from config: `generator.prompt.types.<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedtune.generate.languages import LANGUAGES

@dataclass
class FewShot:
    passage: str = ""   # an example passage
    query: str = ""     # the query the model should write for it


@dataclass
class QueryType:
    instruction: str = ""        # what to write, shown with every passage
    label: str = "Query"         # the answer's label in the completion format (models without a chat template)
    examples: list[FewShot] = field(default_factory=list)  # earlier turns that show the form of the answer
    max_new_tokens: int = 24     # longest answer of this type, in tokens (capped by generator.max_new_tokens)
    prefill: str = ""            # text the answer starts with; the model continues it


MAX_NEW_TOKENS = {"keyword": 24, "question": 32, "claim": 32, "plain": 24}


def builtin_types(language: str = "en") -> dict[str, QueryType]:
    """The four built-in query types, their instructions and examples written in `language` (generate/languages.py).
    The three example passages come from unrelated fields and are shared by the types: the same text yields each
    kind of query, which shows the model what differs between the kinds."""
    prompts = LANGUAGES[language]
    return {kind: QueryType(instruction, label, [FewShot(p, q) for p, q in zip(prompts.passages, queries)],
                            MAX_NEW_TOKENS[kind])
            for kind, (instruction, label, queries) in prompts.types.items()}


@dataclass
class PromptConfig:
    mix: dict[str, float] = field(default_factory=lambda: {"keyword": 1.0, "question": 1.0, "claim": 1.0,
                                                           "plain": 0.0})
                                      # share of each query type (keys of `types`), e.g. generator.prompt.mix.plain=1
                                      # (chosen on HPO dev: README "Synthetic queries")
    types: dict[str, QueryType] = field(default_factory=builtin_types)  # instruction, examples, lengths per type
    domain: str = "this subject"      # fills {domain}: what the corpus is about, e.g. "human phenotypes"
    system: str = LANGUAGES["en"].system  # the system line ({domain} filled)
    passage_max_chars: int = 600      # passages are cut (at a word) to this length inside the prompt
    language: str = "en"              # corpus.language: the built-in types and system line in it (en de fr es zh ja)

    def resolved_types(self) -> dict[str, QueryType]:
        """`types`, or, where they are the English built-ins and the corpus is in another language, the built-ins
        in that language (types a user replaced are used as they are)."""
        if self.language != "en" and self.language in LANGUAGES and self.types == builtin_types("en"):
            return builtin_types(self.language)
        return self.types

    def resolved_system(self) -> str:
        if self.language != "en" and self.language in LANGUAGES and self.system == LANGUAGES["en"].system:
            return LANGUAGES[self.language].system
        return self.system


@dataclass
class Prompt:
    """One request to a backend: the same content as chat messages and as a plain completion prompt."""
    messages: list[dict[str, str]]   # for models with a chat template (and OpenAI-compatible servers)
    completion: str                  # for base models without one
    max_new_tokens: int = 24
    prefill: str = ""                # the answer starts with this (the backend returns only what follows)
    group: str = ""                  # prompts of one group share a long start that a backend may cache


def cut(text: str, limit: int) -> str:
    """`text` cut at a word to at most about `limit` characters, marked with ' ...'."""
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0] + " ..."


def passage_for_prompt(title: str, text: str, limit: int) -> str:
    """The passage as the generator reads it: the title as a sentence of its own, then the text, cut. The encoder
    reads model.passage_text ("title text"); the two need not match (the prompts were chosen on dev with this)."""
    return cut(f"{title}. {text}" if title else text, limit)


def render(kind: str, passage: str, cfg: PromptConfig, max_new_tokens: int) -> Prompt:
    """The prompt asking for a query of type `kind` for `passage` (already cut to length)."""
    qtype = cfg.resolved_types()[kind]
    system = cfg.resolved_system().format(domain=cfg.domain)
    messages = [{"role": "system", "content": system}]
    blocks = [f"{system} {qtype.instruction}"]
    for ex in qtype.examples:
        messages += [{"role": "user", "content": f"Text: {ex.passage}\n\n{qtype.instruction}"},
                     {"role": "assistant", "content": ex.query}]
        blocks.append(f"Text: {ex.passage}\n{qtype.label}: {ex.query}")
    messages.append({"role": "user", "content": f"Text: {passage}\n\n{qtype.instruction}"})
    blocks.append(f"Text: {passage}\n{qtype.label}:")
    return Prompt(messages, "\n\n".join(blocks), min(qtype.max_new_tokens, max_new_tokens), qtype.prefill,
                  group=kind)
