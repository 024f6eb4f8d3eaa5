"""The configuration reference, read from the dataclasses themselves: every field's dotted name, type, default,
the comment beside it in the source, and whether it enters the stage key (fields made with `not_in_key` do not).
The docs site's reference page is generated from this at build time, so docs and code cannot disagree."""

from __future__ import annotations

import dataclasses
import inspect
import io
import tokenize
from dataclasses import dataclass

from embedtune.config import Config

# which stages' keys each section enters (runs.stage_of builds the keys; tests/test_docs.py checks this against
# it); sections not named here (logger, plan, serve, paths) and the run's own fields enter none
SECTION_STAGES = {
    "corpus": "prepare", "model": "prepare (model.name), filter, mine, train, eval", "generator": "generate",
    "filter": "filter", "mining": "mine", "teacher": "score", "loss": "train", "train": "train", "peft": "train",
    "eval": "eval", "export": "export (export.merge_alpha: eval too)",
}


@dataclass(frozen=True)
class FieldDoc:
    name: str        # dotted: generator.prompt.mix
    type: str        # as annotated
    default: str     # repr of the default ("" for a section)
    comment: str     # the comment beside the field in the source (continued on following comment-only lines)
    in_key: bool     # False for fields made with not_in_key(...) and for every field of a section no stage key holds
    section: str     # for a nested dataclass (its fields follow), its module.Class; "" for a plain field
    owner: str       # module.Class that declares the field (a base class for inherited fields)


def field_comments(cls: type) -> dict[str, str]:
    """{field name: its comment} from the class body's source: the comment on the field's line, joined with the
    comment-only lines right below it (before the next field)."""
    source = inspect.getsource(cls)
    comments: dict[str, list[str]] = {}
    current = None
    depth = 0
    line_tokens: dict[int, list[tokenize.TokenInfo]] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line_tokens.setdefault(tok.start[0], []).append(tok)
    names = {f.name for f in dataclasses.fields(cls)}
    for row in sorted(line_tokens):
        tokens = [t for t in line_tokens[row] if t.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                                                 tokenize.DEDENT, tokenize.ENDMARKER)]
        if not tokens:
            continue
        first = tokens[0]
        if depth == 0 and first.type == tokenize.NAME and first.string in names and len(tokens) > 1 \
                and tokens[1].string == ":" and first.start[1] > 0:
            current = first.string
            comments[current] = []
        elif first.type == tokenize.COMMENT:
            if current is not None and depth == 0:
                comments[current].append(first.string.lstrip("#").strip())
            continue
        elif depth == 0:
            current = None if first.string in ("def", "@", "class") else current
        for t in tokens:
            if t.type == tokenize.OP and t.string in "([{":
                depth += 1
            elif t.type == tokenize.OP and t.string in ")]}":
                depth -= 1
            elif t.type == tokenize.COMMENT and current is not None:
                comments[current].append(t.string.lstrip("#").strip())
    return {name: " ".join(c for c in parts if c) for name, parts in comments.items()}


def _default(f: dataclasses.Field) -> tuple[str, object]:
    if f.default is not dataclasses.MISSING:
        return repr(f.default), f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return ("" if dataclasses.is_dataclass(value) else repr(value)), value
    return "(required)", None


def inherited_comments(cls: type) -> dict[str, tuple[str, str]]:
    """{field: (comment, declaring class)} over the dataclass bases too (GeneratorConfig's BackendConfig fields)."""
    found: dict[str, tuple[str, str]] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and "__annotations__" in base.__dict__:
            own = set(base.__dict__["__annotations__"])
            for name, text in field_comments(base).items():
                if name in own:
                    found[name] = (text, f"{base.__module__}.{base.__qualname__}")
    return found


def reference(cls: type, prefix: str = "") -> list[FieldDoc]:
    """Every field of `cls` and of the sections nested in it, depth first, in declaration order."""
    comments = inherited_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        shown, value = _default(f)
        nested = dataclasses.is_dataclass(value) and not isinstance(value, type)
        section = f"{type(value).__module__}.{type(value).__qualname__}" if nested else ""
        comment, owner = comments.get(f.name, ("", f"{cls.__module__}.{cls.__qualname__}"))
        in_key = f.metadata.get("key", True) and f"{prefix}{f.name}".split(".")[0] in SECTION_STAGES
        rows.append(FieldDoc(f"{prefix}{f.name}", str(f.type), shown, comment, in_key, section, owner))
        if nested:
            rows += reference(type(value), f"{prefix}{f.name}.")
    return rows


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(cls: type = Config) -> str:
    """The reference as Markdown: one table per top-level section."""
    rows = reference(cls)
    out = ["# Configuration reference", "",
           "Generated from the config dataclasses (`src/embedtune/config_reference.py`) each time the site is built.",
           "Every field is an override: `embedtune <stage> generator.max_passages=500`. **key**: the field enters the",
           "keys of the stages named under its section, so changing it reruns them (and what follows); fields marked",
           "`-` (encoding batch sizes, logging, retries, checkpoint cadence, and every field of a section that no stage",
           "key holds) never rerun a stage.", ""]
    top = [r for r in rows if "." not in r.name and not r.section]
    if top:
        out += ["## Run", "", "| field | type | default | key | what it does |", "| --- | --- | --- | --- | --- |"]
        out += [f"| `{r.name}` | `{_cell(r.type)}` | `{_cell(r.default)}` | {'yes' if r.in_key else '-'} | "
                f"{_cell(r.comment)} |" for r in top]
        out.append("")
    for head in (r for r in rows if "." not in r.name and r.section):
        out += [f"## {head.name}", ""]
        if head.comment:
            out += [head.comment, ""]
        stages = SECTION_STAGES.get(head.name, "none (read when the command runs, never part of a stage key)")
        out += [f"Declared in `{head.section}`. Stage keys: {stages}.", "",
                "| field | type | default | key | what it does |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            if r.name.startswith(head.name + "."):
                default = "(section)" if r.section else f"`{_cell(r.default)}`"
                out.append(f"| `{r.name}` | `{_cell(r.type)}` | {default} | {'yes' if r.in_key else '-'} | "
                           f"{_cell(r.comment)} |")
        out.append("")
    return "\n".join(out)


def undocumented(cls: type = Config) -> list[str]:
    """Dotted names of fields without a comment beside them."""
    return [f"{r.name} ({r.owner})" for r in reference(cls) if not r.comment]
