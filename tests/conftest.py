"""Shared fixtures. Each fixture is self-contained; add new ones below with their own section header."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# ---------------------------------------------------------------- tiny_model_dir: a 2-layer, 32-wide BERT

TINY_HIDDEN = 32  # embedding width of the tiny BERT (tests compare shapes against it)

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789")
_PUNCT = list(".,:;!?'\"()-/")
_WORDS = ["query", "passage", "the", "a", "of", "and", "in", "is", "gene", "protein", "heart", "lung",
          "kidney", "liver", "brain", "blood", "cell", "disease", "fever", "pain", "cat", "dog", "fish",
          "bird", "red", "blue", "green", "music", "river", "mountain", "city", "train", "apple", "bread"]


def tiny_vocab() -> list[str]:
    """A WordPiece vocab that tokenizes any lower-case ASCII text (whole words, else characters)."""
    tokens = _SPECIAL + _PUNCT + _CHARS + ["##" + c for c in _CHARS] + _WORDS
    return list(dict.fromkeys(tokens))  # "a" is both a character and a word


def build_tiny_model(folder: Path, seed: int = 0) -> Path:
    """A random BertModel (2 layers, hidden 32, 2 heads, intermediate 64) + its tokenizer, saved in `folder`."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained on a folder with only vocab.txt works across transformers 4.x and 5.x constructors
    tokenizer = BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True, model_max_length=512)
    config = BertConfig(vocab_size=len(vocab), hidden_size=TINY_HIDDEN, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                        pad_token_id=0)
    with torch.random.fork_rng():  # leave the global RNG of the session as it was
        torch.manual_seed(seed)
        model = BertModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    assert (folder / "model.safetensors").exists()
    assert len(tokenizer) == config.vocab_size
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A folder with a tiny random BERT (safetensors) and its WordPiece tokenizer; load it with
    `Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="mean"))`. Read-only: copy it to change it."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert") / "model", seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir_other(tmp_path_factory) -> Path:
    """Like `tiny_model_dir` but with other random weights (seed 1): a second, different tiny encoder."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert_other") / "model", seed=1)


# ---------------------------------------------------------------- torch_one_thread

@pytest.fixture(scope="module")
def torch_one_thread():
    """One intra-op thread for the module's tests: tiny models gain nothing from more, and on a shared
    2-core machine busy-waiting OpenMP threads make each op wait for a time slice (100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- tiny_lm_dir: a 2-layer, 32-wide Llama

@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A tiny random causal LM (LlamaForCausalLM, safetensors) with the tiny WordPiece tokenizer; no chat
    template, so prompts are flattened. Greedy decoding is deterministic."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = build_tiny_model(tmp_path_factory.mktemp("tiny_lm") / "model", seed=0)
    (folder / "model.safetensors").unlink()
    (folder / "config.json").unlink()
    config = LlamaConfig(vocab_size=len(tiny_vocab()), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                         pad_token_id=0, bos_token_id=2, eos_token_id=3)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder


# ---------------------------------------------------------------- write_passages: a finished prepare stage

def write_passages(folder: Path, n: int) -> Path:
    """A passages/ folder as `prepare` leaves it (one Parquet part + manifest) with `n` short passages."""
    from embedtune.io import write_parquet
    from embedtune.manifest import Stage

    rows = [{"id": f"{i:016x}", "doc_id": str(i), "title": f"Term {i}", "text": "the heart and the blood " * 3,
             "source": "s", "n_tokens": 12} for i in range(n)]
    write_parquet(rows, Path(folder) / "part-00000.parquet")
    Stage("prepare", folder, {}, {}).finish({"passages": n}, files=["part-00000.parquet"])
    return Path(folder)


# ---------------------------------------------------------------- launch: run a script under accelerate launch

REPO = Path(__file__).resolve().parent.parent


def accelerate_launch_command(args: list[str], processes: int = 2, deepspeed_stage: int = 0,
                              env: dict | None = None, deepspeed_config: str = "") -> tuple[list[str], dict]:
    """The `accelerate launch` command line and environment for the repository's launch/ configs on this
    CPU: launch/cpu-2.yaml (DDP over gloo) or, with deepspeed_stage, launch/zero2.yaml with --zero_stage, or
    a DeepSpeed launch config by name (deepspeed_config, e.g. "zero3-offload.yaml"), on DeepSpeed's CPU
    accelerator; one intra-op thread per process."""
    import os
    import sys

    base = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}
    base.pop("ACCELERATE_USE_CPU", None)
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if deepspeed_config:
        base["DS_ACCELERATOR"] = "cpu"
        launcher += ["--config_file", str(REPO / "launch" / deepspeed_config)]
    elif deepspeed_stage:
        base["DS_ACCELERATOR"] = "cpu"
        launcher += ["--config_file", str(REPO / "launch" / "zero2.yaml"), "--zero_stage", str(deepspeed_stage)]
    elif processes > 1:
        base["ACCELERATE_USE_CPU"] = "true"
        launcher += ["--config_file", str(REPO / "launch" / "cpu-2.yaml")]
    else:
        launcher += ["--config_file", str(REPO / "launch" / "cpu.yaml")]
    launcher += ["--num_processes", str(processes), "--main_process_port", str(29600 + os.getpid() % 300)]
    return launcher + args, {**base, **(env or {})}


def accelerate_launch(args: list[str], processes: int = 2, deepspeed_stage: int = 0, timeout: int = 300,
                      env: dict | None = None, deepspeed_config: str = ""):
    """Run accelerate_launch_command(...) to the end; returns the CompletedProcess (output captured)."""
    import subprocess

    command, full_env = accelerate_launch_command(args, processes, deepspeed_stage, env, deepspeed_config)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
