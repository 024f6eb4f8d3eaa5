"""Which arithmetic the stages use. bf16 only pays where the hardware computes it natively (a CUDA GPU that
supports it, or a CPU with AVX512-BF16/AMX): elsewhere torch emulates it, and a bf16 matmul on an AVX2-only
CPU runs ~50x slower than fp32. The `auto` settings (train.mixed_precision, generator.dtype, eval.precision)
resolve here, in one place, and the resolved value is what stage keys and embedding-cache keys hold."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """True where bf16 is fast: a bf16-capable CUDA device, or a CPU with AVX512-BF16 or AMX-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str) -> bool:
    """eval.precision (auto | bf16 | fp32): encode under bf16 autocast?"""
    return precision == "bf16" or (precision == "auto" and native_bf16())


def encoding_arithmetic(precision: str) -> str:
    """eval.precision as resolved on this machine: "bf16" or "fp32" (stage keys and embedding caches name it)."""
    return "bf16" if use_bf16(precision) else "fp32"


def train_precision(setting: str, launcher: str = "no") -> str:
    """train.mixed_precision (auto | no | bf16 | fp16) as Accelerate takes it. `auto` follows the launch
    config when it names a precision (`launcher`), else bf16 where it is native and fp32 ("no") elsewhere."""
    if setting != "auto":
        return setting
    if launcher not in ("", "no"):
        return launcher
    return "bf16" if native_bf16() else "no"


def generator_dtype(setting: str) -> str:
    """generator.dtype (auto | bfloat16 | float32 | float16) for a local transformers model."""
    if setting != "auto":
        return setting
    return "bfloat16" if native_bf16() else "float32"


def autocast(precision: str):
    """bf16 autocast for encoding when eval.precision asks for it (auto: where it is native)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16(precision))
