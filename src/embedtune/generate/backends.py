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
    backend: str = "transformers"     # transformers (local, CPU or GPU)
    model: str = "smollm2-135m"       # built-in alias, local folder, .gguf file or hub id
    gguf_file: Optional[str] = None   # GGUF file inside `model` (aliases set it themselves)
    dtype: str = "bfloat16"           # weights and activations: bfloat16 (2-3x faster on recent CPUs) or float32
    device: str = "auto"              # auto (cuda when available) | cpu | cuda
    batch_size: int = 16              # prompts per forward pass (sorted by length to cut padding)
    max_new_tokens: int = 24          # longest completion
    temperature: float = 0.0          # 0 = greedy decoding
    top_p: float = 0.95               # nucleus sampling when temperature > 0


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


def make_backend(cfg: BackendConfig):
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    raise EmbedtuneError(f"generator.backend={cfg.backend} is not available; use transformers")
