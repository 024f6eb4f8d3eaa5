"""generator.backend=onnx: the generator run by ONNX Runtime GenAI on CPU.

The model (a built-in alias, a .gguf file, a local folder or a hub id) is converted once by onnxruntime-genai's
model builder into the user cache, under a key made of the weights' content digest, the precision and the
builder's version; a later run, another stage or another project finds it there. fp32 writes the same tokens as
the transformers backend in fp32 (greedy); int8 and int4 are smaller and faster and write different ones.

One prompt at a time: the group's shared few-shot start is computed once and every prompt rewinds to it, so each
prompt pays only for its own passage. Token choice happens here (the no-repeat rule, greedy or sampled with a
per-prompt seed), and an answer stops at its first line break after some text, at end of sequence or at its
token budget, as with the other backends.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from embedtune.assets import (BUILTIN, ResolvedModel, dequantise, folder_digest, models_cache, resolve_model,
                              sha256_of)
from embedtune.errors import EmbedtuneError
from embedtune.generate.answer import Answer, answer_of
from embedtune.generate.decoding import (MIN_SHARED_TOKENS, banned_tokens, line_break_tables, prompt_groups,
                                        prompt_ids, shared_start)
from embedtune.generate.prompts import Prompt

PRECISIONS = ("fp32", "int8", "int4")


def weights_digest(name: str, resolved: ResolvedModel) -> str:
    """What the converted folder is made from: the pinned digest of a built-in model, the SHA-256 of a .gguf
    file, the digest of a local folder's files, or a hub id as named (the hub's revision decides its content)."""
    if name in BUILTIN:
        return BUILTIN[name].sha256
    if resolved.gguf_file:
        return sha256_of(Path(resolved.path) / resolved.gguf_file)
    if Path(resolved.path).is_dir():
        return folder_digest(Path(resolved.path))
    return f"hub:{resolved.path}"


def builder_version() -> str:
    try:
        import onnxruntime_genai
    except ImportError as e:
        raise EmbedtuneError("generator.backend=onnx needs onnxruntime-genai: pip install onnxruntime-genai") from e
    return onnxruntime_genai.__version__


def conversion_target(model: str, precision: str) -> Path:
    """Where the converted `model` at `precision` lives in the models cache: its name, precision and a key of the
    weights' digest, the precision and the builder's version (other weights or another builder: another folder)."""
    if precision not in PRECISIONS:
        raise EmbedtuneError(f"generator.onnx_precision={precision} is not one of {', '.join(PRECISIONS)}")
    resolved = resolve_model(model)
    key = hashlib.sha256(f"{weights_digest(model, resolved)}\0{precision}\0{builder_version()}".encode()).hexdigest()
    stem = Path(resolved.gguf_file or resolved.path.rstrip("/")).name.removesuffix(".gguf")
    return models_cache() / "onnx" / f"{stem}-{precision}-{key[:16]}"


def converted_folder(model: str, precision: str) -> Path:
    """The ONNX Runtime GenAI folder of `model` at `precision`, built on first use (under a minute for a small
    model) into conversion_target(); written under a temporary name and renamed, so a killed conversion leaves
    nothing a later run would read."""
    target = conversion_target(model, precision)
    if (target / "genai_config.json").exists():
        return target
    resolved = resolve_model(model)
    work = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        source = resolved.path
        if resolved.gguf_file:
            source = str(work / "hf")
            from transformers import AutoModelForCausalLM

            dequantise(resolved, Path(source), AutoModelForCausalLM)
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", resolved.path, "-o",
                   str(work / "out"), "-p", precision, "-e", "cpu", "-c", str(work / "cache")]
        if Path(source).is_dir():
            command += ["-i", source]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode or not (work / "out" / "genai_config.json").exists():
            tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-8:])
            raise EmbedtuneError(f"converting generator '{model}' to ONNX ({precision}) failed:\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(work / "out", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def choose(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy at temperature 0; else a draw from the nucleus (the smallest set of tokens holding top_p)."""
    if temperature <= 0:
        return int(np.argmax(logits))
    scaled = (logits - logits.max()) / temperature
    probs = np.exp(scaled)
    probs /= probs.sum()
    order = np.argsort(-probs)
    keep = order[:int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)]
    return int(rng.choice(keep, p=probs[keep] / probs[keep].sum()))


class OnnxBackend:
    """ONNX Runtime GenAI on CPU, with the same prompts, token ids (the model's own tokenizer and chat template)
    and answers as the transformers backend."""

    def __init__(self, cfg):
        import onnxruntime_genai as og
        from transformers import AutoConfig, AutoTokenizer

        resolved = resolve_model(cfg.model)
        options = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
        if cfg.device not in ("auto", "cpu"):
            raise EmbedtuneError(f"generator.backend=onnx runs on the CPU; generator.device={cfg.device} asks for "
                                 "another (use generator.backend=transformers or vllm on a GPU)")
        try:
            encoder_decoder = AutoConfig.from_pretrained(resolved.path, **options).is_encoder_decoder
            self.tokenizer = AutoTokenizer.from_pretrained(resolved.path, **options)
        except (OSError, ValueError) as e:
            raise EmbedtuneError(f"cannot load generator '{cfg.model}': {e}") from e
        if encoder_decoder:
            raise EmbedtuneError(f"generator.backend=onnx runs decoder models; '{cfg.model}' is an encoder-decoder "
                                 "(use generator.backend=transformers)")
        folder = converted_folder(cfg.model, cfg.onnx_precision)
        self.og, self.model = og, og.Model(str(folder))
        self.folder = folder
        self.cfg, self.name = cfg, cfg.model
        self.chat = getattr(self.tokenizer, "chat_template", None) is not None
        self.newline, self.text = line_break_tables(self.tokenizer)
        eos = json.loads((folder / "genai_config.json").read_text())["model"].get("eos_token_id", [])
        self.eos = set(eos if isinstance(eos, list) else [eos]) | ({self.tokenizer.eos_token_id} - {None})

    def token_ids(self, prompts: list[Prompt]) -> list[list[int]]:
        return prompt_ids(self.tokenizer, self.chat, prompts)

    def _generator(self, max_length: int):
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length)
        return self.og.Generator(self.model, params)

    def _answer(self, generator, rng: np.random.Generator, max_new_tokens: int) -> Answer:
        out: list[int] = []
        while True:
            logits = generator.get_logits().reshape(-1)
            banned = banned_tokens(out)
            if banned:
                logits = logits.copy()
                logits[banned] = -np.inf
            token = choose(logits, self.cfg.temperature, self.cfg.top_p, rng)
            out.append(token)
            ended = token in self.eos or (self.newline[token] and bool(self.text[out[:-1]].any()))
            if ended or len(out) >= max_new_tokens:
                text = self.tokenizer.decode(out, skip_special_tokens=True)
                return answer_of(text, not ended)
            generator.append_tokens(np.array([[token]], dtype=np.int32))

    def generate(self, prompts: list[Prompt], seed: int = 0) -> list[Answer]:
        ids = self.token_ids(prompts)
        out: list[Answer] = [Answer("", False)] * len(prompts)
        groups = prompt_groups(prompts)
        with tqdm(total=len(prompts), desc="generate", unit="query", mininterval=2.0) as bar:
            for (_, max_new_tokens), members in groups.items():
                shared = shared_start([ids[i] for i in members]) if len(members) > 1 else 0
                shared = shared if self.cfg.prefix_cache and shared >= MIN_SHARED_TOKENS else 0
                longest = max(len(ids[i]) for i in members) + max_new_tokens + 1
                generator = None
                for i in members:
                    if generator is None or not shared:
                        generator = self._generator(longest)
                        if shared:
                            generator.append_tokens(np.array([ids[i][:shared]], dtype=np.int32))
                    else:
                        generator.rewind_to(shared)
                    generator.append_tokens(np.array([ids[i][shared:]], dtype=np.int32))
                    out[i] = self._answer(generator, np.random.default_rng([seed, i]), max_new_tokens)
                    bar.update(1)
        return out

    def first_token_logits(self, prompts: list[Prompt]) -> Iterator[np.ndarray]:
        """The logits of each prompt's next token, in order (what an LLM teacher reads P("yes") from)."""
        for row in self.token_ids(prompts):
            generator = self._generator(len(row) + 1)
            generator.append_tokens(np.array([row], dtype=np.int32))
            yield generator.get_logits().reshape(-1).astype(np.float64)
