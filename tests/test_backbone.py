"""Decoder backbones (backbone.py, inputs.py and their use in model.py) on a tiny Llama and a tiny Qwen3:
causal and bidirectional attention against a hand-written forward, EOS appending, instruction prefixes
(and leaving them out of mean pooling), LoRA targets, dtype and attention implementation."""

from __future__ import annotations

import pytest
import torch

from decoder_reference import reference_hidden
from embedtune import precision
from embedtune.backbone import is_causal, lora_targets
from embedtune.errors import EmbedtuneError
from embedtune.model import Encoder, ModelConfig, PeftConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["the heart of a cat", "blue river", "protein and gene in the cell of the liver"]
FAMILIES = ["tiny_llama_dir", "tiny_qwen3_dir"]


def load(folder, **overrides) -> Encoder:
    return Encoder.load(ModelConfig(name=str(folder), **{"pooling": "mean", **overrides})).eval()


def embed(encoder: Encoder, texts: list[str], kind: str = "passage") -> torch.Tensor:
    with torch.no_grad():
        return encoder(encoder.tokenize(texts, kind))


def hidden_states(encoder: Encoder, texts: list[str]) -> tuple[torch.Tensor, dict]:
    batch = encoder.tokenize(texts, "passage")
    if encoder.tokenizer.padding_side == "left":
        batch["position_ids"] = (batch["attention_mask"].cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        return encoder.backbone(**batch).last_hidden_state, batch


# ---------------------------------------------------------------- attention: causal and bidirectional

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
def test_attention_equals_the_hand_written_forward(family, side, attention, request):
    folder = request.getfixturevalue(family)
    encoder = load(folder, attention=attention, padding_side=side)
    ours, batch = hidden_states(encoder, TEXTS)
    mask = batch["attention_mask"]
    assert (mask == 0).any()  # some rows are padded
    positions = batch.get("position_ids", torch.arange(mask.shape[1]).expand_as(mask))
    theirs = reference_hidden(encoder.backbone, batch["input_ids"], mask, attention == "bidirectional", positions)
    real = mask.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours[real] - theirs[real]).abs().max()
    other = reference_hidden(encoder.backbone, batch["input_ids"], mask, attention != "bidirectional", positions)
    assert not torch.allclose(ours[real], other[real], atol=1e-3)  # the two references really differ


@pytest.mark.parametrize("family", FAMILIES)
def test_bidirectional_lets_an_early_token_see_a_later_one(family, request):
    folder = request.getfixturevalue(family)
    for attention, sees_later in (("causal", False), ("bidirectional", True)):
        encoder = load(folder, attention=attention)
        first, _ = hidden_states(encoder, ["the heart of a cat"])
        second, _ = hidden_states(encoder, ["the heart of a dog"])
        assert torch.allclose(first[0, :-1], second[0, :-1], atol=1e-6) is not sees_later, attention


def test_auto_attention_keeps_the_backbone_s_own(tiny_llama_dir, tiny_model_dir):
    assert is_causal(load(tiny_llama_dir).backbone)
    assert not is_causal(load(tiny_model_dir).backbone)  # BERT
    assert not is_causal(load(tiny_llama_dir, attention="bidirectional").backbone)


def test_causal_attention_on_an_encoder_is_refused(tiny_model_dir):
    with pytest.raises(EmbedtuneError, match="model.attention=causal: BertModel is not a causal decoder"):
        load(tiny_model_dir, attention="causal")


def test_bidirectional_survives_save_and_load(tiny_qwen3_dir, tmp_path):
    encoder = load(tiny_qwen3_dir, attention="bidirectional", pooling="last")
    encoder.save(tmp_path / "enc")
    again = Encoder.load(None, path=str(tmp_path / "enc"))
    assert not is_causal(again.backbone)
    assert torch.allclose(embed(again, TEXTS), embed(encoder, TEXTS), atol=1e-6)


def test_eager_and_sdpa_attention_give_the_same_embeddings(tiny_qwen3_dir):
    sdpa = embed(load(tiny_qwen3_dir, attn_implementation="sdpa", attention="bidirectional"), TEXTS)
    eager = embed(load(tiny_qwen3_dir, attn_implementation="eager", attention="bidirectional"), TEXTS)
    assert torch.allclose(sdpa, eager, atol=1e-5)


def test_bf16_weights_load_and_pool_in_fp32(tiny_llama_dir):
    encoder = load(tiny_llama_dir, dtype="bfloat16", pooling="last")
    assert next(encoder.backbone.parameters()).dtype == torch.bfloat16
    out = embed(encoder, TEXTS)
    assert out.dtype == torch.float32
    assert torch.allclose(out, embed(load(tiny_llama_dir, pooling="last"), TEXTS), atol=0.05)


def test_auto_dtype_is_float32_on_a_cpu(tiny_llama_dir):
    assert next(load(tiny_llama_dir).backbone.parameters()).dtype == torch.float32


# ---------------------------------------------------------------- EOS

def test_last_token_pooling_appends_eos_once_and_truncation_keeps_it(tiny_llama_dir, tmp_path):
    encoder = load(tiny_llama_dir, pooling="last", passage_max_length=4)
    eos, bos = encoder.tokenizer.eos_token_id, encoder.tokenizer.bos_token_id
    ids = encoder.token_ids(["blue river", "protein and gene in the cell"], "passage")
    assert ids[0][0] == bos and ids[0][-1] == eos and ids[0].count(eos) == 1
    assert len(ids[1]) == 4 and ids[1][-1] == eos  # cut to 4 tokens, EOS still last
    encoder.save(tmp_path / "enc")  # the saved tokenizer appends it itself: loading does not add a second
    again = Encoder.load(None, path=str(tmp_path / "enc"))
    assert again.token_ids(["blue river"], "passage") == ids[:1]


def test_append_eos_false_and_mean_pooling_leave_the_tokenizer_alone(tiny_llama_dir):
    eos = load(tiny_llama_dir).tokenizer.eos_token_id
    for encoder in (load(tiny_llama_dir), load(tiny_llama_dir, pooling="last", append_eos=False)):
        assert encoder.token_ids(["blue river"], "passage")[0][-1] != eos
    assert load(tiny_llama_dir, append_eos=True).token_ids(["blue river"], "passage")[0][-1] == eos


def test_last_token_of_a_decoder_equals_each_text_alone_right_or_left_padded(tiny_qwen3_dir):
    encoder = load(tiny_qwen3_dir, pooling="last", normalize=False)
    assert type(encoder.backbone).__name__ == "Qwen3Model"  # loaded without its LM head
    alone = torch.cat([embed(encoder, [t]) for t in TEXTS])
    for side in ("right", "left"):
        encoder.tokenizer.padding_side = side
        assert (encoder.tokenize(TEXTS, "passage")["attention_mask"] == 0).any()
        assert torch.allclose(embed(encoder, TEXTS), alone, atol=1e-5), side


def test_a_tokenizer_without_a_pad_token_pads_with_eos(tmp_path):
    from conftest import build_tiny_decoder

    folder = build_tiny_decoder(tmp_path / "lm", "llama", pad_token=False)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(folder).pad_token is None  # the folder really has none
    encoder = load(folder, pooling="last")
    assert encoder.tokenizer.pad_token == "[SEP]"
    assert embed(encoder, TEXTS).shape[0] == len(TEXTS)


# ---------------------------------------------------------------- instruction prefixes

def test_task_fills_the_query_prefix(tiny_llama_dir):
    encoder = load(tiny_llama_dir, query_prefix="query: {task} ", task="find the gene")
    assert encoder.prefix("query") == "query: find the gene "
    assert encoder.prefix("passage") == ""
    with pytest.raises(EmbedtuneError, match=r"has a \{task\} slot but model.task is empty"):
        load(tiny_llama_dir, query_prefix="query: {task} ").token_ids(["a"], "query")


@pytest.mark.parametrize("side", ["right", "left"])
def test_pool_prefix_false_means_over_the_text_tokens_only(tiny_llama_dir, side):
    prefix = "query: the gene "
    encoder = load(tiny_llama_dir, query_prefix=prefix, pool_prefix=False, normalize=False, padding_side=side)
    full = load(tiny_llama_dir, query_prefix=prefix, normalize=False, padding_side=side)
    skip = len(encoder.tokenizer(prefix)["input_ids"])  # BOS + the prefix's tokens (no trailing special token)
    for text in TEXTS:
        batch = full.tokenize([text], "query")
        with torch.no_grad():
            hidden = full.backbone(**batch).last_hidden_state[0]
        assert torch.allclose(embed(encoder, [text], "query")[0], hidden[skip:].mean(0), atol=1e-5)
    batched = embed(encoder, TEXTS, "query")  # padded rows (either side) drop the same tokens
    alone = torch.cat([embed(encoder, [t], "query") for t in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5)
    assert not torch.allclose(batched, embed(full, TEXTS, "query"), atol=1e-3)


def test_pool_prefix_false_needs_mean_pooling(tiny_llama_dir):
    with pytest.raises(EmbedtuneError, match="model.pool_prefix=false"):
        load(tiny_llama_dir, pooling="last", pool_prefix=False)


# ---------------------------------------------------------------- LoRA targets

def test_lora_targets_every_linear_layer_of_the_blocks(tiny_llama_dir, tiny_qwen3_dir, tiny_model_dir):
    expected = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert lora_targets(load(tiny_llama_dir).backbone) == expected
    assert lora_targets(load(tiny_qwen3_dir).backbone) == expected
    assert lora_targets(load(tiny_model_dir).backbone) == ["dense", "key", "query", "value"]


def test_default_lora_adapts_all_attention_and_mlp_projections(tiny_qwen3_dir):
    encoder = load(tiny_qwen3_dir, pooling="last")
    encoder.apply_lora(PeftConfig(enabled=True))
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert any(f"{projection}.lora_A" in n for n in trainable), projection


def test_fp32_encoding_keeps_auto_weights_in_fp32_on_a_bf16_gpu(tiny_llama_dir, monkeypatch):
    """model.dtype=auto loads bf16 weights on a bf16 GPU, except for an encoding stage asked for fp32
    (eval.precision=fp32): its weights stay fp32. The GPU is what this machine lacks, so torch is told it
    has one (only the dtype choice asks; nothing is moved to it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(precision, "native_bf16", lambda: True)  # cached per process: the GPU's answer
    cfg = ModelConfig(name=str(tiny_llama_dir), pooling="last")
    dtype = lambda **kw: next(Encoder.load(cfg, **kw).backbone.parameters()).dtype  # noqa: E731
    assert dtype() == torch.bfloat16
    assert dtype(precision="auto") == torch.bfloat16 and dtype(precision="bf16") == torch.bfloat16
    assert dtype(precision="fp32") == torch.float32
    assert dtype(full_weights_training=True) == torch.float32
