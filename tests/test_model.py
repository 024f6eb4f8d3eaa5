"""model.py: loading, pooling, normalisation, tokenisation, LoRA and save/load round trips on a tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from embedtune.errors import EmbedtuneError
from embedtune.model import ENCODER_CONFIG, Encoder, ModelConfig, PeftConfig, passage_text

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["the heart of a cat", "blue river", "protein and gene in the cell of the liver"]


def load(folder: Path, **overrides) -> Encoder:
    return Encoder.load(ModelConfig(name=str(folder), **{"pooling": "mean", **overrides})).eval()


def embed(encoder: Encoder, texts: list[str], kind: str = "passage") -> torch.Tensor:
    with torch.no_grad():
        return encoder(encoder.tokenize(texts, kind))


# ---------------------------------------------------------------- load + forward

def test_load_reads_the_tiny_folder(tiny_model_dir):
    encoder = load(tiny_model_dir)
    assert encoder.backbone.config.hidden_size == 32
    assert encoder.backbone.config.num_hidden_layers == 2
    assert encoder.pooling == "mean"
    assert encoder.fingerprint == f"{tiny_model_dir}:mean"
    assert encoder.tokenizer.vocab_size == encoder.backbone.config.vocab_size


def test_load_missing_folder_raises_embedtune_error(tmp_path):
    with pytest.raises(EmbedtuneError, match="does not exist"):
        Encoder.load(ModelConfig(name=str(tmp_path / "nope"), pooling="mean"))


def test_load_rejects_unknown_pooling(tiny_model_dir):
    with pytest.raises(EmbedtuneError, match="max"):
        Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="max"))


def test_forward_gives_l2_normalised_embeddings(tiny_model_dir):
    emb = embed(load(tiny_model_dir), TEXTS)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_normalize_false_keeps_raw_pooled_vectors(tiny_model_dir):
    raw = embed(load(tiny_model_dir, normalize=False), TEXTS)
    normed = embed(load(tiny_model_dir), TEXTS)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(3), atol=1e-2)
    assert torch.allclose(raw / raw.norm(dim=-1, keepdim=True), normed, atol=1e-5)


def test_mean_pooling_is_the_masked_mean_of_token_states(tiny_model_dir):
    encoder = load(tiny_model_dir, normalize=False)
    batch = encoder.tokenize(TEXTS, "passage")
    with torch.no_grad():
        hidden = encoder.backbone(**batch).last_hidden_state
        pooled = encoder(batch)
    for row in range(len(TEXTS)):
        n = int(batch["attention_mask"][row].sum())
        assert torch.allclose(pooled[row], hidden[row, :n].mean(0), atol=1e-5)


def test_mean_pooling_ignores_padding(tiny_model_dir):
    encoder = load(tiny_model_dir)
    alone = embed(encoder, ["blue river"])
    padded = embed(encoder, ["blue river", "protein and gene in the cell of the liver and the heart"])
    assert torch.allclose(alone[0], padded[0], atol=1e-5)


def test_cls_pooling_takes_the_first_token_and_differs_from_mean(tiny_model_dir):
    mean = embed(load(tiny_model_dir, pooling="mean"), TEXTS)
    cls_encoder = load(tiny_model_dir, pooling="cls")
    cls = embed(cls_encoder, TEXTS)
    with torch.no_grad():
        first = cls_encoder.backbone(**cls_encoder.tokenize(TEXTS, "passage")).last_hidden_state[:, 0]
    assert torch.allclose(cls, torch.nn.functional.normalize(first, dim=-1), atol=1e-5)
    assert (cls - mean).abs().max() > 1e-2


# ---------------------------------------------------------------- tokenize

def test_tokenize_honours_query_and_passage_max_lengths(tiny_model_dir):
    encoder = load(tiny_model_dir, query_max_length=6, passage_max_length=11)
    long = ["abcdefghijklmnopqrstuvwxyz" * 2]  # one character-piece per letter: far over both limits
    assert encoder.tokenize(long, "query")["input_ids"].shape == (1, 6)
    assert encoder.tokenize(long, "passage")["input_ids"].shape == (1, 11)
    short = encoder.tokenize(["cat"], "query")["input_ids"]
    assert short.shape == (1, 3)  # [CLS] cat [SEP]: no padding to max_length


def test_tokenize_prepends_the_prefix_of_each_kind(tiny_model_dir):
    encoder = load(tiny_model_dir, query_prefix="query: ", passage_prefix="passage: ")

    def tokens(kind):
        ids = encoder.tokenize(["red fish"], kind)["input_ids"][0]
        return encoder.tokenizer.convert_ids_to_tokens(ids.tolist())

    assert tokens("query") == ["[CLS]", "query", ":", "red", "fish", "[SEP]"]
    assert tokens("passage") == ["[CLS]", "passage", ":", "red", "fish", "[SEP]"]


def test_prefixes_change_the_embedding(tiny_model_dir):
    encoder = load(tiny_model_dir, query_prefix="query: ")
    assert (embed(encoder, ["red fish"], "query") - embed(encoder, ["red fish"], "passage")).abs().max() > 1e-3


def test_passage_text_joins_title_and_text():
    assert passage_text("Heart", "a muscle") == "Heart a muscle"
    assert passage_text("", "a muscle") == "a muscle"


# ---------------------------------------------------------------- pooling="auto"

def test_auto_pooling_reads_the_packaged_minilm_sentence_transformers_config():
    encoder = Encoder.load(ModelConfig())
    assert encoder.pooling == "mean"
    assert encoder.fingerprint == "minilm-l6:mean"


def _with_st_pooling(tiny_model_dir: Path, folder: Path, **modes) -> Path:
    shutil.copytree(tiny_model_dir, folder)
    (folder / "1_Pooling").mkdir()
    conf = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
            "pooling_mode_max_tokens": False, **modes}
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(conf))
    return folder


def test_auto_pooling_picks_cls_from_a_cls_config(tiny_model_dir, tmp_path):
    folder = _with_st_pooling(tiny_model_dir, tmp_path / "st", pooling_mode_cls_token=True)
    assert Encoder.load(ModelConfig(name=str(folder), pooling="auto")).pooling == "cls"


def test_auto_pooling_rejects_max_pooling_and_names_the_file(tiny_model_dir, tmp_path):
    folder = _with_st_pooling(tiny_model_dir, tmp_path / "st", pooling_mode_max_tokens=True)
    with pytest.raises(EmbedtuneError, match="1_Pooling"):
        Encoder.load(ModelConfig(name=str(folder), pooling="auto"))


def test_auto_pooling_defaults_to_mean_without_a_pooling_config(tiny_model_dir):
    assert Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="auto")).pooling == "mean"


def test_explicit_pooling_wins_over_the_folder_config(tiny_model_dir, tmp_path):
    folder = _with_st_pooling(tiny_model_dir, tmp_path / "st", pooling_mode_mean_tokens=True)
    assert Encoder.load(ModelConfig(name=str(folder), pooling="cls")).pooling == "cls"


# ---------------------------------------------------------------- LoRA

def test_apply_lora_leaves_only_lora_parameters_trainable(tiny_model_dir):
    encoder = load(tiny_model_dir)
    n_before = sum(p.numel() for p in encoder.parameters())
    encoder.apply_lora(PeftConfig(r=4, alpha=8, target_modules=["query", "value"]))
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    frozen = [n for n, p in encoder.named_parameters() if not p.requires_grad]
    # 2 layers x (query, value) x (A, B)
    assert len(trainable) == 8
    assert all("lora_" in n for n in trainable)
    assert not any("lora_" in n for n in frozen)
    assert sum(p.numel() for n, p in encoder.named_parameters() if not p.requires_grad) == n_before


def test_apply_lora_with_an_unknown_target_module_names_it(tiny_model_dir):
    encoder = load(tiny_model_dir)
    with pytest.raises(EmbedtuneError, match="q_proj_missing"):
        encoder.apply_lora(PeftConfig(target_modules=["query", "q_proj_missing"]))


def test_fresh_lora_does_not_change_embeddings(tiny_model_dir):
    encoder = load(tiny_model_dir)
    before = embed(encoder, TEXTS)
    encoder.apply_lora(PeftConfig(r=4, alpha=8, dropout=0.0))
    assert torch.allclose(embed(encoder.eval(), TEXTS), before, atol=1e-6)  # LoRA B starts at zero


# ---------------------------------------------------------------- save / load

def test_save_then_load_gives_identical_embeddings_and_settings(tiny_model_dir, tmp_path):
    encoder = load(tiny_model_dir, pooling="cls", query_max_length=7, query_prefix="query: ")
    encoder.save(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / ENCODER_CONFIG).read_text())
    assert saved["pooling"] == "cls"

    # the folder's own settings win over the cfg passed in
    reloaded = Encoder.load(ModelConfig(pooling="mean"), path=str(tmp_path / "saved")).eval()
    assert reloaded.pooling == "cls"
    assert reloaded.cfg.query_max_length == 7
    assert reloaded.cfg.query_prefix == "query: "
    assert torch.equal(reloaded.tokenize(TEXTS, "query")["input_ids"], encoder.tokenize(TEXTS, "query")["input_ids"])
    assert torch.allclose(embed(reloaded, TEXTS), embed(encoder, TEXTS), atol=1e-6)
    assert torch.allclose(embed(reloaded, TEXTS, "query"), embed(encoder, TEXTS, "query"), atol=1e-6)


def test_save_after_lora_merges_non_zero_adapters(tiny_model_dir, tmp_path):
    encoder = load(tiny_model_dir)
    base = embed(encoder, TEXTS)
    encoder.apply_lora(PeftConfig(r=4, alpha=8, dropout=0.0, target_modules=["query", "value", "dense"]))
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in encoder.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    encoder.eval()
    tuned = embed(encoder, TEXTS)
    assert (tuned - base).abs().max() > 1e-2  # the adapters do something

    encoder.save(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora" in k or "base_model" in k for k in keys)

    reloaded = Encoder.load(None, path=str(tmp_path / "saved")).eval()
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    assert torch.allclose(embed(reloaded, TEXTS), tuned, atol=1e-5)

    # saving merges into a copy: the live encoder still trains its adapters
    assert any(p.requires_grad and "lora_B" in n for n, p in encoder.named_parameters())
    assert torch.allclose(embed(encoder, TEXTS), tuned, atol=1e-6)


def test_load_from_a_folder_that_is_not_a_saved_encoder_is_an_embedtune_error(tiny_model_dir):
    with pytest.raises(EmbedtuneError, match="embedtune_encoder.json"):
        Encoder.load(None, path=str(tiny_model_dir))


# ---------------------------------------------------------------- decoder backbones: last-token pooling

def test_last_token_is_the_last_attended_position_with_either_padding_side():
    from embedtune.model import last_token

    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).reshape(2, 4, 1)  # row r, position t -> 4r + t
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1]])
    assert last_token(hidden, right).flatten().tolist() == [1.0, 7.0]
    assert last_token(hidden, left).flatten().tolist() == [3.0, 7.0]
