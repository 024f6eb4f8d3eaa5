"""How embedtune's data path scales with the corpus: prepare, mining search and training's data loading at
100k and 1M synthetic passages, each measured in a process of its own (peak RSS from the kernel).

    python bench/scale.py --out bench/results [--work /tmp/embedtune-scale] [--sizes 100000 1000000]

- corpus: synthetic documents, words drawn from a Zipf-distributed vocabulary of 50,000 made-up words, lengths
  log-normal (median 90 words, a long tail up to 2,000: one to several 200-token passages), as JSONL; 0.6 n
  documents for about n passages.
- prepare: `embedtune prepare corpus=jsonl` (the real stage): passages/s and peak RSS.
- mining: random unit vectors stand in for embeddings (encoding 1M passages on this CPU would take over an
  hour), drawn so that their neighbourhoods look like a real embedder's (`embedding_like_vectors`: matched
  to MiniLM on HPO). Stored as the embedding cache's float16 shards and searched through `Searcher` (exact,
  ivf at several probe counts, hnsw) with every 10th passage held out; queries/s and recall@50 against
  exact search on the same queries.
- train data: 1M training pairs (a query, its passage, 3 negatives) over the prepared 1M passages, read the
  way `embedtune train` reads them (memory-mapped tables) and, for comparison, the way it did before (dicts
  of every text and a list of every row): peak RSS and ms per batch of 32.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DIM, QUERIES, K = 384, 2000, 50
DOCS_PER_PASSAGE = 0.6  # the synthetic documents give 1.67 passages each (200-token chunks)
IVF_PROBE_SHARES = [32, 16, 8, 4]  # IVF cells searched per query: 1/32 .. 1/4 of them (the default is 1/8)
HNSW_EF = [128, 256, 512]         # HNSW candidate lists


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def private_mb() -> int:
    """This process's anonymous (private) resident memory now: RSS without the pages of mapped files, which
    the kernel shares and drops when memory is short."""
    with open("/proc/self/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return int(fields["RssAnon"].split()[0]) // 1024


# ---------------------------------------------------------------- corpus

def write_corpus(path: Path, n_docs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    syllables = [c + v for c in consonants for v in vowels]
    vocab = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(50_000)]
    vocab = np.array(list(dict.fromkeys(vocab)))
    lengths = np.minimum(np.exp(rng.normal(math.log(90), 0.7, size=n_docs)).astype(int) + 5, 2000)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        for start in range(0, n_docs, 10_000):
            block = lengths[start:start + 10_000]
            words = vocab[np.minimum(rng.zipf(1.3, size=int(block.sum())) - 1, len(vocab) - 1)]
            at = 0
            for i, n in enumerate(block):
                text = " ".join(words[at:at + n])
                at += n
                f.write(json.dumps({"id": f"d{start + i}", "title": " ".join(words[at - n:at - n + 3]).title(),
                                    "text": text[0].upper() + text[1:] + "."}) + "\n")
    tmp.rename(path)


# ---------------------------------------------------------------- prepare

def measure_prepare(work: Path, n: int) -> dict:
    """Prepare a corpus of about n passages (0.6 n documents: their lengths give 1.67 passages each)."""
    n_docs = int(DOCS_PER_PASSAGE * n)
    corpus = work / f"corpus-{n_docs}.jsonl"
    if not corpus.exists():
        write_corpus(corpus, n_docs)
    embedtune = str(Path(sys.executable).with_name("embedtune"))
    result = run_measured_rss([embedtune, "prepare", "corpus=jsonl", f"corpus.path={corpus}", "corpus.id_field=id",
                               f"paths.runs={work}", f"run_name=prep-{n}", "force=true", "logger=none"])
    manifest = json.loads((work / f"prep-{n}" / "passages" / "manifest.json").read_text())
    passages = manifest["counts"]["passages"]
    return {"documents": n_docs, "passages": passages, "seconds": result["seconds"],
            "passages_per_s": round(passages / result["seconds"]), "peak_rss_mb": result["peak_rss_mb"]}


def run_measured_rss(args: list[str]) -> dict:
    """Wall seconds and peak RSS (MB) of one child process, from the kernel's accounting (wait4)."""
    started = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status:
        raise SystemExit(f"{' '.join(args)} failed:\n{err[-3000:]}")
    return {"seconds": round(time.time() - started, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


# ---------------------------------------------------------------- mining

def embedding_like_vectors(n: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(passages float16 [n, DIM], queries float32 [queries, DIM]) shaped like a real embedder's vectors.

    Points are Gaussian with a power-law spectrum (variance of the j-th direction ~ j^-1.1), grouped around
    n/10 centres (each point = its centre + 0.7 x fresh noise), shifted by a common direction, normalised.
    The parameters were matched to all-MiniLM-L6-v2 on the 16k HPO passages (`bench/scale.py --calibrate`):
    mean cosine of the 1st / 10th / 50th nearest neighbour 0.787 / 0.610 / 0.500 real vs 0.799 / 0.634 /
    0.534 here; a plain IVF index's recall@51 at 4 / 16 / 64 of 513 cells 0.709 / 0.893 / 0.973 real vs
    0.483 / 0.795 / 0.963 here: these are harder to search than real vectors, so recall measured on them
    errs low. Queries are drawn the same way."""
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((DIM, DIM)))[0].astype(np.float32)
    scale = (np.arange(1, DIM + 1) ** -0.55).astype(np.float32)
    centres = rng.standard_normal((max(1, n // 10), DIM)).astype(np.float32) * scale
    shift = rng.standard_normal(DIM).astype(np.float32)
    shift *= 0.45 * np.sqrt((scale ** 2).sum()) / np.linalg.norm(shift)

    def draw(m: int) -> np.ndarray:
        z = centres[rng.integers(0, len(centres), m)] + 0.7 * rng.standard_normal((m, DIM)).astype(np.float32) * scale
        x = z @ basis.T + shift
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    passages = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, 100_000):
        passages[start:start + 100_000] = draw(min(100_000, n - start))
    return passages, draw(queries).astype(np.float32)


def measure_mining(work: Path, n: int, kinds: list[str]) -> list[dict]:
    """In this process (called as a child): build each index over n topic vectors, search QUERIES queries."""
    import torch

    from embedtune.embedding_cache import CorpusVectors, EmbeddingCache
    from embedtune.search import AnnSearch, IndexConfig, Searcher, exact_topk, ivf_lists, recall_against_exact

    torch.set_num_threads(os.cpu_count() or 1)
    passages, queries = embedding_like_vectors(n, QUERIES)
    cache = EmbeddingCache(work / f"cache-{n}", "synthetic")
    for start in range(0, n, 65_536):  # as the cache holds a corpus: float16 shards, memory-mapped
        keys = np.arange(start, min(start + 65_536, n), dtype=np.uint64) + np.uint64(1)
        cache.add(keys, passages[start:start + 65_536])
    del passages, cache
    cache = EmbeddingCache(work / f"cache-{n}", "synthetic")  # read back from disk: memory-mapped
    vectors = CorpusVectors(cache, cache.find(np.arange(1, n + 1, dtype=np.uint64)))
    allowed = np.ones(n, dtype=bool)
    allowed[::10] = False  # held-out documents
    started = time.time()
    exact = exact_topk(queries, vectors, K, allowed)[1]
    exact_s = time.time() - started
    rows = [{"passages": n, "index": "exact", "build_s": 0.0, "queries_per_s": round(QUERIES / exact_s, 1),
             "recall": 1.0}]
    for kind in kinds:
        cfg = IndexConfig(index=kind)
        started = time.time()
        searcher = Searcher(vectors, cfg, allowed)
        build = time.time() - started
        lists = ivf_lists(cfg, n)
        settings = [("ivf_probe", lists // f) for f in IVF_PROBE_SHARES] if kind == "ivf" else \
            [("hnsw_ef_search", ef) for ef in HNSW_EF]
        for name, value in settings:  # one index, searched with several settings
            setattr(cfg, name, value)
            searcher.ann = AnnSearch(kind, searcher.ann.index, cfg, allowed)
            searcher.search(queries[:50], K)  # warm-up
            started = time.time()
            found = searcher.search(queries, K)[1]
            seconds = time.time() - started
            rows.append({"passages": n, "index": searcher.describe(), "build_s": round(build, 1),
                         "queries_per_s": round(QUERIES / seconds, 1),
                         "recall": round(recall_against_exact(found, exact), 4)})
    for r in rows:
        r["speedup"] = round(r["queries_per_s"] / rows[0]["queries_per_s"], 1)
        r["peak_rss_mb"] = round(peak_rss_mb())
    return rows


def neighbourhood(x: np.ndarray) -> dict:
    """Mean cosine of the 1st/10th/50th nearest neighbour of 1,000 rows, and the recall@51 of a plain IVF index
    (4 x sqrt(n) cells, fp16 codes) at 4/16/64 probes: how clustered the vectors are."""
    import faiss
    import torch

    from embedtune.search import exact_topk, recall_against_exact

    rng = np.random.default_rng(0)
    queries = x[rng.choice(len(x), 1000, replace=False)]
    scores, rows = exact_topk(queries, x, 51)
    found = {f"nn{r}": float(scores[:, r].mean()) for r in (1, 10, 50)}
    lists = int(4 * math.sqrt(len(x)))
    index = faiss.IndexIVFScalarQuantizer(faiss.IndexFlatIP(DIM), DIM, lists, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)
    index.train(x)
    index.add(x)
    for probe in (4, 16, 64):
        index.nprobe = probe
        found[f"ivf{probe}"] = recall_against_exact(torch.from_numpy(index.search(queries, 51)[1]), rows)
    return {k: round(v, 3) for k, v in found.items()}


def calibrate() -> None:
    """The neighbourhoods of MiniLM's vectors of the HPO passages beside those of as many synthetic vectors."""
    from embedtune.encode import encode
    from embedtune.hpo import load_terms
    from embedtune.model import Encoder, ModelConfig, passage_text
    from embedtune.precision import autocast

    _, terms = load_terms()
    texts = [passage_text(t.name, t.definition) for t in terms if t.definition]
    with autocast("auto"):
        real = encode(Encoder.load(ModelConfig()), texts, "passage", 32).numpy()
    print("MiniLM, HPO passages:", neighbourhood(real))
    print("embedding_like_vectors:", neighbourhood(embedding_like_vectors(len(real), 1)[0].astype(np.float32)))


# ---------------------------------------------------------------- train data

def write_training_run(work: Path, n_pairs: int, n_passages: int) -> Path:
    """A run folder whose passages are the prepared corpus and whose pairs/negatives hold n_pairs rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedtune.manifest import Stage

    run = work / f"train-{n_pairs}"
    source = work / f"prep-{n_passages}" / "passages"
    if (run / "negatives" / "manifest.json").exists():
        return run
    (run / "passages").mkdir(parents=True, exist_ok=True)
    manifest = json.loads((source / "manifest.json").read_text())
    for f in manifest["files"]:
        target = run / "passages" / f
        if not target.exists():
            os.link(source / f, target)
    (run / "passages" / "manifest.json").write_text(json.dumps(manifest))
    ids = pa.concat_arrays([pq.read_table(source / f, columns=["id"]).column("id").combine_chunks()
                            for f in manifest["files"]])
    rng = np.random.default_rng(0)
    positive = rng.integers(0, len(ids), size=n_pairs)
    negatives = rng.integers(0, len(ids), size=(n_pairs, 3))
    query_ids = pa.array([f"q{i:08d}" for i in range(n_pairs)])
    queries = pa.array([f"what is the meaning of item {i} in the synthetic corpus" for i in range(n_pairs)])
    pairs = pa.table({"query_id": query_ids, "query": queries, "passage_id": ids.take(pa.array(positive)),
                      "roundtrip_rank": pa.array(np.ones(n_pairs, dtype=np.int64)),
                      "judge_score": pa.nulls(n_pairs, pa.int64())})
    (run / "pairs").mkdir(exist_ok=True)
    pq.write_table(pairs, run / "pairs" / "train.parquet")
    pairs_manifest = Stage("filter", run / "pairs", {"n": n_pairs}, {}).finish({"train": n_pairs}, files=["train.parquet"])
    neg_ids = ids.take(pa.array(negatives.reshape(-1)))
    offsets = pa.array(np.arange(0, 3 * n_pairs + 1, 3, dtype=np.int32))
    rows = pa.table({"query_id": query_ids, "passage_id": pairs.column("passage_id"),
                     "positive_score": pa.array(np.full(n_pairs, 0.8)),
                     "negative_ids": pa.ListArray.from_arrays(offsets, neg_ids),
                     "negative_scores": pa.ListArray.from_arrays(offsets, pa.array(np.full(3 * n_pairs, 0.5)))})
    (run / "negatives").mkdir(exist_ok=True)
    pq.write_table(rows, run / "negatives" / "train.parquet")
    Stage("mine", run / "negatives", {"n": n_pairs}, {"pairs": pairs_manifest}).finish({"queries": n_pairs},
                                                                                      files=["train.parquet"])
    return run


def measure_train_data(run: Path, how: str, batches: int = 300) -> dict:
    """In this process: load the training data as `how` (mapped: what train does now; dicts: as before) and
    build `batches` batches of 32 with 1 hard negative."""
    from embedtune.config import Config
    from embedtune.io import read_rows, read_stage_table
    from embedtune.model import passage_text
    from embedtune.runs import RunFolder
    from embedtune.train import TrainConfig, TrainData

    cfg = Config(run_name=run.name)
    cfg.paths.runs = str(run.parent)
    folder = RunFolder(cfg)
    if how == "build":  # the tables as earlier stages leave them (mine builds passages and pairs, train negatives)
        folder.training_table(cfg), folder.query_texts("train"), folder.passage_texts()
        return {}
    started = time.time()
    if how == "mapped":
        data = TrainData(folder.training_table(cfg), folder.query_texts("train"), folder.passage_texts(),
                         TrainConfig(batch_size=32, hard_negatives=1))
    else:
        queries = {r["query_id"]: r["query"] for r in read_rows(folder.pairs / "train.parquet")}
        passages = {p["id"]: passage_text(p["title"], p["text"])
                    for p in read_stage_table(folder.passages, ["id", "title", "text"]).to_pylist()}
        data = TrainData(read_rows(folder.negatives / "train.parquet"), queries, passages,
                         TrainConfig(batch_size=32, hard_negatives=1))
    load_s = time.time() - started
    started = time.time()
    for step in range(batches):
        batch = data.batch(step)
        assert len(batch["candidates"]) == 2 * len(batch["queries"]) > 0
    return {"how": how, "pairs": len(data.rows), "load_s": round(load_s, 1),
            "ms_per_batch": round(1000 * (time.time() - started) / batches, 2), "peak_rss_mb": round(peak_rss_mb()),
            "private_mb": private_mb()}


# ---------------------------------------------------------------- report

def table(results: dict) -> str:
    lines = ["Prepare (`embedtune prepare corpus=jsonl`, synthetic documents):", "",
             "| documents | passages | seconds | passages/s | peak RSS (MB) |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in results["prepare"]:
        lines.append(f"| {r['documents']:,} | {r['passages']:,} | {r['seconds']:,.0f} | {r['passages_per_s']:,} "
                     f"| {r['peak_rss_mb']:,} |")
    p = results["prepare"]
    if len(p) >= 2:
        lines += ["", f"Peak RSS at {p[-1]['passages']:,} passages is {p[-1]['peak_rss_mb'] / p[0]['peak_rss_mb']:.2f}x "
                      f"that at {p[0]['passages']:,} (target: at most 1.5x)."]
    lines += ["", f"Mining search ({QUERIES:,} queries, top-{K}, 384-d vectors drawn with MiniLM's neighbourhoods "
                  "(`embedding_like_vectors`) in float16 shards, every 10th passage held out; recall@50 against "
                  "exact search on the same queries; the defaults: IVF with an eighth of its cells probed, "
                  "HNSW efSearch 128):", "",
              "| passages | index | build (s) | queries/s | x exact | recall@50 |",
              "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results["mining"]:
        lines.append(f"| {r['passages']:,} | {r['index']} | {r['build_s']:,.0f} | {r['queries_per_s']:,.0f} "
                     f"| {r['speedup']:.1f} | {r['recall']:.3f} |")
    lines += ["", "Training data loading (300 batches of 32 pairs, 1 hard negative each; the tables built by an "
                  "earlier process, as the stages before train leave them). Both columns include Python and torch "
                  "(about 300 MB); peak RSS also counts the pages of mapped files that were read, which are the "
                  "kernel's page cache (shared, dropped under pressure), private memory does not:", "",
              "| pairs | passages | read as | load (s) | ms per batch | peak RSS (MB) | private memory after (MB) |",
              "| ---: | ---: | --- | ---: | ---: | ---: | ---: |"]
    for r in results["train"]:
        how = "memory-mapped tables (now)" if r["how"] == "mapped" else "dicts + row list (before)"
        lines.append(f"| {r['pairs']:,} | {r['passages']:,} | {how} | {r['load_s']:,.1f} | {r['ms_per_batch']:.2f} "
                     f"| {r['peak_rss_mb']:,} | {r.get('private_mb', 0):,} |")
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    prep = results["prepare"]
    axes[0].bar([f"{r['passages']:,}" for r in prep], [r["peak_rss_mb"] for r in prep], color="#4c72b0")
    axes[0].set(title="prepare: peak RSS", xlabel="passages", ylabel="MB")
    for n in sorted({r["passages"] for r in results["mining"]}):
        rows = [r for r in results["mining"] if r["passages"] == n]
        axes[1].scatter([r["queries_per_s"] for r in rows], [r["recall"] for r in rows], label=f"{n:,} passages")
        for r in rows:
            axes[1].annotate(r["index"].split(" ")[0], (r["queries_per_s"], r["recall"]), fontsize=8)
    axes[1].set(title=f"mining search: recall@{K} vs speed", xlabel="queries/s (log)", ylabel=f"recall@{K}",
                xscale="log")
    axes[1].axhline(0.95, color="grey", lw=0.8, ls="--")
    axes[1].legend(fontsize=8)
    train = results["train"]
    axes[2].bar([r["how"] for r in train], [r.get("private_mb", 0) for r in train],
                color=["#55a868", "#c44e52"][:len(train)])
    axes[2].set(title=f"train data: private memory at {train[0]['pairs']:,} pairs" if train else "train data",
                ylabel="MB")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--work", type=Path, default=Path("/tmp/embedtune-scale"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--kinds", nargs="+", default=["ivf", "hnsw"])
    ap.add_argument("--part", choices=["all", "prepare", "mining", "train", "report"], default="all")
    ap.add_argument("--calibrate", action="store_true", help="compare the synthetic vectors with MiniLM on HPO")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)  # internal: one measurement in this process
    a = ap.parse_args()
    if a.child:
        what, arg = a.child[0], a.child[1:]
        if what == "mining":
            print(json.dumps(measure_mining(a.work, int(arg[0]), arg[1:])))
        else:
            print(json.dumps(measure_train_data(Path(arg[0]), arg[1])))
        return
    if a.calibrate:
        calibrate()
        return
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    saved = a.out / "scale.json"
    results = json.loads(saved.read_text()) if saved.exists() else {"prepare": [], "mining": [], "train": []}
    me = [sys.executable, str(Path(__file__).resolve()), "--work", str(a.work)]

    def save() -> None:  # after every part: a later part's failure keeps what was measured
        saved.write_text(json.dumps(results, indent=2) + "\n")
    if a.part in ("all", "prepare"):
        results["prepare"] = [measure_prepare(a.work, n) for n in a.sizes]
        save()
    if a.part in ("all", "mining"):
        results["mining"] = [r for n in a.sizes for r in child_json(me + ["--child", "mining", str(n), *a.kinds])]
        save()
    if a.part in ("all", "train"):
        run = write_training_run(a.work, a.pairs, max(a.sizes))
        passages = json.loads((run / "passages" / "manifest.json").read_text())["counts"]["passages"]
        child_json(me + ["--child", "train", str(run), "build"])
        results["train"] = [{**child_json(me + ["--child", "train", str(run), how]), "passages": passages}
                            for how in ("mapped", "dicts")]
        save()
    (a.out / "scale.md").write_text(f"Measured {time.strftime('%Y-%m-%d')} on this machine ({os.cpu_count()} cores) "
                                    f"with `python bench/scale.py`.\n\n" + table(results))
    plot(results, a.out / "scale.png")
    print(table(results))


def child_json(args: list[str]):
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
