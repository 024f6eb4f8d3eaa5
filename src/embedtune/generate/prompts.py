"""Prompts for synthetic queries: one query type per prompt (keyword, question, claim, plain), each with a
few domain-neutral examples shown as earlier chat turns, or as earlier 'Text:/Label:' blocks for base models.

Small generators copy the form of the examples far more reliably than they follow an instruction, so every
type carries examples; users replace them (and add types) from config: `generator.prompt.types.<name>`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Three short passages from unrelated fields, shared by the built-in types: the same text yields each kind
# of query, which shows the model what differs between the kinds.
_BREAD = ("Sourdough starter. A mixture of flour and water fermented by wild yeast and lactic acid bacteria. "
          "It is fed every day and used to leaven bread without commercial yeast.")
_CONTRACT = ("Force majeure. A contract clause that frees both parties from liability when an extraordinary "
             "event beyond their control, such as a war or a flood, prevents them from meeting their obligations.")
_BONDS = ("Bond duration. A measure of how sensitive a bond's price is to changes in interest rates, expressed "
          "in years; the longer the duration, the larger the price swing.")


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


def _type(instruction: str, label: str, queries: tuple[str, str, str], max_new_tokens: int) -> QueryType:
    examples = [FewShot(p, q) for p, q in zip((_BREAD, _CONTRACT, _BONDS), queries)]
    return QueryType(instruction, label, examples, max_new_tokens)


def builtin_types() -> dict[str, QueryType]:
    return {
        "keyword": _type("Write a keyword search, 2 to 6 words, that someone would type into a search engine "
                         "to find this text.", "Search",
                         ("sourdough starter wild yeast", "force majeure clause flood", "bond duration interest rates"),
                         max_new_tokens=24),
        "question": _type("Write a question that someone would ask and that this text answers.", "Question",
                          ("How do you make bread rise without store-bought yeast?",
                           "Who is liable when a flood stops a contract?",
                           "Why do long-term bonds lose more value when rates rise?"),
                          max_new_tokens=32),
        "claim": _type("Write one short statement, in your own words, that this text supports.", "Statement",
                       ("Bread can be leavened with wild yeast.",
                        "A flood can excuse a company from its contract obligations.",
                        "Bond prices fall when interest rates go up."),
                       max_new_tokens=32),
        "plain": _type("Write the search that someone without special training would type to find this text, "
                       "in everyday words.", "Search",
                       ("bread starter made from flour and water", "getting out of a contract after a disaster",
                        "why my bond fund dropped when rates went up"),
                       max_new_tokens=24),
    }


@dataclass
class PromptConfig:
    mix: dict[str, float] = field(default_factory=lambda: {"keyword": 1.0, "question": 1.0, "claim": 1.0,
                                                           "plain": 0.0})
                                      # share of each query type (keys of `types`), e.g. generator.prompt.mix.plain=1
                                      # (chosen on HPO dev: README "Synthetic queries")
    types: dict[str, QueryType] = field(default_factory=builtin_types)  # instruction, examples, lengths per type
    domain: str = "this subject"      # fills {domain}: what the corpus is about, e.g. "human phenotypes"
    system: str = ("You write the search queries that people interested in {domain} type to find texts. "
                   "Reply with the query only.")
    passage_max_chars: int = 600      # passages are cut (at a word) to this length inside the prompt


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
    qtype = cfg.types[kind]
    system = cfg.system.format(domain=cfg.domain)
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
