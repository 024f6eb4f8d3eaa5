"""folder_corpus.py: every file under a folder corpus is read, skipped for a named reason, or failed, and the
ledger (manifest counts, printed names, passages/files.jsonl) says which; .docx, .rst and rows of .csv/.json
files are read; a damaged file fails alone."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import docx
import pytest

from embedtune.corpus import CorpusConfig, read_documents
from embedtune.errors import EmbedtuneError
from embedtune.folder_corpus import FileLedger


def make_docx(path: Path, title: str, paragraphs: list[str], table: list[list[str]]) -> None:
    document = docx.Document()
    document.core_properties.title = title
    for p in paragraphs:
        document.add_paragraph(p)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, cell in enumerate(row):
            grid.cell(r, c).text = cell
    document.save(str(path))


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A folder as users keep them: documents of many types, office files, hidden files, links, a damaged PDF."""
    root = tmp_path / "docs"
    (root / "guides").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("[core]")
    (root / ".DS_Store").write_bytes(b"\0\1")
    (root / "a.txt").write_text("Plain text about the kidney and its cysts.")
    (root / "guides" / "setup.rst").write_text("Setup\n=====\n\nInstall the package, then run the tool.")
    make_docx(root / "guides" / "policy.docx", "Leave policy", ["Staff may take 25 days of leave a year."],
              [["Grade", "Days"], ["A", "25"]])
    (root / "sheet.xlsx").write_bytes(b"PK\3\4 not read")
    (root / "notes.odt").write_bytes(b"PK\3\4 not read either")
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a PDF")
    (root / "broken.docx").write_bytes(b"not a zip")
    (root / "big.txt").write_text("x" * 3 * 2 ** 20)
    (root / "rows.csv").write_text("id,text,title\nr1,First row about lungs.,Lungs\nr2,Second row about skin.,Skin\n")
    (root / "faq.json").write_text(json.dumps([{"id": "q1", "text": "How do I reset my password?"}]))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "linked.txt").write_text("Text reachable only through a link.")
    os.symlink(outside, root / "linked-folder")
    os.symlink(outside / "linked.txt", root / "link.txt")
    return root


def test_every_file_is_read_skipped_or_failed_and_the_ledger_says_which(messy: Path, tmp_path: Path):
    cfg = CorpusConfig(format="files", path=str(messy), max_file_mb=2, id_field="id",
                       extensions=[".txt", ".rst", ".docx", ".pdf", ".csv", ".json"])
    ledger = FileLedger(tmp_path / "files.jsonl")
    docs = {d.doc_id: d for d in read_documents(cfg, Counter(), ledger)}
    ledger.close()
    assert set(docs) == {"a.txt", "guides/setup.rst", "guides/policy.docx", "rows.csv#r1", "rows.csv#r2", "faq.json#q1"}
    policy = docs["guides/policy.docx"]
    assert policy.title == "Leave policy" and "25 days of leave" in policy.text and "Grade | Days" in policy.text
    assert docs["rows.csv#r1"].title == "Lungs" and docs["rows.csv#r2"].text == "Second row about skin."
    assert ledger.counts() == {"read": 5, "failed": 2,  # files: rows.csv gives two documents
                               "skipped": {"hidden": 2, "size": 1, "symlink": 2, "type": 2}}
    listed = [json.loads(line) for line in (tmp_path / "files.jsonl").read_text().splitlines()]
    on_disk = {p.relative_to(messy).as_posix() for p in messy.iterdir()} | {
        p.relative_to(messy).as_posix() for p in (messy / "guides").iterdir()}
    assert {r["path"] for r in listed} == on_disk - {"guides"}  # every entry once (hidden folders whole)
    status = {r["path"]: (r["status"], r["reason"]) for r in listed}
    assert status["sheet.xlsx"] == ("skipped", "type") and status["linked-folder"] == ("skipped", "symlink")
    assert status["broken.pdf"][0] == "failed" and status["big.txt"] == ("skipped", "size")
    failed = {r["path"]: r["detail"] for r in listed if r["status"] == "failed"}
    assert "not a readable PDF" in failed["broken.pdf"] and "not a readable .docx" in failed["broken.docx"]
    lines = "\n".join(ledger.lines())
    assert "5 read, 7 skipped, 2 failed" in lines and "skipped (type) 2: notes.odt (.odt), sheet.xlsx (.xlsx)" in lines


def test_links_are_followed_when_asked_and_a_loop_is_read_once(messy: Path):
    os.symlink(messy, messy / "guides" / "loop")
    cfg = CorpusConfig(format="files", path=str(messy), follow_symlinks=True)
    ledger = FileLedger()
    ids = [d.doc_id for d in read_documents(cfg, Counter(), ledger)]
    assert "link.txt" in ids and "linked-folder/linked.txt" in ids
    assert len(ids) == len(set(ids)) and ledger.skipped["symlink"] == 1  # the loop back to the root


def test_prepare_counts_the_files_in_its_manifest_and_prints_the_first_names(messy: Path, tmp_path: Path, capsys):
    from helpers import compose_config

    from embedtune import pipeline

    cfg = compose_config("debug=tiny", "corpus=files", f"corpus.path={messy}", f"paths.runs={tmp_path / 'runs'}",
                         "run_name=r", "corpus.max_file_mb=2")
    manifest = pipeline.prepare(cfg)
    assert manifest["counts"]["files"] == {"read": 3, "failed": 2, "skipped": {"hidden": 2, "size": 1, "symlink": 2,
                                                                                 "type": 4}}
    out = capsys.readouterr().out
    assert "prepare: files: 3 read, 9 skipped, 2 failed" in out and "faq.json (.json)" in out
    assert (tmp_path / "runs" / "r" / "passages" / "files.jsonl").exists()


def test_no_readable_file_is_an_error_that_lists_what_was_skipped(tmp_path: Path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "data.xlsx").write_bytes(b"x")
    with pytest.raises(EmbedtuneError, match=r"no file could be read[\s\S]*skipped \(type\) 1: data.xlsx"):
        list(read_documents(CorpusConfig(format="files", path=str(tmp_path / "d"))))
