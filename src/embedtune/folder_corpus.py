"""A folder of documents (corpus=files): every file under it is read, skipped for a named reason, or failed, and
the ledger says which. Nothing vanishes silently: the counts go into the prepare manifest, the first names are
printed, and `passages/files.jsonl` lists every file with what became of it.

Readers: plain text and markup (.txt, .md, .markdown, .rst), HTML (BeautifulSoup), PDF (pypdf), Word .docx
(python-docx), and rows of .csv/.tsv/.json/.jsonl files where those suffixes are in corpus.extensions (each row
a document, its fields named by corpus.text_field, title_field, id_field). Skipped: another type, hidden files
and folders (a leading dot), symbolic links (unless corpus.follow_symlinks), files over corpus.max_file_mb,
folders that cannot be listed, anything not a regular file. Failed: a file its reader could not read (a damaged
PDF, a row without text); the run goes on without it, and stops only if no file could be read at all.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from embedtune.documents import Document, record_document
from embedtune.errors import EmbedtuneError
from embedtune.io import iter_jsonl

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)
ROW_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")  # read only where corpus.extensions names them
DOCUMENT_SUFFIXES = TEXT_SUFFIXES + HTML_SUFFIXES + PDF_SUFFIXES + DOCX_SUFFIXES
SHOWN = 5  # names printed per reason


@dataclass
class FolderReading:
    """What reading a folder needs of the corpus settings."""
    extensions: list[str]
    text_field: str = "text"
    title_field: Optional[str] = "title"
    id_field: Optional[str] = None
    list_separator: Optional[str] = None
    follow_symlinks: bool = False
    max_file_mb: float = 100.0


@dataclass
class FileLedger:
    """What became of every file: read, skipped (by reason) or failed. `out`: where the full list is written
    (JSON lines, renamed into place by `close`); counts and the first names are kept in memory."""
    out: Optional[Path] = None
    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    failed: int = 0
    examples: dict = field(default_factory=dict)

    def __post_init__(self):
        self._file = None
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            handle, self._tmp = tempfile.mkstemp(dir=self.out.parent, prefix=f".{self.out.name}.", suffix=".tmp")
            self._file = os.fdopen(handle, "w", encoding="utf-8")

    def note(self, path: str, status: str, reason: str = "", detail: str = "") -> None:
        if status == "read":
            self.read += 1
        elif status == "skipped":
            self.skipped[reason] += 1
        else:
            self.failed += 1
        if status != "read":
            shown = self.examples.setdefault(reason if status == "skipped" else "failed", [])
            if len(shown) < SHOWN:
                shown.append(f"{path} ({detail})" if detail else path)
        if self._file is not None:
            self._file.write(json.dumps({"path": path, "status": status, "reason": reason, "detail": detail},
                                        ensure_ascii=False) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            os.replace(self._tmp, self.out)
            self._file = None

    def counts(self) -> dict:
        return {"read": self.read, "skipped": dict(sorted(self.skipped.items())), "failed": self.failed}

    def lines(self) -> list[str]:
        lines = [f"prepare: files: {self.read:,} read, {sum(self.skipped.values()):,} skipped, {self.failed:,} failed"]
        for reason, n in sorted(self.skipped.items()):
            lines.append(f"  skipped ({reason}) {n:,}: " + ", ".join(self.examples.get(reason, []))
                         + (", ..." if n > SHOWN else ""))
        if self.failed:
            lines.append(f"  failed {self.failed:,}: " + "; ".join(self.examples.get("failed", []))
                         + ("; ..." if self.failed > SHOWN else ""))
        return lines


def walk(root: Path, settings: FolderReading, ledger: Optional[FileLedger] = None) -> Iterator[Path]:
    """Files under `root` a reader will read, in sorted path order, one folder at a time (nothing lists the whole
    tree at once); every other entry is noted in `ledger` with its reason."""
    suffixes = {s.lower() for s in settings.extensions}
    limit = settings.max_file_mb * 2 ** 20
    seen_dirs = {os.path.realpath(root)}

    def note(path: Path, reason: str, detail: str = "") -> None:
        if ledger is not None:
            ledger.note(path.relative_to(root).as_posix(), "skipped", reason, detail)

    def entries(folder: Path) -> Iterator[Path]:
        try:
            listed = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise EmbedtuneError(f"{root}: cannot list the folder ({e.strerror})") from e
            note(folder, "unreadable", e.strerror or str(e))
            return
        for entry in listed:
            path = Path(entry.path)
            if entry.name.startswith("."):
                note(path, "hidden")
                continue
            if entry.is_symlink():
                if not settings.follow_symlinks:
                    note(path, "symlink", "corpus.follow_symlinks=false")
                    continue
                if not os.path.exists(path):
                    note(path, "unreadable", "broken link")
                    continue
            if entry.is_dir():
                real = os.path.realpath(path)
                if real in seen_dirs:
                    note(path, "symlink", "a folder already read (a loop)")
                    continue
                seen_dirs.add(real)
                yield from entries(path)
            elif not entry.is_file():
                note(path, "not a regular file")
            elif path.suffix.lower() not in suffixes:
                note(path, "type", path.suffix.lower() or "no suffix")
            elif entry.stat().st_size > limit:
                note(path, "size", f"{entry.stat().st_size / 2 ** 20:.0f} MB > corpus.max_file_mb={settings.max_file_mb:g}")
            else:
                yield path
    yield from entries(root)


def read_text_file(path: Path, counts: Optional[Counter] = None) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("utf-8", errors="replace")  # keep the document; bad bytes become U+FFFD
        if counts is not None:
            counts["invalid_utf8_chars_replaced"] += text.count("\ufffd") - raw.count("\ufffd".encode())
            counts["files_with_invalid_utf8"] += 1
        return text


def html_to_text(raw: str) -> tuple[str, str]:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template"]):
        tag.decompose()
    title = soup.title.get_text() if soup.title else ""
    if not title and soup.find("h1"):
        title = soup.find("h1").get_text()
    body = soup.body or soup
    return title, body.get_text(" ")


def pdf_to_text(path: Path) -> str:
    from pypdf import PdfReader

    try:
        return "\n".join(page.extract_text() or "" for page in PdfReader(path).pages)
    except Exception as e:  # pypdf raises many types for damaged files
        raise EmbedtuneError(f"not a readable PDF ({type(e).__name__}: {e})") from e


def docx_to_text(path: Path) -> tuple[str, str]:
    """Title (the document's own, where set) and text: paragraphs, then table rows (cells joined by " | ")."""
    import docx

    try:
        document = docx.Document(str(path))
    except Exception as e:  # python-docx raises its own types (PackageNotFoundError) and zipfile's
        raise EmbedtuneError(f"not a readable .docx file ({type(e).__name__}: {e})") from e
    parts = [p.text for p in document.paragraphs]
    for table in document.tables:
        parts.extend(" | ".join(cell.text for cell in row.cells) for row in table.rows)
    return document.core_properties.title or "", "\n".join(parts)


def _rows(path: Path, counts: Optional[Counter]) -> Iterator[tuple[str, dict]]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from ((f"{path}:{n}", r) for n, r in iter_jsonl(path, counts))
    elif suffix == ".json":
        data = json.loads(read_text_file(path, counts))
        records = data if isinstance(data, list) else [data]
        for n, record in enumerate(records, 1):
            if not isinstance(record, dict):
                raise EmbedtuneError(f"{path}: item {n} is a {type(record).__name__}, not an object")
            yield f"{path}: item {n}", record
    else:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for record in reader:
                yield f"{path}:{reader.line_num}", record


def row_documents(path: Path, rel: str, settings: FolderReading, counts: Optional[Counter]) -> list[Document]:
    """The rows of a .csv/.tsv/.json/.jsonl file as documents `<file>#<id or row number>`."""
    docs, ids = [], set()
    fields = (settings.text_field, settings.title_field, settings.id_field)
    for n, (where, record) in enumerate(_rows(path, counts), 1):
        doc = record_document(record, where, fields, n, rel, settings.list_separator, counts)
        if doc is None:
            continue
        if doc.doc_id in ids:
            raise EmbedtuneError(f"{where}: id '{doc.doc_id}' ({settings.id_field}) repeats an earlier row of the file")
        ids.add(doc.doc_id)
        doc.doc_id = f"{rel}#{doc.doc_id}"
        docs.append(doc)
    return docs


def file_documents(path: Path, rel: str, settings: FolderReading, counts: Optional[Counter]) -> list[Document]:
    suffix = path.suffix.lower()
    if suffix in ROW_SUFFIXES:
        return row_documents(path, rel, settings, counts)
    if suffix in HTML_SUFFIXES:
        title, text = html_to_text(read_text_file(path, counts))
    elif suffix in PDF_SUFFIXES:
        title, text = "", pdf_to_text(path)
    elif suffix in DOCX_SUFFIXES:
        title, text = docx_to_text(path)
    else:
        title, text = "", read_text_file(path, counts)
    return [Document(doc_id=rel, title=title or path.stem, text=text, source=rel)]


def read_files(root: Path, settings: FolderReading, counts: Optional[Counter] = None,
               ledger: Optional[FileLedger] = None) -> Iterator[Document]:
    """Documents of every readable file under `root`; what was skipped or failed goes into `ledger`."""
    ledger = ledger if ledger is not None else FileLedger()
    for path in walk(root, settings, ledger):
        rel = path.relative_to(root).as_posix()
        try:
            docs = file_documents(path, rel, settings, counts)
        except (EmbedtuneError, OSError, UnicodeError, ValueError, csv.Error) as e:
            ledger.note(rel, "failed", "", str(e).replace(f"{path}", rel))
            continue
        ledger.note(rel, "read")
        yield from docs
    if not ledger.read:
        raise EmbedtuneError(f"{root}: no file could be read (corpus.extensions: {', '.join(settings.extensions)})\n"
                             + "\n".join(ledger.lines()))
