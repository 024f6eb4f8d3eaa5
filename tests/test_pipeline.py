"""End to end: `embedtune run` on a small slice of the built-in demo (real generator, real MiniLM)."""

import json

import pytest
import torch
from helpers import embedtune

from embedtune.io import read_stage_table

pytestmark = pytest.mark.slow  # every test here runs whole stages in processes of their own

def test_every_stage_writes_its_manifest(demo_run):
    run = demo_run.folder
    for folder in ("passages", "queries", "pairs", "negatives", "checkpoints", "eval", "model"):
        manifest = json.loads((run / folder / "manifest.json").read_text())
        assert manifest["key"] and manifest["wall_time_s"] >= 0
    passages = json.loads((run / "passages" / "manifest.json").read_text())
    assert passages["counts"]["passages"] == 300
    queries = json.loads((run / "queries" / "manifest.json").read_text())
    assert queries["counts"]["queries"] == 24
    assert (run / "config.run.yaml").exists()


def test_every_stage_output_loads_with_datasets(demo_run, tmp_path):
    """The run folder's Parquet files are datasets' own format: `load_dataset("parquet", data_files=...)`
    opens every one, with its rows and columns."""
    import datasets
    import pyarrow.parquet as pq

    files = sorted(p for p in demo_run.folder.rglob("*.parquet") if "points" not in p.parts and "cache" not in p.parts)
    stages = {p.relative_to(demo_run.folder).parts[0] for p in files}
    assert {"passages", "queries", "pairs", "negatives"} <= stages
    for path in files:
        loaded = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(tmp_path))
        assert loaded.num_rows == pq.ParquetFile(path).metadata.num_rows, path
        assert loaded.column_names == pq.read_schema(path).names, path


def test_report_compares_base_and_tuned_on_human_and_synthetic_queries(demo_run):
    run, result = demo_run.folder, demo_run.result
    report = (run / "eval" / "report.md").read_text()
    for row in ("| hpo (test, human) | base |", "| hpo (test, human) | tuned |", "| synthetic (held-out) | base |",
                "| hpo (test, human) | bm25 |"):
        assert row in report
        assert row in result.stdout
    results = json.loads((run / "eval" / "report.json").read_text())
    hpo = results["hpo (test, human)"]
    assert 0 < hpo["base"]["nDCG@10"] <= 1 and hpo["base"]["queries"] > 10
    curve = [v for _, v in sorted(hpo["tuned"]["recall_curve"].items(), key=lambda kv: int(kv[0]))]
    assert curve == sorted(curve) and curve[-1] == pytest.approx(hpo["tuned"]["R@100"])
    assert "| hpo (test, human) | tuned | " in report.split("Recall@k:")[1]
    for png in ("metrics.png", "recall.png", "training.png"):
        assert (run / "eval" / png).stat().st_size > 1000
        assert f"![{png}]({png})" in report


def test_queries_report_shows_the_user_what_was_kept_and_why_the_rest_was_not(demo_run):
    import pyarrow.parquet as pq

    run, result = demo_run.folder, demo_run.result
    report = (run / "queries" / "report.md").read_text()
    for section in ("| chatter (labels", "| passage copies", "## Dropped, by reason", "## By query type",
                    "random kept queries per type", "![query lengths](lengths.png)"):
        assert section in report
    assert (run / "queries" / "lengths.png").stat().st_size > 1000
    train = {r["query"] for r in pq.read_table(run / "pairs" / "train.parquet").to_pylist()}
    dev_test = {r["query"] for s in ("dev", "test") for r in pq.read_table(run / "pairs" / f"{s}.parquet").to_pylist()}
    shown = [line.split(" | ")[0].lstrip("| ") for line in report.split("random kept queries per type")[1]
             .split("## Up to")[0].splitlines() if line.startswith("| ") and not line.startswith(("| query", "| ---"))]
    assert shown and all(q in train | dev_test for q in shown)  # the samples are real kept queries
    pairs = json.loads((run / "pairs" / "manifest.json").read_text())
    assert pairs["counts"]["kept"] + sum(pairs["counts"]["dropped"].values()) == pairs["counts"]["generated"] == 24
    assert 0 <= pairs["rates"]["chatter_in_kept"] <= 1 and pairs["rates"]["kept_train"] == len(train)
    assert "queries: kept" in result.stdout and "passage copies" in result.stdout
    assert "../queries/report.md" in (run / "eval" / "report.md").read_text()


def test_splits_do_not_share_documents(demo_run):
    import pyarrow.parquet as pq

    run = demo_run.folder
    doc = {r["id"]: r["doc_id"] for r in read_stage_table(run / "passages").to_pylist()}
    docs = {s: {doc[r["passage_id"]] for r in pq.read_table(run / "pairs" / f"{s}.parquet").to_pylist()}
            for s in ("train", "dev", "test")}
    assert not docs["train"] & docs["test"] and not docs["train"] & docs["dev"] and not docs["dev"] & docs["test"]


def test_no_held_out_passage_text_reaches_training(demo_run):
    """Training reads queries, positives and mined negatives: none of their passage texts is the text of a
    dev or test passage (splits are by document; mining skips held-out documents)."""
    import pyarrow.parquet as pq

    run = demo_run.folder
    text = {r["id"]: (r["title"], r["text"]) for r in read_stage_table(run / "passages").to_pylist()}
    negatives = pq.read_table(run / "negatives" / "train.parquet").to_pylist()
    trained = {text[r["passage_id"]] for r in negatives} | {text[n] for r in negatives for n in r["negative_ids"]}
    held_out = {text[r["passage_id"]] for s in ("dev", "test") for r in pq.read_table(run / "pairs" / f"{s}.parquet").to_pylist()}
    assert len(trained) > 20 and len(held_out) > 5  # not vacuous
    assert not trained & held_out


def test_export_matches_trained_encoder(demo_run):
    from sentence_transformers import SentenceTransformer

    from embedtune.model import Encoder

    run = demo_run.folder
    final = json.loads((run / "checkpoints" / "manifest.json").read_text())["final"]
    encoder = Encoder.load(None, path=str(run / "checkpoints" / final / "encoder"))
    exported = SentenceTransformer(str(run / "model"), device="cpu")
    texts = ["Abnormality of the heart valves", "Short stature. A height below the third centile."]
    with torch.no_grad():
        ours = encoder.eval()(encoder.tokenize(texts, "passage"))
    theirs = exported.encode(texts, prompt_name="passage", convert_to_tensor=True)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert "| hpo (test, human) | tuned |" in (run / "model" / "README.md").read_text()


def test_status_says_what_run_would_redo(demo_run):
    run = demo_run.folder
    result = embedtune("status", *demo_run.args, cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if not line.startswith("  version")}
    assert list(lines) == ["prepare", "generate", "filter", "mine", "score", "train", "eval", "export"]
    version = next(line for line in result.stdout.splitlines() if line.startswith("  version 1: emb-"))
    assert "300 passages" in version and "nDCG@10" in version and version.endswith("(model/)")
    kept = run / "versions" / "1"  # what made it: the resolved config (`embedtune run` writes config.run.yaml)
    assert "run_name: e2e" in (kept / "config.run.yaml").read_text()
    assert (kept / "encoder" / "embedtune_encoder.json").exists()  # and the encoder a refresh starts from
    assert lines.pop("score").split()[1:] == ["off", "(teacher.kind=none)"]  # no teacher: nothing to score
    assert all(line.split()[1] == "done" for line in lines.values()), result.stdout
    assert "passages 300" in lines["prepare"] and "generated 24" in lines["filter"]
    changed = embedtune("status", *demo_run.args, "mining.num_negatives=1", cwd=run.parent)
    states = {line.split()[0]: line.split()[1] for line in changed.stdout.splitlines()[1:]
              if not line.startswith("  version")}
    assert states == {"prepare": "done", "generate": "done", "filter": "done", "mine": "stale", "score": "off",
                      "train": "stale", "eval": "stale", "export": "stale"}
    manifests = {s: json.loads((run / f / "manifest.json").read_text())["counts"]
                 for s, f in (("prepare", "passages"), ("mine", "negatives"), ("train", "checkpoints"))}
    assert "dropped" in manifests["prepare"] and "queries_with_fewer_negatives" in manifests["mine"]
    assert manifests["train"]["pairs_dropped_per_epoch"] == 0  # one process: nothing to even out


def test_rerun_skips_every_stage(demo_run):
    run = demo_run.folder
    result = embedtune("run", *demo_run.args, cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    for stage in ("prepare", "filter", "mine", "train", "eval", "export"):
        assert f"{stage}: up to date" in result.stdout
    assert "generate: shard" not in result.stdout


def test_config_change_reruns_from_the_changed_stage(demo_run):
    run = demo_run.folder
    before = json.loads((run / "negatives" / "manifest.json").read_text())["key"]
    result = embedtune("mine", *demo_run.stage_args, "mining.num_negatives=1", cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    after = json.loads((run / "negatives" / "manifest.json").read_text())
    assert after["key"] != before and "mine: up to date" not in result.stdout
    assert after["counts"]["negatives"] <= after["counts"]["queries"]


def test_force_reruns_an_up_to_date_stage(demo_run):
    run = demo_run.folder
    result = embedtune("filter", *demo_run.stage_args, "force=true", cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "filter: kept" in result.stdout and "up to date" not in result.stdout


def test_eval_reports_any_beir_set_given(demo_run):
    run = demo_run.folder
    extra = f"eval.beir=[{{name: extra-set, path: {run / 'benchmarks' / 'hpo'}, split: dev}}]"
    result = embedtune("eval", *demo_run.stage_args, extra, cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((run / "eval" / "report.json").read_text())
    assert set(results["extra-set"]) == {"base", "tuned", "bm25"}
    dev_queries = len((run / "benchmarks" / "hpo" / "qrels" / "dev.tsv").read_text().splitlines()) - 1
    assert 0 < results["extra-set"]["base"]["queries"] <= dev_queries
    assert "| extra-set | tuned |" in (run / "eval" / "report.md").read_text()


def test_roundtrip_filter_keeps_queries_whose_passage_ranks_high(demo_run):
    import pyarrow.parquet as pq

    run = demo_run.folder
    result = embedtune("filter", *demo_run.stage_args, "filter.roundtrip_top_k=1", cwd=run.parent)
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((run / "pairs" / "manifest.json").read_text())
    assert "roundtrip" in manifest["counts"]["dropped"] and "roundtrip" in result.stdout
    ranks = {s: [r["roundtrip_rank"] for r in pq.read_table(run / "pairs" / f"{s}.parquet").to_pylist()]
             for s in ("train", "dev", "test")}
    assert ranks["train"] and all(r == 1 for r in ranks["train"] + ranks["dev"])
    assert all(r >= 1 for r in ranks["test"])
    assert any(r > 1 for r in ranks["test"])  # a held-out query its passage ranks below the top 1 for: exempt, kept
    assert sum(map(len, ranks.values())) == manifest["counts"]["kept"]
    # test is ranked but not filtered (no selection by the base model): the same test split as with no round trip
    unfiltered = embedtune("filter", *demo_run.stage_args, "filter.roundtrip_top_k=null", cwd=run.parent)
    assert unfiltered.returncode == 0, unfiltered.stderr[-2000:]
    test_without = pq.read_table(run / "pairs" / "test.parquet").column("query_id").to_pylist()
    assert len(test_without) == len(ranks["test"]) > 0
    # a margin as wide as cosines go lets every query through the top-1 round trip: the setting reaches the stage
    everything = json.loads((run / "pairs" / "manifest.json").read_text())["counts"]["kept"]
    wide = embedtune("filter", *demo_run.stage_args, "filter.roundtrip_top_k=1", "filter.roundtrip_margin=2.0",
                     cwd=run.parent)
    assert wide.returncode == 0, wide.stderr[-2000:]
    counts = json.loads((run / "pairs" / "manifest.json").read_text())["counts"]
    assert counts["kept"] == everything > manifest["counts"]["kept"] and counts["dropped"]["roundtrip"] == 0
    ranks_kept = pq.read_table(run / "pairs" / "train.parquet").column("roundtrip_rank").to_pylist()
    assert max(ranks_kept) > 1  # ranked below the top 1, kept by the margin


def test_train_stage_under_accelerate_launch_with_two_processes(demo_run, tmp_path):
    """The real CLI under `accelerate launch --config_file launch/cpu-2.yaml`: a copy of the run's finished
    stages, trained with gradient caching on 2 processes; one manifest, written by rank 0; eval reads it."""
    import shutil

    import pyarrow.parquet as pq
    from helpers import accelerate_launch

    run = demo_run.folder
    copy = tmp_path / "e2e"
    for stage in ("passages", "queries", "pairs", "negatives", "benchmarks"):
        shutil.copytree(run / stage, copy / stage)
    # earlier tests re-filtered pairs: mine the copy again, with an IVF index, then on 2 processes (each mines
    # a contiguous share of the queries with the same cached index; rank 0 joins them): the same file
    ivf = ["mining.index=ivf", "mining.ivf_lists=4", "mining.ivf_probe=2", "mining.query_block=3"]
    mined = embedtune("mine", *demo_run.stage_args[:2], f"paths.runs={tmp_path}", *ivf, cwd=tmp_path)
    assert mined.returncode == 0, mined.stderr[-2000:]
    assert "by IVF index (4 lists, 2 probed, 8 x top_k re-scored in fp16)" in mined.stdout and "recall@51" in mined.stdout
    one = pq.read_table(copy / "negatives" / "train.parquet")
    recall = json.loads((copy / "negatives" / "manifest.json").read_text())["search"]
    assert recall["sample"] == one.num_rows and 0 < recall["recall"] <= 1
    two = accelerate_launch(["-m", "embedtune.cli", "mine", *demo_run.stage_args[:2], f"paths.runs={tmp_path}", *ivf,
                             "force=true"], processes=2, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(rank 1/2)" in two.stderr and two.stdout.count("hard negatives for") == 1
    assert f"{one.num_rows} queries answered from the last mining plus a search of 0 new" in two.stdout  # kept lists
    assert pq.read_table(copy / "negatives" / "train.parquet").equals(one)
    assert len(list((copy / "cache").rglob("*.faiss"))) == 1  # built once, read by the other runs
    args = ["-m", "embedtune.cli", "train", "debug=tiny", "run_name=e2e", f"paths.runs={tmp_path}",
            "train.grad_cache=true", "train.chunk_size=2", "logger=none"]
    result = accelerate_launch(args, processes=2, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((copy / "checkpoints" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["counts"]["steps"] == 4
    assert (copy / "checkpoints" / manifest["final"] / "encoder" / "model.safetensors").exists()
    assert result.stdout.count("train: 4 steps") == 1  # rank 1 neither prints nor writes the manifest

    # eval on the same 2 processes: each rank encodes half of every corpus; rank 0 alone writes the report
    args = ["-m", "embedtune.cli", "eval", *demo_run.stage_args[:2], f"paths.runs={tmp_path}", "eval.precision=fp32",
            "logger=none"]
    two = accelerate_launch(args, processes=2, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(rank 1/2)" in two.stderr and two.stdout.count("| hpo (test, human) | tuned |") == 1
    sharded = json.loads((copy / "eval" / "report.json").read_text())
    shutil.rmtree(copy / "cache")  # the 1-process eval must encode everything again, not read rank-split vectors
    one = embedtune("eval", *demo_run.stage_args[:2], f"paths.runs={tmp_path}", "eval.precision=fp32", "force=true",
                    cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-2000:]
    single = json.loads((copy / "eval" / "report.json").read_text())
    assert set(single) == set(sharded) and len(single) >= 2
    # other batch compositions change fp32 scores by ~1e-7, which may swap two near-tied documents: ~4e-6 in nDCG
    assert [c["comparison"] for c in single["comparisons"]][:2] == ["tuned - base", "tuned - bm25"]
    for name, models in single.items():
        if name in ("comparisons", "summary"):
            continue
        for model in ("base", "tuned"):
            for metric in ("nDCG@10", "R@10", "MRR@10", "MAP@100"):
                assert sharded[name][model][metric] == pytest.approx(models[model][metric], abs=1e-4), (name, model)


def test_sweep_recipe_trains_each_point_in_its_own_folder_and_tabulates_them(demo_run):
    """`embedtune train -m experiment=temperature_sweep`: three points (Hydra's basic launcher), each in
    points/<overrides>/ seeded with hard links to the run's stages, and one sweep table at the end."""
    run = demo_run.folder
    refiltered = embedtune("filter", *demo_run.stage_args, "force=true", cwd=run.parent)
    assert refiltered.returncode == 0, refiltered.stderr[-2000:]
    stale = embedtune("train", *demo_run.stage_args, "point=stale", cwd=run.parent)
    assert stale.returncode == 2 and "run `embedtune mine` first" in stale.stderr  # negatives predate the pairs
    mined = embedtune("mine", *demo_run.stage_args, cwd=run.parent)
    assert mined.returncode == 0, mined.stderr[-2000:]
    result = embedtune("train", "-m", "experiment=temperature_sweep", *demo_run.stage_args, "logger=none",
                       cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    points = sorted(p.name for p in (run / "points").iterdir() if p.name.startswith("debug="))
    assert points == [f"debug=tiny,experiment=temperature_sweep,loss.temperature={t}" for t in ("0.02", "0.05", "0.1")]
    for point in points:
        folder = run / "points" / point
        assert json.loads((folder / "checkpoints" / "manifest.json").read_text())["counts"]["steps"] == 4
        assert (folder / "negatives" / "train.parquet").stat().st_ino == (run / "negatives" / "train.parquet").stat().st_ino
    sweep = sorted((run / "sweeps").iterdir())[-1]
    rows = json.loads((sweep / "sweep.json").read_text())
    assert [r["point"] for r in rows] == points
    losses = [r["metrics"]["train/loss"] for r in rows]
    assert len(set(losses)) == 3  # the temperature did change training
    assert (sweep / "sweep.md").read_text().count("| debug=tiny,experiment=temperature_sweep") == 3
    assert "sweep: " in result.stdout


def test_one_process_under_accelerate_launch_with_gradient_caching(demo_run):
    """The README's 1-GPU command in its CPU form (launch/cpu.yaml), trained in a point folder (`point=`)
    so the run's own checkpoints stay as they are."""
    from helpers import accelerate_launch

    run = demo_run.folder
    result = accelerate_launch(["-m", "embedtune.cli", "train", *demo_run.stage_args, "point=cpu1",
                                "train.grad_cache=true", "train.chunk_size=2", "logger=none"], processes=1, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((run / "points" / "cpu1" / "checkpoints" / "manifest.json").read_text())
    assert manifest["processes"] == 1 and manifest["counts"]["steps"] == 4
    assert "point cpu1: linked passages, queries, pairs, negatives" in result.stdout
