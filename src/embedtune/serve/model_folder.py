"""A sentence-transformers folder as the server reads it: its prompts, length limit and pooling settings, a
content hash of its files (the served model's id), and request texts turned into token ids exactly as
`SentenceTransformer.encode` tokenizes them, with NIM's truncation policies on top."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from embedtune.assets import model_id, resolve_model
from embedtune.errors import EmbedtuneError
from embedtune.inputs import prompt_length

ONNX_GRAPH = Path("onnx") / "sentence_embedding.onnx"
INPUT_TYPES = ("query", "passage")
TRUNCATE = ("NONE", "START", "END")


class InputTooLong(ValueError):
    """One input has more tokens than the model reads (with truncate=NONE)."""

    def __init__(self, index: int, tokens: int, limit: int):
        super().__init__(f"input[{index}] has {tokens} tokens, more than the model's limit of {limit}: shorten it, "
                         "or send truncate=END (keep the start) or truncate=START (keep the end)")
        self.index, self.tokens, self.limit = index, tokens, limit


@dataclass(frozen=True)
class ModelFolder:
    path: Path
    model_id: str                 # "emb-" + the first 16 hex digits of folder_digest: changes with the weights
    max_tokens: int               # sentence-transformers' max_seq_length: longer inputs are truncated or refused
    prompts: dict[str, str]       # input_type -> the text prepended (the model's own query/passage prompts)
    include_prompt: bool          # mean pooling includes the prompt's tokens (sentence-transformers' include_prompt)
    onnx: Optional[Path]          # the exported graph (pooling and normalisation inside), when there is one

    @classmethod
    def open(cls, name: str) -> "ModelFolder":
        """A built-in alias, a local folder or a hub id (resolved like every other model name)."""
        path = Path(resolve_model(name).path)
        if not path.exists():  # a hub id: its files, downloaded once where a hub is reachable
            from huggingface_hub import snapshot_download

            try:
                path = Path(snapshot_download(name))
            except Exception as e:  # offline, unknown id, gated: the hub's own words
                raise EmbedtuneError(f"serve.model={name}: not a local folder, and the hub gave no model: {e}") from e
        if not (path / "modules.json").exists():
            raise EmbedtuneError(f"serve.model={name}: {path} is not a sentence-transformers folder (no modules.json); "
                                 "serve the `model/` folder that `embedtune export` writes")
        modules = json.loads((path / "modules.json").read_text(encoding="utf-8"))
        pooling = next((m for m in modules if m["type"].endswith("Pooling")), None)
        include_prompt = True
        if pooling is not None and (path / pooling["path"] / "config.json").exists():
            include_prompt = json.loads((path / pooling["path"] / "config.json").read_text()).get("include_prompt", True)
        settings = path / "config_sentence_transformers.json"
        saved = json.loads(settings.read_text(encoding="utf-8")).get("prompts", {}) if settings.exists() else {}
        prompts = {"query": saved.get("query", ""), "passage": saved.get("passage", saved.get("document", ""))}
        onnx = path / ONNX_GRAPH
        return cls(path, model_id(path), _max_tokens(path), prompts, bool(include_prompt),
                   onnx if onnx.exists() else None)


def _max_tokens(path: Path) -> int:
    """sentence-transformers' max_seq_length for the folder: sentence_bert_config.json's (older folders), else
    the tokenizer's model_max_length (sentence-transformers 6 keeps it there), else the position embeddings'."""
    def setting(name: str, key: str):
        file = path / name
        return json.loads(file.read_text(encoding="utf-8")).get(key) if file.exists() else None
    for value in (setting("sentence_bert_config.json", "max_seq_length"),
                  setting("tokenizer_config.json", "model_max_length"),
                  setting("config.json", "max_position_embeddings")):
        if isinstance(value, int) and 0 < value < 1_000_000:  # tokenizers without a limit say 1e30
            return value
    return 512


class TokenizedInputs:
    """Texts -> token ids the way sentence-transformers tokenizes them (prompt prepended, special tokens,
    at most max_tokens), with a policy for inputs that are longer: refuse (NONE), keep the start (END, what
    sentence-transformers itself does) or keep the end (START: the text's first tokens are cut, the prompt
    and special tokens stay)."""

    def __init__(self, folder: ModelFolder):
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        self.folder = folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder.path))
        if self.tokenizer.pad_token_id is None and self.tokenizer.eos_token is not None:
            self.tokenizer.pad_token = self.tokenizer.eos_token  # as the encoder did in training (masked out)
        self.pad_id = int(self.tokenizer.pad_token_id or 0)
        self.left_padded = self.tokenizer.padding_side == "left"
        self._prompt_lengths: dict[str, int] = {}
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise EmbedtuneError(f"{folder.path}: serve needs a fast tokenizer (tokenizer.json), which embedtune export "
                                 "writes; save the tokenizer with transformers to get one")
        # the Rust tokenizer itself, as transformers calls it (its Python wrapper costs ~0.4 ms a request), twice:
        # whole, and cutting at max_tokens as sentence-transformers' truncation does (longest_first, on the right)
        self._whole, self._cut = Tokenizer.from_str(backend.to_str()), Tokenizer.from_str(backend.to_str())
        self._whole.no_truncation()
        self._whole.no_padding()
        self._cut.no_padding()
        self._cut.enable_truncation(folder.max_tokens, strategy="longest_first", direction="right")

    def prompt_length(self, input_type: str) -> int:
        """Tokens of the prompt that mean pooling leaves out when include_prompt is false (as sentence-transformers
        counts them)."""
        if input_type not in self._prompt_lengths:
            self._prompt_lengths[input_type] = prompt_length(self.tokenizer, self.folder.prompts[input_type])
        return self._prompt_lengths[input_type]

    def __call__(self, texts: list[str], input_type: str, truncate: str) -> list[list[int]]:
        prompt, limit = self.folder.prompts[input_type], self.folder.max_tokens
        full = [e.ids for e in self._whole.encode_batch([prompt + t for t in texts], add_special_tokens=True)]
        for i, ids in enumerate(full):
            if len(ids) <= limit:
                continue
            if truncate == "NONE":
                raise InputTooLong(i, len(ids), limit)
            text = texts[i] if truncate == "END" else self._keep_end(texts[i], prompt, len(ids) - limit, i)
            full[i] = self._cut.encode(prompt + text, add_special_tokens=True).ids
        return full

    def _keep_end(self, text: str, prompt: str, excess: int, index: int) -> str:
        """`text` less its first `excess` tokens, cut at a token boundary (tokenized with the prompt, as served)."""
        spans = self._whole.encode(prompt + text, add_special_tokens=True).offsets
        starts = [start for start, end in spans if end > start and start >= len(prompt)]  # the text's own tokens
        if excess >= len(starts):
            raise InputTooLong(index, len(spans), self.folder.max_tokens)  # the prompt alone is too long
        return text[starts[excess] - len(prompt):]
