"""generate: prompts, output cleaning, the transformers backend, and the sharded runner with merge."""

import hashlib
import json
from collections import defaultdict

import pyarrow.parquet as pq
import pytest
import torch
from helpers import write_passages

from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import Answer, answer_of, first_line
from embedtune.generate.backends import BackendConfig, NoRepeatInAnswer, StopAtNewline
from embedtune.generate.decoding import shared_start
from embedtune.generate.prompts import PromptConfig, builtin_types, cut, render
from embedtune.generate.runner import (
    GeneratorConfig,
    check_generator,
    query_types,
    read_queries,
    run_generate,
    select_passages,
    shard_passages,
)


def test_render_shows_each_types_examples_as_earlier_turns_and_as_a_completion():
    cfg = PromptConfig(domain="cardiology")
    prompt = render("keyword", cut("Title. " + "word " * 200, 40), cfg, max_new_tokens=48)
    roles = [m["role"] for m in prompt.messages]
    assert roles == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert "cardiology" in prompt.messages[0]["content"]
    assert prompt.messages[2]["content"] == "sourdough starter wild yeast"  # the first example's answer
    text = prompt.messages[-1]["content"].split("Text: ", 1)[1].split("\n\n")[0]
    assert text.startswith("Title. word") and text.endswith(" ...") and len(text) <= 45
    assert prompt.completion.endswith("\nSearch:") and "Search: force majeure clause flood\n\n" in prompt.completion
    assert prompt.max_new_tokens == builtin_types()["keyword"].max_new_tokens and prompt.group == "keyword"
    assert render("keyword", "t", cfg, max_new_tokens=4).max_new_tokens == 4  # generator.max_new_tokens caps


def test_query_types_are_distinct_seeded_and_follow_the_mix():
    cfg = GeneratorConfig(queries_per_passage=2)
    cfg.prompt.mix = {"keyword": 1.0, "question": 1.0, "claim": 1.0, "plain": 0.0}
    drawn = [query_types(f"p{i}", cfg) for i in range(3000)]
    assert all(len(set(t)) == 2 and "plain" not in t for t in drawn)
    assert drawn == [query_types(f"p{i}", cfg) for i in range(3000)]  # a function of (seed, passage id)
    one = GeneratorConfig()
    one.prompt.mix = {"keyword": 3.0, "question": 1.0, "claim": 0.0, "plain": 0.0}
    share = sum(query_types(f"p{i}", one) == ["keyword"] for i in range(4000)) / 4000
    assert 0.72 < share < 0.78  # weights 3:1


def test_generator_settings_are_checked_together():
    cfg = GeneratorConfig(queries_per_passage=3)
    cfg.prompt.mix = {"keyword": 1.0, "haiku": 1.0}
    with pytest.raises(EmbedtuneError) as error:
        check_generator(cfg)
    assert "haiku" in str(error.value) and "queries_per_passage=3" in str(error.value)


def test_first_line_shared_start_and_no_repeat_in_answer():
    assert first_line("\n  keyword one\nThe query is") == "  keyword one".lstrip()
    assert answer_of("cut off mid", hit_limit=True) == Answer("cut off mid", False)
    assert answer_of("ended\nmore", hit_limit=True).finished
    assert shared_start([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert shared_start([[1, 2, 3], [1, 2, 3]]) == 2  # every sequence keeps a token of its own
    scores = torch.zeros(2, 10)
    processor = NoRepeatInAnswer(prompt_length=2, n=3)
    out = processor(torch.tensor([[9, 9, 4, 5, 6, 4, 5], [9, 9, 1, 2, 3, 4, 5]]), scores)
    assert out[0, 6] == -float("inf") and torch.isfinite(out[0, :6]).all()  # 4 5 -> 6 again would repeat
    assert torch.isfinite(out[1]).all()


def byte_level_tokenizer():
    """A real byte-level BPE tokenizer (GPT-2 style, as most generators use), trained here on a few lines."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["heart rate\nthe heart\n\nblood flow", "kidney stones\nrenal cysts"] * 20,
                            vocab_size=300, min_frequency=1, show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


def test_stop_at_newline_once_the_answer_has_text():
    tokenizer = byte_level_tokenizer()
    newline, word = tokenizer.convert_tokens_to_ids("Ċ"), tokenizer("heart")["input_ids"][0]
    stop = StopAtNewline(tokenizer, prompt_length=1)
    rows = torch.tensor([[5, word, newline], [5, newline, newline], [5, newline, word]])
    assert stop(rows, None).tolist() == [True, False, False]  # a leading line break does not end the answer


def test_select_passages_is_a_stable_sample():
    ids = [f"p{i}" for i in range(100)]
    cfg = GeneratorConfig(max_passages=10)
    chosen = select_passages(ids, cfg)
    assert len(chosen) == 10 and chosen == select_passages(list(reversed(ids)), cfg)
    assert select_passages(ids[:50] + ["new"] + ids[50:], cfg) - chosen <= {"new"}
    assert select_passages(ids, GeneratorConfig(max_passages=None)) == set(ids)


@pytest.mark.parametrize("max_passages", [7, None])
def test_each_shard_reads_only_its_own_passages_of_the_sample(tmp_path, max_passages):
    folder = write_passages(tmp_path / "passages", 40)
    cfg = GeneratorConfig(max_passages=max_passages)
    ids = pq.read_table(folder / "part-00000.parquet", columns=["id"]).column("id").to_pylist()
    shards = [shard_passages(folder, cfg, i, 3) for i in range(3)]
    owned = [{p["id"] for p in shard} for shard in shards]
    assert set().union(*owned) == select_passages(ids, cfg) and sum(map(len, owned)) == (max_passages or 40)
    assert all(int(hashlib.sha1(p.encode()).hexdigest(), 16) % 3 == i for i, ids_ in enumerate(owned) for p in ids_)
    assert all(set(p) == {"id", "title", "text"} for shard in shards for p in shard)


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


def test_a_rerun_after_a_kill_asks_only_the_unsaved_windows_and_answers_as_an_uninterrupted_run(
        tiny_lm_dir, passages_dir, tmp_path):
    """The state a kill leaves (the shard's plan, the first window's answers saved) is made from an uninterrupted
    run's own files; the rerun asks the real transformers backend for the other windows only, in the same
    batches and with the same seeds, so every answer (sampled ones included) equals the uninterrupted run's."""
    import shutil

    from embedtune.generate.cache import GenerationCache
    from embedtune.generate.runner import Plan, generate_shard

    cfg = config(tiny_lm_dir, save_every=4, temperature=0.8)
    passages = shard_passages(passages_dir, cfg, 0, 1)
    whole = GenerationCache(tmp_path / "whole", cfg, "float32")
    plan = Plan(tmp_path / "shard.plan", "key")
    rows, reused = generate_shard(passages, cfg, 0, 1, whole, plan)
    parts = sorted(whole.folder.glob("part-*.parquet"))
    assert reused == 0 and len(parts) == 3  # 12 prompts, kept 4 at a time

    killed = GenerationCache(tmp_path / "killed", cfg, "float32")
    killed.folder.mkdir(parents=True)
    shutil.copy2(parts[0], killed.folder / parts[0].name)  # the first window was kept before the kill
    again, reused = generate_shard(passages, cfg, 0, 1, killed, plan)
    assert reused == 4 and len(list(killed.folder.glob("part-*.parquet"))) == 3  # 8 asked, in 2 windows
    assert [r["raw"] for r in again] == [r["raw"] for r in rows] and len({r["raw"] for r in rows}) > 1


def test_several_queries_per_passage_each_of_another_type(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    cfg = config(tiny_lm_dir, queries_per_passage=2)
    cfg.prompt.mix = {"keyword": 1.0, "question": 1.0, "claim": 1.0, "plain": 0.0}
    result = run_generate(cfg, passages_dir, tmp_path / "q", manifest)
    queries = read_queries(tmp_path / "q")
    assert result["counts"]["queries"] == len(queries) == 12 * 2
    per_passage = defaultdict(set)
    for q in queries:
        per_passage[q["passage_id"]].add(q["prompt"])
    assert all(len(kinds) == 2 and "plain" not in kinds for kinds in per_passage.values())
    assert len({q["query_id"] for q in queries}) == len(queries)
    assert {"raw", "finished", "reason", "chatter"} <= set(queries[0])
    assert sum(result["counts"]["dropped"].values()) + result["counts"]["extracted"] == 24


def test_prefill_starts_every_answer_and_is_kept_in_the_raw_output(tiny_lm_dir, passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    cfg = config(tiny_lm_dir)
    cfg.prompt.mix = {"keyword": 1.0, "question": 0.0, "claim": 0.0, "plain": 0.0}
    cfg.prompt.types["keyword"].prefill = "heart"
    run_generate(cfg, passages_dir, tmp_path / "q", manifest)
    queries = read_queries(tmp_path / "q")
    assert all(q["raw"].startswith("heart") for q in queries) and len(queries) == 12


def test_unknown_query_type_is_named_before_loading_the_model(passages_dir, tmp_path):
    manifest = json.loads((passages_dir / "manifest.json").read_text())
    cfg = GeneratorConfig(model="/does/not/exist", max_passages=None)
    cfg.prompt.mix = {"haiku": 1.0}
    with pytest.raises(EmbedtuneError, match="haiku"):
        run_generate(cfg, passages_dir, tmp_path / "q", manifest)


def test_the_cached_few_shot_start_changes_no_answer(tiny_lm_dir):
    """Batches reuse the keys and values of the prompts' shared start, with padding between it and each
    passage: every answer equals the one generated for that prompt alone, without cache or padding."""
    from embedtune.generate.backends import TransformersBackend
    from embedtune.generate.decoding import MIN_SHARED_TOKENS

    backend = TransformersBackend(BackendConfig(model=str(tiny_lm_dir), dtype="float32", batch_size=4))
    passages = [("the heart " * n + "and the blood").strip() for n in (1, 7, 3, 12, 5, 2)]
    prompts = [render("keyword", p, PromptConfig(), max_new_tokens=6) for p in passages]
    ids = backend.token_ids(prompts)
    assert shared_start(ids) >= MIN_SHARED_TOKENS
    batched = backend.generate(prompts)
    alone = [backend._generate_batch([row], [], None, 6)[0] for row in ids]
    assert [a.text for a in batched] == [a.text for a in alone]
    assert any(a.text for a in batched)


@pytest.mark.slow
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

    from embedtune.generate.backends import TransformersBackend

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
    prompts = [render("keyword", "Heart. the heart and the blood", PromptConfig(), max_new_tokens=5)] * 3
    out = [answer.text for answer in backend.generate(prompts)]
    assert len(out) == 3 and out[0] == out[1] == out[2]  # greedy: same prompt, same answer
    assert "Text:" not in out[0]  # the encoder's input is not part of a seq2seq output


GENERATE_ONE_SHARD = """
import json, sys
from pathlib import Path
from embedtune.generate.runner import GeneratorConfig, run_generate
model, passages, out, index = sys.argv[1:5]
cfg = GeneratorConfig(model=model, dtype="float32", max_new_tokens=32, batch_size=1, max_passages=None)
cfg.shard.index, cfg.shard.count = int(index), 2
run_generate(cfg, Path(passages), Path(out), json.loads((Path(passages) / "manifest.json").read_text()))
"""


@pytest.mark.slow
def test_kill_9_mid_shard_then_rerun_loses_and_duplicates_nothing(tiny_lm_dir, tmp_path):
    """Shard 1 of 2 is SIGKILLed while it generates (after its progress bar appeared, before its .done);
    running it again finishes the shard and the merge equals a run that was never killed."""
    import os
    import signal
    import subprocess
    import sys
    import time

    passages = write_passages(tmp_path / "passages", 120)

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
    assert len(got) == 120 and len({r[1] for r in got}) == 120  # every passage once, no duplicate query id
    assert got == expected
