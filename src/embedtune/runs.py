"""The run folder, and each stage's bookkeeping: the folder it writes, the config sections and upstream
manifests its key is made of, whether it is up to date. The stages and `embedtune status` share these
definitions, so status says exactly what `embedtune run` would redo."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from embedtune.config import Config
from embedtune.corpus import doc_key, source_stamp
from embedtune.distributed import launcher_settings
from embedtune.errors import EmbedtuneError
from embedtune.generate.runner import generate_stage
from embedtune.io import read_rows
from embedtune.manifest import MANIFEST, Stage, load_manifest
from embedtune.model import passage_text
from embedtune.precision import encoding_arithmetic, train_precision
from embedtune.store import MappedTable, TextLookup, drop_older, table_folder
from embedtune.versions import list_versions, previous_version

STAGE_NAMES = ("prepare", "generate", "filter", "mine", "score", "train", "eval", "export")
UPSTREAM = {"generate": "prepare", "filter": "generate", "mine": "filter", "score": "mine", "train": "mine",
            "eval": "train", "export": "train"}


class RunFolder:
    def __init__(self, cfg: Config):
        self.base = Path(cfg.paths.runs) / cfg.run_name
        self.root = self.base / "points" / cfg.point if cfg.point else self.base  # sweep points: sweep.py
        self.passages = self.root / "passages"
        self.queries = self.root / "queries"
        self.pairs = self.root / "pairs"
        self.negatives = self.root / "negatives"
        self.scores = self.root / "scores"
        self.merged = self.root / "merged"
        self.checkpoints = self.root / "checkpoints"
        self.model = self.root / "model"
        self.dataset = self.root / "dataset"
        self.eval = self.root / "eval"
        self.benchmarks = self.root / "benchmarks"
        self.cache = self.root / "cache" / "embeddings"
        self.tables = self.root / "cache" / "tables"
        self.generations = self.base / "cache" / "generations"  # shared by sweep points: answers by content
        self.teacher_scores = self.base / "cache" / "scores"  # likewise: a teacher's scores by the pair's texts

    def table(self, name: str, folder: Path, files: list[str], columns: list[str], id_column: str,
              hashes=None) -> MappedTable:
        """A stage's Parquet files as one memory-mapped table (built once per run of that stage)."""
        manifest = load_manifest(folder)
        target = table_folder(self.tables, name, manifest)
        table = MappedTable.open([folder / f for f in files], target, columns, id_column, hashes)
        drop_older(self.tables, name, target)
        return table

    def passage_table(self) -> MappedTable:
        """Every passage, memory-mapped, by id; `hashes("doc")` names each row's document."""
        files = load_manifest(self.passages)["files"]
        return self.table("passages", self.passages, files, ["id", "doc_id", "title", "text", "source"], "id",
                          {"doc": lambda b: map(doc_key, b.column("source").to_pylist(), b.column("doc_id").to_pylist())})

    def passages_named(self, ids: set[str], table: MappedTable) -> list[dict]:
        """The passages of `ids` (id, title, text, source, doc_id); an error if a generated query names one that
        prepare no longer has."""
        named = sorted(ids)
        rows = table.rows_of(named, missing_ok=True)
        if (rows < 0).any():
            unknown = [pid for pid, r in zip(named, rows) if r < 0]
            raise EmbedtuneError(f"{len(unknown)} queries name passages that are not in passages/ (e.g. {unknown[0]}): "
                                 "rerun generate after prepare (force=true)")
        return table.take(rows, ["id", "title", "text", "source", "doc_id"]).to_pylist()

    def passage_texts(self, table: MappedTable | None = None) -> TextLookup:
        """id -> what the encoder reads for that passage (title and text), without a dict of every text."""
        return TextLookup(table or self.passage_table(), lambda r: passage_text(r["title"], r["text"]),
                          ["title", "text"])

    def pairs_table(self, split: str) -> MappedTable:
        """One split of the filter stage's pairs, memory-mapped, by query id."""
        return self.table(f"pairs-{split}", self.pairs, [f"{split}.parquet"], ["query_id", "query", "passage_id"],
                          "query_id")

    def query_texts(self, split: str, table: MappedTable | None = None) -> TextLookup:
        return TextLookup(table or self.pairs_table(split), lambda r: r["query"], ["query"])

    def training_table(self, cfg: Config) -> MappedTable:
        """What train reads, memory-mapped: the negatives with teacher scores when a teacher ran, else the
        negatives."""
        folder = self.scores if cfg.teacher.enabled else self.negatives
        columns = pq.read_schema(folder / "train.parquet").names
        return self.table(folder.name, folder, ["train.parquet"], columns, "query_id")

    def read_pairs(self, split: str) -> list[dict]:
        """The filter stage's pairs of one split ([] when it wrote none)."""
        path = self.pairs / f"{split}.parquet"
        return read_rows(path) if path.exists() else []

    def final_encoder(self) -> Path:
        """The trained encoder of the newest finished training (its manifest names the checkpoint)."""
        return self.checkpoints / load_manifest(self.checkpoints)["final"] / "encoder"

    def init_version(self, cfg: Config) -> dict | None:
        """With train.init=previous, the version training starts from (None: the base model): the promoted one
        trained on another state of the corpus."""
        if cfg.train.init != "previous":
            return None
        return previous_version(self.root, passages_run_id=load_manifest(self.passages).get("run_id"))

    def compared_version(self) -> dict | None:
        """The version eval compares the current training with (the gate before promotion): the newest promoted
        one that this training did not make, whose encoder is kept."""
        found = previous_version(self.root, train_run_id=load_manifest(self.checkpoints).get("run_id"))
        return found if found and (self.root / "versions" / str(found["version"]) / "encoder").is_dir() else None

    def folder(self, stage: str) -> Path:
        return {"prepare": self.passages, "generate": self.queries, "filter": self.pairs, "mine": self.negatives,
                "score": self.scores, "train": self.checkpoints, "eval": self.eval, "export": self.model}[stage]


def stage_of(cfg: Config, name: str) -> Stage:
    """The Stage (folder, key) that `name` has under `cfg`; an error if an upstream stage has not run."""
    run = RunFolder(cfg)
    encoding = encoding_arithmetic(cfg.eval.precision)  # how filter, mine and eval embed, here
    if name == "prepare":
        stamp = source_stamp(cfg.corpus)  # the corpus files as they are now: an edited document reruns prepare
        return Stage("prepare", run.passages, [cfg.corpus, cfg.model.name] + ([stamp] if stamp else []), {})
    if name == "generate":
        return generate_stage(cfg.generator, run.queries, load_manifest(run.passages))
    if name == "filter":
        config = [cfg.filter, (cfg.model, encoding) if cfg.filter.roundtrip_top_k else None]
        return Stage("filter", run.pairs, config, {"queries": load_manifest(run.queries)})
    if name == "mine":
        return Stage("mine", run.negatives, [cfg.mining, cfg.model, encoding], {"pairs": load_manifest(run.pairs)})
    if name == "score":
        return Stage("score", run.scores, cfg.teacher, {"negatives": load_manifest(run.negatives)})
    if name == "train":
        precision = train_precision(cfg.train.mixed_precision, launcher_settings().get("mixed_precision", "no"))
        config = [cfg.model, cfg.peft, cfg.loss, cfg.train, precision]  # auto precision: as resolved here
        inputs = {"negatives": load_manifest(run.negatives)}
        if cfg.teacher.enabled:
            inputs["scores"] = load_manifest(run.scores)
        start = run.init_version(cfg)
        if start is not None:  # a refresh: what it starts from decides it too
            inputs["init"] = {"key": start["weights"]}
        return Stage("train", run.checkpoints, config, inputs)
    if name == "eval":
        inputs = {"train": load_manifest(run.checkpoints), "pairs": load_manifest(run.pairs)}
        previous = run.compared_version()
        if previous is not None:  # the version this training is compared with (the gate)
            inputs["previous"] = {"key": previous["weights"]}
        merging = cfg.export.merge_alpha  # eval also reports the merged model (export.merge_alpha)
        return Stage("eval", run.eval, [cfg.eval, cfg.model, encoding, merging], inputs)
    if name == "export":
        inputs = {"train": load_manifest(run.checkpoints)}
        if (run.eval / MANIFEST).exists():
            inputs["eval"] = load_manifest(run.eval)
        return Stage("export", run.model, cfg.export, inputs)
    raise EmbedtuneError(f"unknown stage {name}")


def skip(stage: Stage, force: bool) -> bool:
    if stage.is_done() and not force:
        print(f"{stage.name}: up to date ({stage.folder / MANIFEST}); force=true reruns it")
        return True
    return False


def _counts(counts: dict) -> str:
    parts = []
    for key, value in counts.items():
        if isinstance(value, dict):
            total = sum(v for v in value.values() if isinstance(v, (int, float)))
            parts.append(f"{key} {total:,}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key} {value:,}")
    return ", ".join(parts)


def status_lines(cfg: Config) -> list[str]:
    """One line per stage: done / stale (its config or an input changed: `embedtune run` redoes it) /
    missing, its counts and wall time."""
    run = RunFolder(cfg)
    lines = [f"run folder {run.root}"]
    redo: set[str] = set()  # stages `embedtune run` would run again: so would everything after them
    for name in STAGE_NAMES:
        if name == "score" and not cfg.teacher.enabled:
            lines.append(f"  {name:<8} off (teacher.kind=none)")
            continue
        path = run.folder(name) / MANIFEST
        if not path.exists():
            upstream = UPSTREAM.get(name)
            waiting = upstream and not (run.folder(upstream) / MANIFEST).exists()
            lines.append(f"  {name:<8} missing" + (f" (waits for {upstream})" if waiting else ""))
            redo.add(name)
            continue
        manifest = load_manifest(run.folder(name))
        try:
            upstream = {UPSTREAM.get(name), "score" if name == "train" else None} - {None}
            state = "done" if stage_of(cfg, name).is_done() and not upstream & redo else "stale"
        except EmbedtuneError:
            state = "stale"
        if state == "stale":
            redo.add(name)
        lines.append(f"  {name:<8} {state:<5} {manifest.get('wall_time_s', 0):>8.1f}s  {_counts(manifest.get('counts', {}))}")
    current = load_manifest(run.model).get("weights") if (run.model / MANIFEST).exists() else None
    for v in list_versions(run.root):
        scores = "; ".join(f"{name} nDCG@10 {s['tuned']:.3f}" for name, s in v["scores"].items() if "tuned" in s)
        lines.append(f"  version {v['version']}: {v['weights']}, {v['passages']['count']:,} passages, "
                     f"{v['created']}"
                     + (f"; {scores}" if scores else "") + (" (model/)" if v["weights"] == current else "")
                     + ("" if v.get("promoted", True) else " (not promoted: held back by the gate)"))
    return lines


def run_summary(run: RunFolder, times: dict[str, float]) -> list[str]:
    """What `embedtune run` prints at its end: the queries kept and their quality, stage times, where things are,
    and last (where nobody misses them) any set on which tuned is significantly worse than base."""
    pairs = load_manifest(run.pairs)
    measured, counts = pairs.get("rates", {}), pairs["counts"]
    return [f"\nqueries: kept {counts['kept']:,} of {counts['generated']:,} outputs "
            f"({counts['kept'] / max(1, counts['generated']):.0%}); of the kept training queries "
            f"{measured.get('chatter_in_kept', 0):.1%} chatter, {measured.get('copies_in_kept', 0):.1%} passage copies "
            f"(samples: {run.queries / 'report.md'})",
            "stage wall times: " + ", ".join(f"{n} {t:.0f}s" for n, t in times.items())
            + f" (total {sum(times.values()) / 60:.1f} min)",
            f"report: {run.eval / 'report.md'}   model: {run.model}"] + [
        f"embedtune run: warning: {line}" for line in load_manifest(run.eval).get("regressions", [])]
