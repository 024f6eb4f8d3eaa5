"""The encoder: a Hugging Face backbone + pooling + optional L2 normalisation, with LoRA through PEFT."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoTokenizer

from embedtune.assets import embedder_folder, resolve_model
from embedtune.backbone import load_backbone, lora_targets, resolve_dtype, set_attention
from embedtune.distributed import local_rank
from embedtune.errors import EmbedtuneError
from embedtune.inputs import ensure_eos, prompt_length, render_prefix
from embedtune.manifest import fingerprint as config_fingerprint

ENCODER_CONFIG = "embedtune_encoder.json"
POOLINGS = ("mean", "cls", "last")


@dataclass
class ModelConfig:
    name: str = "minilm-l6"           # base embedder: built-in alias, local folder or hub id
    pooling: str = "auto"             # mean | cls | last (last non-padding token, decoders) | auto (the model's
                                      # sentence-transformers setting, else mean)
    normalize: bool = True            # L2-normalise embeddings (cosine similarity)
    query_max_length: int = 32        # tokens per query
    passage_max_length: int = 256     # tokens per passage (title + text)
    query_prefix: str = ""            # prepended to every query, e.g. "query: " (E5) or "Instruct: {task}\nQuery: "
    passage_prefix: str = ""          # prepended to every passage, e.g. "passage: "
    task: str = ""                    # the instruction that fills {task} in the prefixes
    pool_prefix: bool = True          # mean pooling includes the prefix tokens (false: left out, as some recipes do)
    append_eos: Optional[bool] = None  # end every text with EOS (null: with last-token pooling, where the
                                      # tokenizer does not already)
    padding_side: str = "auto"        # auto (the tokenizer's) | left | right
    attention: str = "auto"           # auto (the backbone's own) | causal | bidirectional (decoders attend both ways)
    attn_implementation: str = "auto"  # auto (flash_attention_2 on CUDA when installed, else sdpa) | sdpa | eager
    dtype: str = "auto"               # weights: auto (bf16 on a bf16 GPU unless full fine-tuning outside
                                      # DeepSpeed, else float32) | float32 | bfloat16


@dataclass
class PeftConfig:
    enabled: bool = False             # train LoRA adapters instead of all weights
    r: int = 16                       # LoRA rank
    alpha: int = 32                   # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.05             # dropout on the LoRA branch
    target_modules: Optional[list[str]] = None  # module names; null: every linear layer in the blocks
                                      # (BERT: query/key/value/dense; decoders: q/k/v/o, gate/up/down_proj)


def passage_text(title: str, text: str) -> str:
    """What the encoder reads for a passage (train, mine, eval, export's check): title and text joined by a space.
    "title. text" scored the same on HPO dev (bench/results/passage_format.md); the generator's prompt keeps
    its own "title. text" (generate/prompts.py), which was chosen with the prompts on dev."""
    return f"{title} {text}" if title else text


def _st_pooling(path: Path) -> Optional[str]:
    """The pooling mode of a sentence-transformers folder, if `path` is one."""
    pooling = path / "1_Pooling" / "config.json"
    if not pooling.exists():
        return None
    conf = json.loads(pooling.read_text())
    mode = conf.get("pooling_mode")  # sentence-transformers >= 6 writes one name; earlier ones a flag per mode
    if isinstance(mode, str):
        known = {"mean": "mean", "cls": "cls", "lasttoken": "last"}
        if mode not in known:
            raise EmbedtuneError(f"{pooling}: pooling_mode {mode!r} is not mean, cls or lasttoken; set model.pooling")
        return known[mode]
    if conf.get("pooling_mode_cls_token"):
        return "cls"
    if conf.get("pooling_mode_mean_tokens"):
        return "mean"
    if conf.get("pooling_mode_lasttoken"):
        return "last"
    raise EmbedtuneError(f"{pooling}: only mean, CLS or last-token pooling is supported; set model.pooling")


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Each row's hidden state at its last attended position: right and left padding alike."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).expand_as(attention_mask)
    last = (positions * attention_mask).argmax(dim=1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def without_prefix(attention_mask: torch.Tensor, length: int) -> torch.Tensor:
    """The mask with each row's first `length` real tokens (the prefix) cleared, on either padding side."""
    first = attention_mask.long().argmax(dim=1, keepdim=True)  # the first attended position of each row
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device).unsqueeze(0)
    return attention_mask * ~((positions >= first) & (positions < first + length))


class Encoder(nn.Module):
    def __init__(self, backbone: nn.Module, tokenizer, cfg: ModelConfig, pooling: str, fingerprint: str):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.pooling = pooling
        self.fingerprint = fingerprint  # names this exact set of weights (embedding caches key on it)
        self._prompt_lengths: dict[str, int] = {}  # per kind: the prefix is fixed, so it is tokenized once

    @classmethod
    def load(cls, cfg: ModelConfig, path: Optional[str] = None, fingerprint: str = "",
             full_weights_training: bool = False, backbone_loader: Callable = load_backbone,
             precision: Optional[str] = None) -> "Encoder":
        """The base model of `cfg`, or a saved encoder folder at `path` (its own settings win).
        `full_weights_training`: every weight will be trained outside DeepSpeed (model.dtype=auto keeps fp32).
        `precision`: an encoding stage's eval.precision (fp32 keeps model.dtype=auto's weights fp32).
        `backbone_loader(source, dtype, attn_implementation)`: the memory plan builds a weightless one."""
        if path is not None:
            settings = Path(path) / ENCODER_CONFIG
            if not settings.exists():
                raise EmbedtuneError(f"{path} is not a saved embedtune encoder (no {ENCODER_CONFIG}); "
                                     "point at checkpoints/step-<n>/encoder")
            saved = json.loads(settings.read_text())
            cfg = ModelConfig(**saved["model"])
            source, pooling = str(path), saved["pooling"]
            fingerprint = fingerprint or saved.get("fingerprint", "")
        else:
            source = embedder_folder(resolve_model(cfg.name))
            pooling = cfg.pooling
            if pooling == "auto":
                pooling = _st_pooling(Path(source)) or "mean"
        if pooling not in POOLINGS:
            raise EmbedtuneError(f"model.pooling={pooling} is not one of {', '.join(POOLINGS)}, auto")
        if not cfg.pool_prefix and pooling != "mean":
            raise EmbedtuneError(f"model.pool_prefix=false leaves prefix tokens out of mean pooling; with "
                                 f"model.pooling={pooling} set it to true")
        if cfg.padding_side not in ("auto", "left", "right"):
            raise EmbedtuneError(f"model.padding_side={cfg.padding_side} is not auto, left or right")
        backbone = backbone_loader(source, resolve_dtype(cfg.dtype, full_weights_training, precision),
                                   cfg.attn_implementation)
        set_attention(backbone, cfg.attention)
        try:
            # padding_side as a constructor argument: saved with the tokenizer (a later attribute change is not)
            sides = {} if cfg.padding_side == "auto" else {"padding_side": cfg.padding_side}
            tokenizer = AutoTokenizer.from_pretrained(source, **sides)
        except OSError as e:
            raise EmbedtuneError(f"cannot load the tokenizer of '{source}': {e}") from e
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token  # decoder tokenizers often have none; masked out anyway
        if cfg.append_eos or (cfg.append_eos is None and pooling == "last"):
            ensure_eos(tokenizer, cfg.name)
        encoder = cls(backbone, tokenizer, cfg, pooling, fingerprint or f"{cfg.name}:{pooling}")
        return encoder.eval()  # inference by default; the training loop switches dropout on itself

    def apply_lora(self, peft_cfg: PeftConfig) -> None:
        from peft import LoraConfig, get_peft_model

        targets = list(peft_cfg.target_modules) if peft_cfg.target_modules else lora_targets(self.backbone)
        names = {n.rsplit(".", 1)[-1] for n, _ in self.backbone.named_modules()}
        missing = [m for m in targets if m not in names]
        if missing:
            raise EmbedtuneError(f"peft.target_modules {missing} are not modules of {self.cfg.name}; "
                                 f"some that are: {sorted(names - {''})[:12]}")
        lora = LoraConfig(r=peft_cfg.r, lora_alpha=peft_cfg.alpha, lora_dropout=peft_cfg.dropout,
                          target_modules=targets)
        self.backbone = get_peft_model(self.backbone, lora)

    def prefix(self, kind: str) -> str:
        """The text prepended to every query or passage (model.task filled in)."""
        if kind == "query":
            return render_prefix(self.cfg.query_prefix, self.cfg.task, "query_prefix")
        if kind == "passage":
            return render_prefix(self.cfg.passage_prefix, self.cfg.task, "passage_prefix")
        raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")

    def token_ids(self, texts: list[str], kind: str) -> list[list[int]]:
        """Token ids of each text, truncated but not padded (chunks are padded one at a time by `pad`)."""
        max_length = self.cfg.query_max_length if kind == "query" else self.cfg.passage_max_length
        prefix = self.prefix(kind)
        return self.tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length,
                              return_token_type_ids=False, return_attention_mask=False)["input_ids"]

    def pad(self, ids: list[list[int]], kind: str, multiple: Optional[int] = None) -> dict[str, torch.Tensor]:
        """One padded batch of `kind` from token id lists: to its longest member, rounded up to `multiple` (on
        GPUs few distinct shapes mean few attention-kernel plans to build, and tensor-core friendly sizes).
        With model.pool_prefix=false it also carries the prefix length that mean pooling leaves out."""
        batch = dict(self.tokenizer.pad({"input_ids": ids}, padding=True, pad_to_multiple_of=multiple,
                                        return_tensors="pt"))
        if not self.cfg.pool_prefix:
            if kind not in self._prompt_lengths:
                self._prompt_lengths[kind] = prompt_length(self.tokenizer, self.prefix(kind))
            batch["prompt_length"] = torch.tensor(self._prompt_lengths[kind])
        return batch

    def tokenize(self, texts: list[str], kind: str) -> dict[str, torch.Tensor]:
        return self.pad(self.token_ids(texts, kind), kind)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in backward (non-reentrant: works with LoRA, DDP and dropout RNG)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.backbone, "activation_checkpointing_enable"):  # transformers 5.x's name for it
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = dict(batch)
        skip = batch.pop("prompt_length", None)
        if self.tokenizer.padding_side == "left" and "position_ids" not in batch:
            # left padding: positions count from each row's first real token, as they would unpadded
            batch["position_ids"] = (batch["attention_mask"].long().cumsum(1) - 1).clamp(min=0)
        hidden = self.backbone(**batch).last_hidden_state
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "last":
            pooled = last_token(hidden, batch["attention_mask"])
        else:
            mask = batch["attention_mask"]
            if skip is not None and int(skip):
                mask = without_prefix(mask, int(skip))
            mask = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = pooled.float()  # bf16 weights: pool in bf16, compare and normalise in fp32
        return F.normalize(pooled, dim=-1) if self.cfg.normalize else pooled

    def merged_backbone(self) -> nn.Module:
        """The backbone with LoRA weights folded in (a copy when LoRA is on; the backbone itself otherwise)."""
        if hasattr(self.backbone, "merge_and_unload"):
            import copy
            return copy.deepcopy(self.backbone).merge_and_unload()
        return self.backbone

    def save(self, folder: Path) -> None:
        """A plain Hugging Face folder (LoRA merged) + tokenizer + the encoder settings."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.merged_backbone().save_pretrained(folder, safe_serialization=True)
        self.tokenizer.save_pretrained(folder)
        settings = {"model": asdict(self.cfg), "pooling": self.pooling, "fingerprint": self.fingerprint}
        (folder / ENCODER_CONFIG).write_text(json.dumps(settings, indent=2))


def on_device(encoder: Encoder) -> Encoder:
    """The encoder on this process's GPU when there is one (encoding stages), else left on the CPU."""
    if torch.cuda.is_available():
        return encoder.to(torch.device("cuda", local_rank() % torch.cuda.device_count()))
    return encoder


def base_fingerprint(cfg: ModelConfig) -> str:
    """Names the base model's weights as `cfg` loads them (embedding caches key on it)."""
    return "base:" + config_fingerprint(cfg)
