"""Shared fixtures. Each fixture is self-contained; add new ones below with their own section header."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers import DEMO_SECRET, ChatServer, embedtune

# ---------------------------------------------------------------- the slow marker, enforced

@pytest.fixture(autouse=True)
def _unmarked_tests_launch_no_process(request, monkeypatch):
    """A test without @pytest.mark.slow that starts a process fails and says so: `make test-fast` stays the
    quick inner loop only while every process-launching test carries the marker."""
    if request.node.get_closest_marker("slow") is not None:
        return

    real = subprocess.Popen._execute_child

    def refuse(self, args, *rest, **kwargs):
        if Path(str(args[0] if isinstance(args, (list, tuple)) else args).split()[0]).name == "fc-list":
            return real(self, args, *rest, **kwargs)  # matplotlib's first font scan on a new machine
        raise AssertionError(f"{request.node.nodeid} starts a process ({args!r}): mark it @pytest.mark.slow")
    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


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


# ---------------------------------------------------------------- tiny decoders: Llama and Qwen3 embedder backbones

def build_tiny_decoder(folder: Path, family: str, seed: int = 0, pad_token: bool = True, **shape) -> Path:
    """A random 2-layer decoder (`family` llama or qwen3: 4 query heads sharing 2 key/value heads, RoPE, Qwen3's
    q/k norms) with a decoder-style fast tokenizer: BOS first, no EOS appended ([CLS] is BOS, [SEP] is EOS),
    padding on the right; `pad_token=False` leaves it without a pad token, as many LM tokenizers are.
    `shape` overrides the config's sizes (hidden_size=..., num_hidden_layers=..., vocab_size=...)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast, Qwen3Config, Qwen3Model

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(tiny_vocab())}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                           special_tokens=[("[CLS]", vocab["[CLS]"])])
    special = dict(bos_token="[CLS]", eos_token="[SEP]", unk_token="[UNK]", **({"pad_token": "[PAD]"} if pad_token else {}))
    PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=512, **special).save_pretrained(folder)
    defaults = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                    pad_token_id=vocab["[PAD]"], bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"])
    shape = {**defaults, **shape}
    config = Qwen3Config(**shape) if family == "qwen3" else LlamaConfig(**shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        (Qwen3Model if family == "qwen3" else LlamaModel)(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random LlamaModel (GQA, RoPE) with a decoder-style tokenizer (see build_tiny_decoder). Read-only."""
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny_llama") / "model", "llama", seed=5)


@pytest.fixture(scope="session")
def tiny_qwen3_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen3Model (GQA, RoPE, q/k RMS norms) with a decoder-style tokenizer. Read-only."""
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny_qwen3") / "model", "qwen3", seed=6)


# ---------------------------------------------------------------- demo_run: one whole tiny run for the session

@dataclass
class DemoRun:
    folder: Path                          # runs/e2e
    result: subprocess.CompletedProcess   # of `embedtune run`
    seconds: float
    args: list[str]                       # the overrides of `run` and `status` on this run (generator's too)
    server: ChatServer                    # the generator's requests, as the server saw them

    @property
    def stage_args(self) -> list[str]:
        """The overrides of the stages after generate (whose keys do not include the generator's)."""
        return self.args[:3]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`embedtune run debug=tiny` once for the session (the tests of test_pipeline.py and test_secrets.py
    read it): the real SmolLM2 generator, served by an OpenAI-compatible server on 127.0.0.1 (so the run
    also goes through the HTTP backend with an API key from the environment), real MiniLM, W&B offline."""
    root = tmp_path_factory.mktemp("e2e")
    server = ChatServer("smollm2-135m")
    args = ["debug=tiny", "run_name=e2e", f"paths.runs={root}", "generator.backend=openai",
            "generator.model=smollm2-135m", f"generator.api_base={server.url}", "generator.api_key_env=EMBEDTUNE_KEY"]
    started = time.time()
    result = embedtune("run", *args, "logger.kind=wandb", cwd=root, env={"EMBEDTUNE_KEY": DEMO_SECRET})
    assert result.returncode == 0, result.stderr[-3000:]
    yield DemoRun(root / "e2e", result, time.time() - started, args, server)
    server.close()


# ---------------------------------------------------------------- served_model_dir: an exported tiny model to serve

@pytest.fixture(scope="session")
def served_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT as `embedtune export` writes it (sentence-transformers folder + ONNX graph), with
    "query: "/"passage: " prompts and a 48-token limit: what `embedtune serve` serves in the tests. Read-only."""
    from embedtune.export import ExportConfig, export_model
    from embedtune.model import Encoder, ModelConfig

    root = tmp_path_factory.mktemp("served")
    cfg = ModelConfig(name=str(tiny_model_dir), pooling="mean", query_prefix="query: ", passage_prefix="passage: ",
                      passage_max_length=48)
    Encoder.load(cfg).save(root / "encoder")
    export_model(root / "encoder", root / "model", ["the heart of a cat", "blue river"], ExportConfig(), card="# tiny\n")
    return root / "model"
