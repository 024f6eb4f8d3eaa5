"""Hugging Face datasets in and out: corpus=hf reads anything `datasets.load_dataset` (or `load_from_disk`)
opens, streamed when asked; export writes the training pairs as a dataset folder with a dataset card."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from embedtune.errors import EmbedtuneError
from embedtune.io import atomic_path, write_parquet_parts
from embedtune.store import texts_of

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _open(path: str, subset: Optional[str], split: str, streaming: bool):
    """The split as a Dataset (memory-mapped Arrow) or, with corpus.streaming, an IterableDataset."""
    import datasets

    local = Path(path).expanduser()
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(str(local))  # save_to_disk output
        if isinstance(data, datasets.DatasetDict):
            if split not in data:
                raise EmbedtuneError(f"corpus.path {local}: no split '{split}' (splits: {', '.join(data)}); "
                                     "set corpus.split")
            data = data[split]
        return data.to_iterable_dataset() if streaming else data
    builder = FILE_BUILDERS.get(local.suffix.lower()) if not local.is_dir() else None
    if builder:  # a file, or a glob of files
        return datasets.load_dataset(builder, data_files=str(local), split=split, streaming=streaming)
    return datasets.load_dataset(path, subset, split=split, streaming=streaming)


def hf_records(path: str, subset: Optional[str], split: str, streaming: bool) -> Iterator[tuple[str, dict]]:
    """(where, record) of every row of a dataset split (corpus.path, corpus.subset, corpus.split,
    corpus.streaming); a dataset that cannot be opened is one error naming corpus.path and what datasets said."""
    try:
        data = _open(path, subset, split, streaming)
    except EmbedtuneError:
        raise
    except Exception as e:  # datasets raises many types: not found, offline hub, bad files, unknown split
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedtuneError(f"corpus.path {path}: datasets could not open it ({type(e).__name__}: {message}); "
                             "give a local dataset folder, save_to_disk output, Parquet/JSON files or a hub id "
                             "(with corpus.subset / corpus.split)") from e
    n, rows = 0, iter(data)
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a damaged file met while streaming
            raise EmbedtuneError(f"{path} ({split}): after row {n}: cannot read on "
                                 f"({type(e).__name__}: {e})") from e
        n += 1
        yield f"{path} ({split}): row {n}", record


DATASET_ROWS_PER_FILE = 100_000
TEXT_COLUMNS = [("query_id", pa.string()), ("query", pa.string()), ("passage_id", pa.string()),
                ("positive", pa.string()), ("negative_ids", pa.list_(pa.string())), ("negatives", pa.list_(pa.string()))]
SCORE_COLUMNS = [("positive_score", pa.float64()), ("negative_scores", pa.list_(pa.float64())),
                 ("positive_teacher_score", pa.float64()), ("negative_teacher_scores", pa.list_(pa.float64()))]


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                        (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _card(name: str, rows: int, columns: list[str], description: str, sample: dict) -> str:
    sample_lines = "\n".join(f"| `{k}` | {str(v)[:160].replace('|', '/')} |" for k, v in sample.items())
    return (f"---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*.parquet\n"
            f"task_categories:\n- sentence-similarity\n- text-retrieval\nsize_categories:\n- {_size_category(rows)}\n"
            f"tags:\n- embedtune\n- synthetic-queries\n- hard-negatives\n---\n\n# {name}: training pairs\n\n"
            f"{description}\n\n{rows:,} rows. Columns: " + ", ".join(f"`{c}`" for c in columns) + ".\n\n"
            "- `query`: a synthetic search query written by a language model for `positive`, its passage.\n"
            "- `negatives`: hard negatives mined with the base model (passages scoring above a share of the "
            "positive's score were left out as likely unlabelled positives), with their ids and base-model scores.\n"
            "- `positive_teacher_score`, `negative_teacher_scores`: a teacher's scores, where one ran (else null).\n\n"
            "Load it with `datasets.load_dataset(\"<this folder>\")`; for sentence-transformers training, the columns "
            "`query`, `positive` and `negatives` give (anchor, positive, negative) triplets.\n\n"
            f"One row:\n\n| column | value |\n| --- | --- |\n{sample_lines}\n")


def write_pairs_dataset(rows: pa.Table, queries: Mapping[str, str], passages: Mapping[str, str], folder: Path,
                        name: str, description: str, block: int = 8192) -> dict:
    """The training rows with their texts as a Hugging Face dataset folder (data/train-*.parquet and a README.md
    dataset card), built beside `folder` and moved into place when whole. Read a block of rows at a time."""
    schema = pa.schema(TEXT_COLUMNS + SCORE_COLUMNS)

    def records():
        for start in range(0, rows.num_rows, block):
            part = rows.slice(start, block).to_pylist()
            texts_q = texts_of(queries, [r["query_id"] for r in part])
            texts_p = texts_of(passages, [r["passage_id"] for r in part])
            negs = texts_of(passages, [n for r in part for n in r["negative_ids"]])
            at = 0
            for r, q, p in zip(part, texts_q, texts_p):
                k = len(r["negative_ids"])
                yield {"query_id": r["query_id"], "query": q, "passage_id": r["passage_id"], "positive": p,
                       "negative_ids": r["negative_ids"], "negatives": negs[at:at + k],
                       **{c: r.get(c) for c, _ in SCORE_COLUMNS}}
                at += k

    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.new")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "data").mkdir(parents=True)
    files = list(write_parquet_parts(records(), staging / "data", "train", schema, DATASET_ROWS_PER_FILE))
    count = len(files)
    for n, old in enumerate(files):  # the hub's naming: train-00000-of-00003.parquet
        (staging / "data" / old).rename(staging / "data" / f"train-{n:05d}-of-{count:05d}.parquet")
    first = pq.ParquetFile(next((staging / "data").glob("*.parquet"))).read_row_group(0).slice(0, 1).to_pylist()
    card = _card(name, rows.num_rows, schema.names, description, first[0] if first else {})
    with atomic_path(staging / "README.md") as tmp:
        tmp.write_text(card, encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    staging.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return {"dataset": str(folder), "dataset_rows": rows.num_rows, "dataset_files": count}
