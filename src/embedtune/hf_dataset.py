"""Hugging Face datasets in and out: corpus=hf reads anything `datasets.load_dataset` (or `load_from_disk`)
opens, streamed when asked; export writes the training pairs as a dataset folder with a dataset card."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from embedtune.errors import EmbedtuneError

if TYPE_CHECKING:
    from embedtune.corpus import CorpusConfig

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _open(cfg: "CorpusConfig"):
    """The configured split as a Dataset (memory-mapped Arrow) or, with corpus.streaming, an IterableDataset."""
    import datasets

    local = Path(cfg.path).expanduser()
    if local.is_dir() and ((local / "state.json").exists() or (local / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(str(local))  # save_to_disk output
        if isinstance(data, datasets.DatasetDict):
            if cfg.split not in data:
                raise EmbedtuneError(f"corpus.path {local}: no split '{cfg.split}' (splits: {', '.join(data)}); "
                                     "set corpus.split")
            data = data[cfg.split]
        return data.to_iterable_dataset() if cfg.streaming else data
    builder = FILE_BUILDERS.get(local.suffix.lower()) if not local.is_dir() else None
    if builder:  # a file, or a glob of files
        return datasets.load_dataset(builder, data_files=str(local), split=cfg.split, streaming=cfg.streaming)
    return datasets.load_dataset(cfg.path, cfg.subset, split=cfg.split, streaming=cfg.streaming)


def hf_records(cfg: "CorpusConfig") -> Iterator[tuple[str, dict]]:
    """(where, record) of every row of the configured dataset split; a dataset that cannot be opened is one
    error naming corpus.path and what datasets said."""
    try:
        data = _open(cfg)
    except EmbedtuneError:
        raise
    except Exception as e:  # datasets raises many types: not found, offline hub, bad files, unknown split
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EmbedtuneError(f"corpus.path {cfg.path}: datasets could not open it ({type(e).__name__}: {message}); "
                             "give a local dataset folder, save_to_disk output, Parquet/JSON files or a hub id "
                             "(with corpus.subset / corpus.split)") from e
    n, rows = 0, iter(data)
    while True:
        try:
            record = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a damaged file met while streaming
            raise EmbedtuneError(f"{cfg.path} ({cfg.split}): after row {n}: cannot read on "
                                 f"({type(e).__name__}: {e})") from e
        n += 1
        yield f"{cfg.path} ({cfg.split}): row {n}", record
