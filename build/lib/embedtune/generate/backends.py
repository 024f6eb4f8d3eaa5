"""Generation backends behind one interface: `generate(prompts) -> list[str]` (one completion per prompt)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from embedtune.assets import resolve_model
from embedtune.errors import EmbedtuneError


@dataclass
class BackendConfig:
    backend: str = "transformers"     # transformers (local, CPU or GPU) | vllm (GPU) | openai (HTTP endpoint)
    model: str = "smollm2-135m"       # built-in alias, local folder, .gguf file or hub id
    gguf_file: Optional[str] = None   # GGUF file inside `model` (aliases set it themselves)
    dtype: str = "bfloat16"           # weights and activations: bfloat16 (2-3x faster on recent CPUs) or float32
    device: str = "auto"              # auto (cuda when available) | cpu | cuda
    batch_size: int = 16              # prompts per forward pass (sorted by length to cut padding)
    max_new_tokens: int = 24          # longest completion
    temperature: float = 0.0          # 0 = greedy decoding
    top_p: float = 0.95               # nucleus sampling when temperature > 0
    api_base: Optional[str] = None    # openai: server URL up to /v1 (e.g. http://127.0.0.1:8000/v1)
    api_key_env: Optional[str] = "OPENAI_API_KEY"  # openai: NAME of the env var holding the key (never the key)
    concurrency: int = 8              # openai: requests in flight at once
    max_retries: int = 5              # openai: retries on 429/5xx/timeouts/malformed bodies
    timeout_s: float = 60.0           # openai: per-request timeout
    backoff_s: float = 1.0            # openai: first retry delay, doubled each retry (with jitter)
    backoff_max_s: float = 30.0       # openai: longest retry delay


class TransformersBackend:
    """Any causal or seq2seq model transformers can load, GGUF included; batched with left padding."""

    def __init__(self, cfg: BackendConfig):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        resolved = resolve_model(cfg.model)
        gguf = cfg.gguf_file or resolved.gguf_file
        kwargs = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
        if cfg.dtype not in ("bfloat16", "float32", "float16"):
            raise EmbedtuneError(f"generator.dtype={cfg.dtype} is not one of bfloat16, float32, float16")
        try:
            config = AutoConfig.from_pretrained(resolved.path, **({"gguf_file": gguf} if gguf else {}))
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.path, **({"gguf_file": gguf} if gguf else {}))
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            self.model = auto.from_pretrained(resolved.path, dtype=getattr(torch, cfg.dtype), **kwargs)
        except (OSError, ValueError) as e:
            raise EmbedtuneError(f"cannot load generator '{cfg.model}': {e}") from e
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.seq2seq = config.is_encoder_decoder
        self.tokenizer.padding_side = "left"  # decoder-only generation continues from the right edge
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.name = cfg.model

    def format(self, messages: list[dict[str, str]]) -> str:
        from embedtune.generate.prompts import flatten

        if self.chat:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return flatten(messages)

    @torch.inference_mode()
    def generate(self, prompts: list[str], seed: int = 0) -> list[str]:
        lengths = [len(p) for p in prompts]
        order = sorted(range(len(prompts)), key=lengths.__getitem__, reverse=True)
        out: list[str] = [""] * len(prompts)
        sample = self.cfg.temperature > 0
        options = dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=sample,
                       pad_token_id=self.tokenizer.pad_token_id)
        if sample:
            options.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        with tqdm(total=len(prompts), desc="generate", unit="query", mininterval=2.0) as bar:
            for start in range(0, len(order), self.cfg.batch_size):
                idx = order[start:start + self.cfg.batch_size]
                torch.manual_seed(seed + start)  # sampling depends only on the batch's position
                enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                                     add_special_tokens=not self.chat, return_token_type_ids=False).to(self.device)
                tokens = self.model.generate(**enc, **options)
                if not self.seq2seq:
                    tokens = tokens[:, enc["input_ids"].shape[1]:]
                for i, text in zip(idx, self.tokenizer.batch_decode(tokens, skip_special_tokens=True)):
                    out[i] = text
                bar.update(len(idx))
        return out


class VLLMBackend:
    """vLLM on GPU nodes (optional dependency); the same prompts and sampling settings as the others."""

    def __init__(self, cfg: BackendConfig):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise EmbedtuneError("generator.backend=vllm needs the vllm package on a GPU machine: "
                                 "pip install vllm (or use generator.backend=transformers)") from e
        resolved = resolve_model(cfg.model)
        gguf = cfg.gguf_file or resolved.gguf_file
        model = f"{resolved.path}/{gguf}" if gguf else resolved.path
        self.llm = LLM(model=model, dtype=cfg.dtype, seed=0)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.params = SamplingParams
        self.cfg, self.name = cfg, cfg.model

    def format(self, messages: list[dict[str, str]]) -> str:
        return TransformersBackend.format(self, messages)

    def generate(self, prompts: list[str], seed: int = 0) -> list[str]:
        params = self.params(max_tokens=self.cfg.max_new_tokens, temperature=self.cfg.temperature,
                             top_p=self.cfg.top_p if self.cfg.temperature > 0 else 1.0, seed=seed)
        return [out.outputs[0].text for out in self.llm.generate(prompts, params)]


def make_backend(cfg: BackendConfig):
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    if cfg.backend == "vllm":
        return VLLMBackend(cfg)
    if cfg.backend == "openai":
        from embedtune.generate.openai_backend import OpenAIBackend

        return OpenAIBackend(cfg)
    raise EmbedtuneError(f"generator.backend={cfg.backend} is not one of transformers, vllm, openai")
