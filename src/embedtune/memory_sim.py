"""Activation memory of one training step, simulated: the real encoder (same backbone class, pooling, LoRA,
checkpointing, autocast) runs forward and backward on fake tensors, which carry shapes and dtypes but no data,
and every tensor storage it creates is counted while it lives. Nothing is allocated, so an 8B model at a
4,096-query batch is simulated on a laptop in seconds, and what is counted is exactly what PyTorch keeps for
backward and frees after it, not a formula per architecture.

Fake tensors cannot answer data-dependent questions; the one transformers asks (may the attention mask be
skipped because nothing is padded?) is answered "no" during a simulation: the mask is built, as it is for
any padded batch.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from embedtune.backbone import freeze_pooler
from embedtune.errors import EmbedtuneError


class StorageCounter(TorchDispatchMode):
    """Bytes of the tensor storages created under it: `live` now, `peak` since `forget`. Storages that
    exist before (weights, buffers) are not counted; a view shares its base's storage and counts once."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}
        self._known: set[int] = set()

    def ignore(self, tensors) -> None:
        self._known.update(t.untyped_storage()._cdata for t in tensors)

    def forget(self) -> None:
        """Start counting afresh: what lives now is not counted (its frees then change nothing)."""
        self.live, self.peak, self._sizes = 0, 0, {}

    def _freed(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._sizes or key in self._known:
            return
        self._sizes[key] = storage.nbytes()
        self.live += self._sizes[key]
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._freed, key)  # storages keep their Python object while they live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t)
        return out


@contextlib.contextmanager
def masks_always_built():
    """transformers skips the attention mask when no row is padded, a question about the data that fake
    tensors cannot answer; during a simulation the mask is built (as for any padded batch)."""
    import transformers.masking_utils as masking

    names = [n for n in ("_ignore_causal_mask_sdpa", "_ignore_bidirectional_mask_sdpa") if hasattr(masking, n)]
    saved = {n: getattr(masking, n) for n in names}
    try:
        for n in names:
            setattr(masking, n, lambda *args, **kwargs: False)
        yield
    finally:
        for n, f in saved.items():
            setattr(masking, n, f)


def layer_count(config) -> Optional[int]:
    return getattr(config, "num_hidden_layers", None)


def meta_backbone(source: str, dtype: torch.dtype, attn_implementation: str,
                  layers: Optional[int] = None) -> nn.Module:
    """The backbone of `source` from its config.json alone, on the meta device (no weights read or made),
    with only its first `layers` blocks when given. sdpa stands in for flash-attention (the same memory:
    neither keeps the attention matrix); eager is simulated as eager (it does)."""
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(source)
    except Exception as e:  # OSError offline, ValueError or a validation error for a malformed config.json
        raise EmbedtuneError(f"cannot read the model config of '{source}': {e}") from e
    if layers is not None and layer_count(config) is not None:
        config.num_hidden_layers = layers
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[:layers]  # sliding/full attention per block (Gemma, Qwen2)
    implementation = "eager" if attn_implementation == "eager" else "sdpa"
    with torch.device("meta"):
        backbone = AutoModel.from_config(config, dtype=dtype, attn_implementation=implementation)
    freeze_pooler(backbone)
    return backbone


def fake_copy(module: nn.Module, fake_mode) -> nn.Module:
    """`module` (on the meta device) with every parameter and buffer replaced, in place, by a fake CPU tensor
    of its shape and dtype (autocast applies to those, not to meta tensors); tied weights stay tied."""
    made: dict[int, torch.Tensor] = {}
    with fake_mode:
        for sub in module.modules():
            for name, p in sub._parameters.items():
                if p is not None:
                    if id(p) not in made:
                        made[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
                    sub._parameters[name] = made[id(p)]
            for name, b in sub._buffers.items():
                if b is not None:
                    if id(b) not in made:
                        made[id(b)] = torch.zeros(b.shape, dtype=b.dtype)
                    sub._buffers[name] = made[id(b)]
    return module


@dataclass
class StepActivations:
    """Peak bytes above the model states during one step's forwards and backwards; `grads`: the bytes of the
    weights' gradients included in that peak (made during the step), 0 when they were made before it."""
    peak: int
    grads: int


def simulate_step(encoder, fake_mode, chunks: list[tuple[int, int]], grad_cache: bool, autocast_16bit: bool,
                  grads_in_step: bool) -> StepActivations:
    """Run `chunks` (texts, tokens per text) through `encoder` (its tensors fake ones of `fake_mode`: see
    fake_copy) as a training step does: with gradient caching one chunk at a time, forward with a graph then
    backward of dot(embedding, cached gradient); without, every chunk's forward keeps its graph and one
    backward follows. `grads_in_step`: the weights' gradients are made during the step (the trainer's
    zero_grad(set_to_none=True); so they grow while the activations shrink) and counted; else (DeepSpeed,
    which keeps them in its own buffers, model states) a tiny warm-up step makes them first.
    Fake CPU tensors, not meta ones: autocast acts on them, and attention dispatches to a fused kernel that
    keeps no attention matrix, as on a GPU (meta tensors take the math path)."""
    def embed(texts: int, tokens: int) -> torch.Tensor:
        batch = {"input_ids": torch.zeros(texts, tokens, dtype=torch.long),
                 "attention_mask": torch.ones(texts, tokens, dtype=torch.long)}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_16bit):  # fp16: the same bytes
            return encoder(batch)

    encoder.train()
    for p in encoder.parameters():
        p.grad = None
    counter = StorageCounter()
    with fake_mode, masks_always_built():
        counter.ignore([*encoder.parameters(), *encoder.buffers()])
        with counter:
            if not grads_in_step:
                embed(1, 8).sum().backward()
                counter.forget()  # the warm-up and the gradients it made are not this step's
            if grad_cache:
                for texts, tokens in chunks:
                    e = embed(texts, tokens)
                    (e * torch.ones_like(e)).sum().backward()
                    del e
            else:
                embeddings = [embed(texts, tokens) for texts, tokens in chunks]
                sum((e * torch.ones_like(e)).sum() for e in embeddings).backward()
                del embeddings
    grads = sum(p.grad.untyped_storage().nbytes() for p in encoder.parameters() if p.grad is not None)
    return StepActivations(peak=counter.peak, grads=grads if grads_in_step else 0)
