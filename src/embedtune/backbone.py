"""The Hugging Face backbone under the encoder: loaded without any head (safetensors only, no remote code),
in the dtype and attention implementation asked for, causal or bidirectional, and the modules LoRA adapts.

Decoders (Llama, Qwen2/3, Mistral, Gemma) load through AutoModel, which gives the base model without its LM
head. Bidirectional attention goes through transformers' own switch (`config.is_causal = False`, which the
mask builders and attention kernels read); every attention module's `is_causal` flag is cleared too, so no
kernel falls back to its causal default when a mask is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from embedtune.errors import EmbedtuneError
from embedtune.precision import encoding_arithmetic

ATTENTIONS = ("auto", "causal", "bidirectional")
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
DTYPES = ("auto", "float32", "bfloat16")
BLOCK = re.compile(r"(^|\.)layers?\.\d+\.")  # inside block N: BERT's encoder.layer.N, decoders' layers.N


def check_safetensors(source: str) -> None:
    folder = Path(source)
    if folder.is_dir() and not list(folder.glob("*.safetensors")) and list(folder.glob("*.bin")):
        raise EmbedtuneError(f"cannot load model '{source}': it has only pickled weights "
                             f"({', '.join(p.name for p in folder.glob('*.bin'))}), which can run code when "
                             "loaded; embedtune loads safetensors only (convert them where you trust the file)")


def resolve_attn_implementation(setting: str) -> str:
    """model.attn_implementation: auto is flash-attention 2 on a CUDA GPU where `flash_attn` is installed,
    else PyTorch's scaled-dot-product attention."""
    if setting not in ATTN_IMPLEMENTATIONS:
        raise EmbedtuneError(f"model.attn_implementation={setting} is not one of {', '.join(ATTN_IMPLEMENTATIONS)}")
    if setting != "auto":
        return setting
    if torch.cuda.is_available():
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def auto_dtype(on_bf16_gpu: bool, full_weights_training: bool) -> torch.dtype:
    """model.dtype=auto: bf16 weights on a bf16 GPU, except for full fine-tuning outside DeepSpeed (AdamW on
    bf16 weights loses small updates; DeepSpeed keeps fp32 master weights itself); float32 on CPUs. The memory
    plan asks it for the GPU it plans for."""
    return torch.bfloat16 if on_bf16_gpu and not full_weights_training else torch.float32


def resolve_dtype(setting: str, full_weights_training: bool, encoding_precision: Optional[str] = None) -> torch.dtype:
    """model.dtype on this machine. `encoding_precision`: an encoding stage's eval.precision; one that resolves
    to fp32 keeps auto's weights in fp32 (else a bf16 GPU would encode in bf16 whatever was asked)."""
    if setting not in DTYPES:
        raise EmbedtuneError(f"model.dtype={setting} is not one of {', '.join(DTYPES)}")
    if setting == "auto":
        if encoding_precision is not None and encoding_arithmetic(encoding_precision) == "fp32":
            return torch.float32
        return auto_dtype(torch.cuda.is_available() and torch.cuda.is_bf16_supported(), full_weights_training)
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[setting]


def load_backbone(source: str, dtype: torch.dtype, attn_implementation: str) -> nn.Module:
    from transformers import AutoModel

    check_safetensors(source)
    implementation = resolve_attn_implementation(attn_implementation)
    try:
        backbone = AutoModel.from_pretrained(source, use_safetensors=True, dtype=dtype,
                                             attn_implementation=implementation)
    except OSError as e:
        raise EmbedtuneError(f"cannot load model '{source}': {e}") from e
    except ValueError as e:  # e.g. an architecture without sdpa or flash-attention support
        if attn_implementation == "auto" and implementation != "eager":  # auto: the one every model has
            return load_backbone(source, dtype, "eager")
        raise EmbedtuneError(f"cannot load model '{source}' with model.attn_implementation={implementation}: {e}; "
                             "try model.attn_implementation=eager") from e
    freeze_pooler(backbone)
    return backbone


def freeze_pooler(backbone: nn.Module) -> None:
    """The backbone's own pooler (BERT's tanh layer) never reaches our embeddings: frozen, so DDP and
    DeepSpeed do not wait for gradients that never come (DDP would silently skip a whole bucket)."""
    for name, param in backbone.named_parameters():
        if name.startswith("pooler."):
            param.requires_grad_(False)


def causal_modules(backbone: nn.Module) -> list[nn.Module]:
    """The attention modules that mask future tokens (decoders); empty for encoders such as BERT."""
    return [m for m in backbone.modules() if getattr(m, "is_causal", False) is True]


def is_causal(backbone: nn.Module) -> bool:
    return getattr(backbone.config, "is_causal", True) is not False and bool(causal_modules(backbone))


def set_attention(backbone: nn.Module, mode: str) -> None:
    """model.attention: auto keeps the backbone's own; bidirectional lets every token of a decoder attend to
    every other (NV-Embed / LLM2Vec style); causal is what decoders already do (refused for encoders)."""
    if mode not in ATTENTIONS:
        raise EmbedtuneError(f"model.attention={mode} is not one of {', '.join(ATTENTIONS)}")
    if mode == "auto":
        return
    if mode == "causal":
        if not is_causal(backbone):
            raise EmbedtuneError(f"model.attention=causal: {type(backbone).__name__} is not a causal decoder "
                                 "(its attention is already bidirectional); use model.attention=auto")
        return
    from transformers.utils.generic import TransformersKwargs

    if "is_causal" not in getattr(TransformersKwargs, "__annotations__", {}):
        import transformers

        raise EmbedtuneError(f"model.attention=bidirectional needs a transformers release with the `is_causal` "
                             f"switch for decoders (this one is {transformers.__version__}); upgrade transformers")
    backbone.config.is_causal = False  # saved in config.json, so the exported folder loads bidirectional too
    for module in causal_modules(backbone):
        module.is_causal = False


def lora_targets(backbone: nn.Module) -> list[str]:
    """peft.target_modules=null: every linear layer inside the transformer blocks, by leaf name (BERT: query,
    key, value, dense; Llama/Qwen/Mistral/Gemma: q/k/v/o_proj and gate/up/down_proj)."""
    names = {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules()
             if isinstance(module, nn.Linear) and BLOCK.search(name)}
    if not names:
        raise EmbedtuneError(f"peft.target_modules: found no linear layers inside the blocks of "
                             f"{type(backbone).__name__}; name them (peft.target_modules=[...])")
    return sorted(names)
