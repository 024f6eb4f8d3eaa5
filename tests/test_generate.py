"""generate: prompts, output cleaning, the transformers backend, and the sharded runner with merge."""

import json

import pytest
from conftest import write_passages

from embedtune.errors import EmbedtuneError
from embedtune.generate.prompts import FewShot, PromptConfig, clean_query, flatten, render
from embedtune.generate.runner import GeneratorConfig, read_queries, run_generate, select_passages


def test_render_fills_domain_and_cuts_long_passages_at_a_word():
    cfg = PromptConfig(domain="cardiology", passage_max_chars=40,
                       examples=[FewShot(passage="Fast heart beat.", query="tachycardia")])
    messages = render("keyword", "Title", "word " * 50, cfg)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert "cardiology" in messages[-1]["content"] and messages[1]["content"] == "tachycardia"
    text = messages[-1]["content"].split("Text: ", 1)[1]
    assert text.startswith("Title. word") and text.endswith(" ...") and len(text) <= 45
    flat = flatten(messages)
    assert flat.endswith("\nQuery:") and "Query: tachycardia\n\n" in flat


@pytest.mark.parametrize("raw, expected", [
    ('"Enlarged heart"\nExplanation: ...', "Enlarged heart"),
    ("Query: small kidneys", "small kidneys"),
    ("\n\n1. short   stature  ", "short stature"),
    ("- fever in children", "fever in children"),
    ("   ", ""),
])
def test_clean_query(raw, expected):
    assert clean_query(raw) == expected


def test_select_passages_is_a_stable_sample():
    ids = [f"p{i}" for i in range(100)]
    cfg = GeneratorConfig(max_passages=10)
    chosen = select_passages(ids, cfg)
    assert len(chosen) == 10 and chosen == select_passages(list(reversed(ids)), cfg)
    assert select_passages(ids[:50] + ["new"] + ids[50:], cfg) - chosen <= {"new"}
    assert select_passages(ids, GeneratorConfig(max_passages=None)) == set(ids)


@pytest.fixture
def passages_dir(tmp_path):
    return write_passages(tmp_path / "passages", 12)


def config(tiny_lm_dir, **kw) -> GeneratorConfig:
    return GeneratorConfig(model=str(tiny_lm_dir), dtype="float32", max_new_tokens=4, batch_size=5,
                           max_passages=None, **kw)


def test_shards_merge_to_the_single_process_result(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    single = run_generate(config(tiny_lm_dir), passages_dir, tmp_path / "one", manifest)
    assert single["counts"]["queries"] == 12
    cfg0, cfg1 = config(tiny_lm_dir), config(tiny_lm_dir)
    cfg0.shard.index, cfg0.shard.count = 0, 2
    cfg1.shard.index, cfg1.shard.count = 1, 2
    out = tmp_path / "two"
    assert run_generate(cfg0, passages_dir, out, manifest) is None  # shard 1 missing: no manifest yet
    assert not (out / "manifest.json").exists()
    with pytest.raises(EmbedtuneError, match="generation is not complete"):
        read_queries(out)
    merged = run_generate(cfg1, passages_dir, out, manifest)
    assert merged["counts"]["queries"] == 12
    rows = lambda folder: sorted((q["passage_id"], q["query_id"], q["text"]) for q in read_queries(folder))
    assert rows(out) == rows(tmp_path / "one")


def test_rerun_skips_finished_shards_and_config_change_regenerates(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    out = tmp_path / "q"
    cfg = config(tiny_lm_dir)
    cfg.shard.index, cfg.shard.count = 0, 2
    run_generate(cfg, passages_dir, out, manifest)
    shard = out / "shard-0-of-2.parquet"
    stamp = shard.stat().st_mtime_ns
    run_generate(cfg, passages_dir, out, manifest)
    assert shard.stat().st_mtime_ns == stamp  # done: not regenerated
    cfg.max_new_tokens = 5
    run_generate(cfg, passages_dir, out, manifest)
    assert shard.stat().st_mtime_ns != stamp  # another key: regenerated


def test_several_queries_per_passage_need_sampling(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    with pytest.raises(EmbedtuneError, match="temperature"):
        run_generate(config(tiny_lm_dir, queries_per_template=2), passages_dir, tmp_path / "q", manifest)
    sampled = config(tiny_lm_dir, queries_per_template=2, temperature=1.0)
    sampled.prompt.templates = ["keyword", "question"]
    result = run_generate(sampled, passages_dir, tmp_path / "q", manifest)
    queries = read_queries(tmp_path / "q")
    assert result["counts"]["queries"] == len(queries) == 12 * 2 * 2
    assert {q["prompt"] for q in queries} == {"keyword", "question"}
    assert len({q["query_id"] for q in queries}) == len(queries)


def test_unknown_template_is_named(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    cfg = config(tiny_lm_dir)
    cfg.prompt.templates = ["haiku"]
    with pytest.raises(EmbedtuneError, match="haiku"):
        run_generate(cfg, passages_dir, tmp_path / "q", manifest)


def test_two_processes_under_accelerate_launch_match_one_process(tiny_lm_dir, passages_dir, tmp_path):
    """Ranks take their shard from the launcher's RANK/WORLD_SIZE; the merged rows equal one process's."""
    import os
    import shutil
    import subprocess
    import sys

    for name in ("one", "two"):
        shutil.copytree(passages_dir, tmp_path / "runs" / name / "passages")
    args = [f"paths.runs={tmp_path / 'runs'}", f"generator.model={tiny_lm_dir}", "generator.dtype=float32",
            "generator.max_new_tokens=4", "generator.batch_size=1", "generator.max_passages=null", "logger=none"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    one = subprocess.run([sys.executable, "-m", "embedtune.cli", "generate", "run_name=one", *args],
                         capture_output=True, text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--main_process_port", "29533", "-m", "embedtune.cli", "generate",
              "run_name=two", *args]
    two = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    out = tmp_path / "runs" / "two" / "queries"
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == ["shard-0-of-2.parquet", "shard-1-of-2.parquet"]
    assert rows_of(out) == rows_of(tmp_path / "runs" / "one" / "queries") and len(rows_of(out)) == 12


def rows_of(folder):
    return sorted((q["passage_id"], q["query_id"], q["text"]) for q in read_queries(folder))


def test_seq2seq_generators_work_too(tiny_model_dir, tmp_path):
    """An encoder-decoder (a tiny random T5) goes through the same backend: no prompt echo to strip."""
    import shutil

    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from embedtune.generate.backends import BackendConfig, TransformersBackend

    folder = tmp_path / "t5"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    vocab = len((folder / "vocab.txt").read_text().split())
    config = T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                      pad_token_id=0, eos_token_id=3, decoder_start_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        T5ForConditionalGeneration(config).save_pretrained(folder, safe_serialization=True)
    backend = TransformersBackend(BackendConfig(model=str(folder), dtype="float32", max_new_tokens=5, batch_size=2))
    assert backend.seq2seq
    prompts = [backend.format(render("keyword", "Heart", "the heart and the blood", PromptConfig()))] * 3
    out = backend.generate(prompts)
    assert len(out) == 3 and out[0] == out[1] == out[2]  # greedy: same prompt, same answer
    assert "Text:" not in out[0]  # the encoder's input is not part of a seq2seq output


def test_few_shot_examples_bootstrapped_from_the_corpus_are_shared_by_shards(tiny_lm_dir, passages_dir, tmp_path):
    from embedtune.generate.backends import TransformersBackend
    from embedtune.generate.runner import bootstrap_examples
    from embedtune.io import read_stage_table

    cfg = config(tiny_lm_dir)
    cfg.prompt.sample_examples = 2
    passages = read_stage_table(passages_dir).to_pylist()
    backend = TransformersBackend(cfg)
    examples = bootstrap_examples(passages, cfg, backend)
    texts = {f"{p['title']}. {p['text']}" for p in passages}
    assert 1 <= len(examples) <= 2 and all(e.passage in texts and e.query for e in examples)
    assert bootstrap_examples(list(reversed(passages)), cfg, backend) == examples  # order-free sample
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    single = run_generate(cfg, passages_dir, tmp_path / "one", manifest)
    plain = run_generate(config(tiny_lm_dir), passages_dir, tmp_path / "plain", manifest)
    assert single["key"] != plain["key"]
    halves = []
    for index in (0, 1):
        part = config(tiny_lm_dir)
        part.prompt.sample_examples = 2
        part.shard.index, part.shard.count = index, 2
        halves.append(run_generate(part, passages_dir, tmp_path / "two", manifest))
    assert halves[0] is None and halves[1]["counts"]["queries"] == 12
    assert rows_of(tmp_path / "two") == rows_of(tmp_path / "one")


GENERATE_ONE_SHARD = """
import json, sys
from pathlib import Path
from embedtune.generate.runner import GeneratorConfig, run_generate
model, passages, out, index = sys.argv[1:5]
cfg = GeneratorConfig(model=model, dtype="float32", max_new_tokens=32, batch_size=1, max_passages=None)
cfg.shard.index, cfg.shard.count = int(index), 2
run_generate(cfg, Path(passages), Path(out), json.loads((Path(passages) / "manifest.json").read_text()))
"""


def test_kill_9_mid_shard_then_rerun_loses_and_duplicates_nothing(tiny_lm_dir, tmp_path):
    """Shard 1 of 2 is SIGKILLed while it generates (after its progress bar appeared, before its .done);
    running it again finishes the shard and the merge equals a run that was never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    passages = write_passages(tmp_path / "passages", 300)

    def shard(out, index, background=False):
        command = [sys.executable, "-c", GENERATE_ONE_SHARD, str(tiny_lm_dir), str(passages), str(out), str(index)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        if background:
            return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]

    killed, whole = tmp_path / "killed", tmp_path / "whole"
    shard(killed, 0)
    proc = shard(killed, 1, background=True)
    seen = ""
    while "generate:   0%" not in seen and proc.poll() is None:
        seen += proc.stderr.read(1)
    time.sleep(0.5)
    assert proc.poll() is None and not (killed / "shard-1-of-2.done").exists(), "the shard ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "manifest.json").exists()
    shard(killed, 1)  # the same command again
    for index in (0, 1):
        shard(whole, index)
    got, expected = rows_of(killed), rows_of(whole)
    assert len(got) == 300 and len({r[1] for r in got}) == 300  # every passage once, no duplicate query id
    assert got == expected
