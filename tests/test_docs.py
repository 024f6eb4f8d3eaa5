"""The documentation is checked: the site builds in strict mode, every config field carries its comment (the
reference page is generated from them), and every shell or Python example is run by a named test, composed and
validated here (each `embedtune` command's overrides), or marked as needing what this machine lacks."""

from __future__ import annotations

import inspect
import re
import shlex
from pathlib import Path

import pytest

from embedtune import config_reference, runs
from embedtune.config import Config
from embedtune.validate import check_config
from helpers import compose_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
MARKER = re.compile(r"<!-- example: (.+?) -->")
KINDS = ("checked", "test ", "needs ")


def examples() -> list[tuple[Path, int, str, str, str]]:
    """(page, line, language, marker text or "", code) of every fenced block."""
    found = []
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\w*)", lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marker = MARKER.search(lines[i - 1]) if i else None
            found.append((page, i + 1, fence.group(1), marker.group(1) if marker else "", "\n".join(lines[i + 1:end])))
            i = end + 1
    return found


def commands(code: str) -> list[list[str]]:
    """The shell commands of a block as token lists, as bash splits them: a backslash-newline joins two lines
    (and vanishes), quotes spanning lines are kept together, comments dropped."""
    out, pending, joined = [], "", False
    for line in code.splitlines():
        pending = (pending + line if joined else f"{pending}\n{line}") if pending else line
        joined = pending.endswith("\\")
        if joined:
            pending = pending[:-1]
            continue
        try:
            tokens = shlex.split(pending, comments=True)
        except ValueError:  # a quote open across lines
            continue
        pending = ""
        if tokens:
            out.append(tokens)
    assert not pending, f"unterminated command: {pending!r}"
    return out


def embedtune_overrides(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(stage, overrides) of an `embedtune <stage> ...` or `... -m embedtune.cli <stage> ...` command."""
    for n, token in enumerate(tokens[:-1]):
        if token in ("embedtune", "embedtune.cli"):
            stage, rest = tokens[n + 1], tokens[n + 2:]
            break
    else:
        return None
    if "--help" in rest or any("$" in t for t in rest):
        return None
    sweep = "-m" in rest
    overrides = []
    for t in rest:
        if "=" not in t or t.startswith("-") or t.startswith("hydra"):
            continue
        key, value = t.split("=", 1)
        if sweep and "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]  # a sweep: its first point
        overrides.append(f"{key}={value}")
    return stage, overrides


@pytest.mark.parametrize("page,line,lang,marker,code", [e for e in examples() if e[2] in ("bash", "sh", "python")],
                         ids=lambda v: v.name if isinstance(v, Path) else str(v)[:20] if isinstance(v, int) else None)
def test_every_example_is_checked_tested_or_marked(page, line, lang, marker, code):
    where = f"{page.relative_to(ROOT)}:{line}"
    assert marker, f"{where}: a {lang} example without `<!-- example: checked | test FILE::NAME | needs ... -->`"
    parts = [p.strip() for p in marker.split(";")]
    assert all(p.startswith(KINDS) or p == "checked" for p in parts), f"{where}: unknown marker {marker!r}"
    for part in parts:
        if part.startswith("test "):
            path, name = part.split()[1].split("::")
            assert re.search(rf"^def {re.escape(name)}\(", (ROOT / path).read_text(), re.M), \
                f"{where}: {path} has no test {name}"
        if part == "checked":
            checked = [c for c in map(embedtune_overrides, commands(code)) if c]
            assert checked, f"{where}: marked checked but holds no embedtune command"
            for stage, overrides in checked:
                cfg = compose_config(*overrides)  # unknown keys, wrong types, missing groups: Hydra's error
                if stage not in ("serve", "plan", "status"):
                    check_config(cfg)  # impossible values and combinations
                assert isinstance(cfg, Config)


def test_the_marker_parser_sees_commands_and_sweeps():
    code = ("embedtune prepare -m corpus.chunk_tokens=128,256  # a sweep\n"
            "embedtune eval 'eval.baselines=[\n  {name: a, model: b}]'\n"
            "embedtune eval \"eval.baselines=[{name: a, \"\\\n\"model: b}]\"\n"
            "EMBEDTUNE_API_KEY=k1,k2 embedtune serve serve.port=9000 \\\n    serve.host=0.0.0.0\n"
            "embedtune train --help\n")
    parsed = [embedtune_overrides(c) for c in commands(code)]
    assert parsed == [("prepare", ["corpus.chunk_tokens=128"]), ("eval", ["eval.baselines=[\n  {name: a, model: b}]"]),
                      ("eval", ["eval.baselines=[{name: a, model: b}]"]),
                      ("serve", ["serve.port=9000", "serve.host=0.0.0.0"]), None]


def test_every_config_field_has_its_one_line_comment():
    assert config_reference.undocumented() == [], "fields without a comment beside them (the reference shows it)"


def test_the_reference_lists_every_field_and_the_stage_keys_follow_runs():
    page = config_reference.markdown()
    for row in config_reference.reference(Config):
        assert f"| `{row.name}` |" in page or (row.section and f"## {row.name}" in page), row.name
    source = inspect.getsource(runs.stage_of)
    for section in config_reference.SECTION_STAGES:
        assert f"cfg.{section}" in source, f"{section} is said to enter a stage key, but runs.stage_of never reads it"
    save_every = next(r for r in config_reference.reference(Config) if r.name == "generator.save_every")
    assert not save_every.in_key and "| `generator.save_every` | `int` | `256` | - |" in page
    assert next(r for r in config_reference.reference(Config) if r.name == "loss.temperature").in_key


def test_comments_are_read_from_the_field_line_and_the_lines_below():
    from dataclasses import dataclass

    @dataclass
    class Example:
        a: int = 1          # first line
                            # and its continuation
        b: str = "x(y"      # a parenthesis inside a string
        c: list = None

    assert config_reference.field_comments(Example) == {"a": "first line and its continuation",
                                                         "b": "a parenthesis inside a string", "c": ""}


def test_the_site_builds_in_strict_mode(tmp_path):
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    build(load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site")))
    reference = (tmp_path / "site" / "reference" / "configuration" / "index.html").read_text()
    assert "generator.max_passages" in reference and "train.grad_cache" in reference
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "Training throughput" in benchmarks and (tmp_path / "site" / "benchmarks" / "train.png").exists()
