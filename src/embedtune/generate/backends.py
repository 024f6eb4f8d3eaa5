"""Generation backends behind one interface: `generate(prompts) -> list[Answer]`, one per `Prompt`, each cut at
the first line break (an answer is one line; what a small model writes after it is chatter)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
from tqdm import tqdm

from embedtune.assets import resolve_model
from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import Answer, answer_of
from embedtune.generate.decoding import (MIN_SHARED_TOKENS, NO_REPEAT, banned_tokens, line_break_tables,
                                        prompt_groups, prompt_ids, prompt_text, shared_start)
from embedtune.generate.onnx_backend import OnnxBackend
from embedtune.generate.openai_backend import OpenAIBackend
from embedtune.generate.prompts import Prompt
from embedtune.manifest import not_in_key
from embedtune.precision import generator_dtype


@dataclass
class BackendConfig:
    backend: str = "transformers"     # transformers (local, CPU or GPU) | onnx (ONNX Runtime GenAI, CPU) | vllm (GPU) | openai (HTTP endpoint)
    model: str = "smollm2-135m"       # built-in alias, local folder, .gguf file or hub id
    gguf_file: Optional[str] = None   # GGUF file inside `model` (aliases set it themselves)
    onnx_precision: str = "fp32"      # onnx: fp32 (the tokens transformers writes in fp32) | int8 | int4
    dtype: str = "auto"               # auto (bfloat16 where native: GPU, AVX512-BF16/AMX CPU; else float32) | bfloat16 | float32 | float16
    device: str = not_in_key("auto")  # auto (cuda when available) | cpu | cuda
    batch_size: int = not_in_key(32)  # prompts per forward pass (sorted by length to cut padding)
    prefix_cache: bool = not_in_key(True)  # transformers: compute the prompts' shared few-shot start once and reuse it
    max_new_tokens: int = 48          # longest answer (each query type may ask for fewer)
    temperature: float = 0.0          # 0 = greedy decoding
    top_p: float = 0.95               # nucleus sampling when temperature > 0
    api_base: Optional[str] = None    # openai: server URL up to /v1 (e.g. http://127.0.0.1:8000/v1)
    api_key_env: Optional[str] = not_in_key("OPENAI_API_KEY")  # openai: NAME of the env var holding the key (never the key)
    concurrency: int = not_in_key(8)  # openai: requests in flight at once
    max_retries: int = not_in_key(5)  # openai: retries on 429/5xx/timeouts/malformed bodies
    timeout_s: float = not_in_key(60.0)  # openai: per-request timeout
    backoff_s: float = not_in_key(1.0)  # openai: first retry delay, doubled each retry (with jitter)
    backoff_max_s: float = not_in_key(30.0)  # openai: longest retry delay


class NoRepeatInAnswer:
    """Logits processor: the no-repeat rule (decoding.banned_tokens) over each row's answer."""

    def __init__(self, prompt_length: int, n: int = NO_REPEAT):
        self.prompt_length, self.n = prompt_length, n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row, tokens in enumerate(input_ids[:, self.prompt_length:].tolist()):
            banned = banned_tokens(tokens, self.n)
            if banned:
                scores[row, banned] = -float("inf")
        return scores


class StopAtNewline:
    """Stopping criterion: a row is done once it wrote a line break after some non-blank text."""

    def __init__(self, tokenizer, prompt_length: int):
        newline, text = line_break_tables(tokenizer)
        self.newline, self.text = torch.from_numpy(newline), torch.from_numpy(text)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_length:].cpu()
        started = self.text[new[:, :-1]].any(dim=1)
        return (self.newline[new[:, -1]] & started).to(input_ids.device)


class TransformersBackend:
    """Any causal or seq2seq model transformers can load, GGUF included. Prompts of one group (one query
    type) share their long few-shot start: its keys and values are computed once and reused by every batch."""

    def __init__(self, cfg: BackendConfig):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        resolved = resolve_model(cfg.model)
        gguf = cfg.gguf_file or resolved.gguf_file
        kwargs = {"gguf_file": gguf} if gguf else {"use_safetensors": True}
        dtype = generator_dtype(cfg.dtype)
        if dtype not in ("bfloat16", "float32", "float16"):
            raise EmbedtuneError(f"generator.dtype={cfg.dtype} is not one of auto, bfloat16, float32, float16")
        try:
            config = AutoConfig.from_pretrained(resolved.path, **({"gguf_file": gguf} if gguf else {}))
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.path, **({"gguf_file": gguf} if gguf else {}))
            auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
            self.model = auto.from_pretrained(resolved.path, dtype=getattr(torch, dtype), **kwargs)
        except (OSError, ValueError) as e:
            raise EmbedtuneError(f"cannot load generator '{cfg.model}': {e}") from e
        device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(device).eval()
        self.device = device
        self.cfg = cfg
        self.seq2seq = config.is_encoder_decoder
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.name = cfg.model
        self._stop: Optional[StopAtNewline] = None

    def text_of(self, prompt: Prompt) -> str:
        return prompt_text(self.tokenizer, self.chat, prompt)

    def token_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        return prompt_ids(self.tokenizer, self.chat, prompts)

    @torch.inference_mode()
    def generate(self, prompts: list[Prompt], seed: int = 0) -> list[Answer]:
        ids = self.token_ids(prompts)
        out: list[Answer] = [Answer("", True)] * len(prompts)
        groups = prompt_groups(prompts)
        with tqdm(total=len(prompts), desc="generate", unit="query", mininterval=2.0) as bar:
            for (_, max_new_tokens), members in groups.items():
                cacheable = self.cfg.prefix_cache and not self.seq2seq and len(members) > 1
                shared = shared_start([ids[i] for i in members]) if cacheable else 0
                prefix = ids[members[0]][:shared] if shared >= MIN_SHARED_TOKENS else []
                cache = self._prefix_cache(prefix)
                order = sorted(members, key=lambda i: len(ids[i]), reverse=True)
                for start in range(0, len(order), self.cfg.batch_size):
                    batch = order[start:start + self.cfg.batch_size]
                    torch.manual_seed(seed + start)  # sampling depends only on the batch's position
                    answers = self._generate_batch([ids[i][len(prefix):] for i in batch], prefix, cache,
                                                   max_new_tokens)
                    for i, answer in zip(batch, answers):
                        out[i] = answer
                    bar.update(len(batch))
        return out

    def _prefix_cache(self, prefix: list[int]):
        if not prefix:
            return None
        return self.model(torch.tensor([prefix], device=self.device), use_cache=True).past_key_values

    def _generate_batch(self, suffixes: list[list[int]], prefix: list[int], prefix_cache,
                        max_new_tokens: int) -> list[Answer]:
        """Padding goes between the cached prefix and each suffix: positions come from the attention mask,
        so every row reads as prefix + its own text."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        pad = self.tokenizer.pad_token_id
        width = max(len(s) for s in suffixes)
        rows = [prefix + [pad] * (width - len(s)) + s for s in suffixes]
        mask = [[1] * len(prefix) + [0] * (width - len(s)) + [1] * len(s) for s in suffixes]
        input_ids = torch.tensor(rows, device=self.device)
        options = dict(max_new_tokens=max_new_tokens, pad_token_id=pad, do_sample=self.cfg.temperature > 0,
                       attention_mask=torch.tensor(mask, device=self.device))
        if self.cfg.temperature > 0:
            options.update(temperature=self.cfg.temperature, top_p=self.cfg.top_p)
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(rows))
            options["past_key_values"] = cache
        if not self.seq2seq:
            if self._stop is None:
                self._stop = StopAtNewline(self.tokenizer, 0)
            self._stop.prompt_length = input_ids.shape[1]
            options["stopping_criteria"] = StoppingCriteriaList([self._stop])
            options["logits_processor"] = LogitsProcessorList([NoRepeatInAnswer(input_ids.shape[1])])
        tokens = self.model.generate(input_ids=input_ids, **options)
        if not self.seq2seq:
            tokens = tokens[:, input_ids.shape[1]:]
        ends = {pad, *self._eos_ids()}
        texts = self.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        full = tokens.shape[1] >= max_new_tokens
        return [answer_of(text, full and row[-1].item() not in ends) for text, row in zip(texts, tokens)]

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)


class VLLMBackend:
    """vLLM on GPU nodes (optional dependency): the same prompts, with vLLM's own prefix caching."""

    def __init__(self, cfg: BackendConfig):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:
            raise EmbedtuneError("generator.backend=vllm needs the vllm package on a GPU machine: "
                                 "pip install vllm (or use generator.backend=transformers)") from e
        resolved = resolve_model(cfg.model)
        gguf = cfg.gguf_file or resolved.gguf_file
        model = f"{resolved.path}/{gguf}" if gguf else resolved.path
        self.llm = LLM(model=model, dtype=cfg.dtype, seed=0, enable_prefix_caching=True)
        self.tokenizer = self.llm.get_tokenizer()
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.params = SamplingParams
        self.cfg, self.name = cfg, cfg.model

    def generate(self, prompts: list[Prompt], seed: int = 0) -> list[Answer]:
        texts = [prompt_text(self.tokenizer, self.chat, p) for p in prompts]
        params = [self.params(max_tokens=p.max_new_tokens, temperature=self.cfg.temperature, stop=["\n"],
                              top_p=self.cfg.top_p if self.cfg.temperature > 0 else 1.0, seed=seed + i)
                  for i, p in enumerate(prompts)]
        return [answer_of(out.outputs[0].text, out.outputs[0].finish_reason == "length")
                for out in self.llm.generate(texts, params)]


BACKENDS = ("transformers", "onnx", "vllm", "openai")


def make_backend(cfg: BackendConfig):
    if cfg.backend == "transformers":
        return TransformersBackend(cfg)
    if cfg.backend == "vllm":
        return VLLMBackend(cfg)
    if cfg.backend == "openai":
        return OpenAIBackend(cfg)
    if cfg.backend == "onnx":
        return OnnxBackend(cfg)
    raise EmbedtuneError(f"generator.backend={cfg.backend} is not one of {', '.join(BACKENDS)}")
