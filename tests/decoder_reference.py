"""A hand-written forward of a Llama or Qwen3 decoder from its weights, with the attention mask built by hand
(causal or full), for tests/test_backbone.py: transformers' own forward must agree with it."""

from __future__ import annotations

import math

import torch


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _rotate(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotary embedding of x (batch, heads, length, dim) at `positions` (batch, length): rotate-half form."""
    dim = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)
    angles = positions[:, None, :, None].float() * inv  # batch, 1, length, dim/2
    cos, sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    half = torch.cat([-x[..., dim // 2:], x[..., :dim // 2]], -1)
    return x * cos + half * sin


def reference_hidden(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, bidirectional: bool,
                     positions: torch.Tensor) -> torch.Tensor:
    """Last hidden states (after the final norm) of a LlamaModel/Qwen3Model computed step by step: every
    query attends to the unpadded keys, all of them (bidirectional) or those at or before it (causal)."""
    cfg, sd = model.config, dict(model.state_dict())
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta
    heads, kv_heads, head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    eps = cfg.rms_norm_eps
    batch, length = input_ids.shape
    allowed = attention_mask.bool()[:, None, None, :].expand(batch, 1, length, length)
    if not bidirectional:
        allowed = allowed & torch.ones(length, length, dtype=torch.bool).tril()
    h = sd["embed_tokens.weight"][input_ids]
    for layer in range(cfg.num_hidden_layers):
        w = {k[len(f"layers.{layer}."):]: v for k, v in sd.items() if k.startswith(f"layers.{layer}.")}
        x = _rms(h, w["input_layernorm.weight"], eps)
        q = (x @ w["self_attn.q_proj.weight"].T).view(batch, length, heads, head_dim)
        k = (x @ w["self_attn.k_proj.weight"].T).view(batch, length, kv_heads, head_dim)
        v = (x @ w["self_attn.v_proj.weight"].T).view(batch, length, kv_heads, head_dim)
        if "self_attn.q_norm.weight" in w:  # Qwen3: RMS norm of each head's query and key
            q, k = _rms(q, w["self_attn.q_norm.weight"], eps), _rms(k, w["self_attn.k_norm.weight"], eps)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        q, k = _rotate(q, positions, theta), _rotate(k, positions, theta)
        k, v = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (k, v))  # grouped-query attention
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
        scores = scores.masked_fill(~allowed, float("-inf"))
        attended = (scores.softmax(-1).nan_to_num(0.0) @ v).transpose(1, 2).reshape(batch, length, heads * head_dim)
        h = h + attended @ w["self_attn.o_proj.weight"].T
        x = _rms(h, w["post_attention_layernorm.weight"], eps)
        gate, up = x @ w["mlp.gate_proj.weight"].T, x @ w["mlp.up_proj.weight"].T
        h = h + (torch.nn.functional.silu(gate) * up) @ w["mlp.down_proj.weight"].T
    return _rms(h, sd["norm.weight"], eps)
