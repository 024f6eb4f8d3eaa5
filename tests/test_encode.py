"""encode.py: batched encoding keeps input order; the embedding cache encodes each (kind, text) once per model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embedtune.encode import EmbeddingCache, encode
from embedtune.model import Encoder, ModelConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

# different lengths, so length-sorted batches visit them out of input order
TEXTS = ["cat", "the blue river of the mountain city", "red fish", "protein", "a gene and a protein in the cell",
         "heart lung kidney liver brain blood"]


class CountingEncoder(Encoder):
    """A real Encoder that also counts the texts its forward pass has embedded."""

    texts_seen = 0

    def forward(self, batch):
        self.texts_seen += batch["input_ids"].shape[0]
        return super().forward(batch)


def load(folder, cls=Encoder) -> Encoder:
    return cls.load(ModelConfig(name=str(folder), pooling="mean"))


@pytest.fixture(scope="module")
def encoder_a(tiny_model_dir):
    return load(tiny_model_dir)


@pytest.fixture(scope="module")
def encoder_b(tiny_model_dir_other):
    return load(tiny_model_dir_other)


# ---------------------------------------------------------------- encode

def test_encode_returns_embeddings_in_input_order(encoder_a):
    batched = encode(encoder_a, TEXTS, "passage", batch_size=4)
    one_by_one = torch.cat([encode(encoder_a, [t], "passage", batch_size=1) for t in TEXTS])
    assert batched.shape == (len(TEXTS), 32)
    assert batched.dtype == torch.float32 and batched.device.type == "cpu"
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1], atol=1e-3)  # order would matter


def test_encode_uses_the_kind_of_text(tiny_model_dir):
    encoder = Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="mean", query_prefix="query: "))
    assert not torch.allclose(encode(encoder, TEXTS, "query"), encode(encoder, TEXTS, "passage"), atol=1e-3)


def test_encode_runs_in_eval_mode_and_restores_training(tiny_model_dir):
    encoder = load(tiny_model_dir)
    encoder.train()  # dropout on: encode must switch it off, or two calls would disagree
    first = encode(encoder, TEXTS, "passage")
    assert encoder.training and encoder.backbone.training
    assert torch.allclose(first, encode(encoder, TEXTS, "passage"), atol=1e-6)


def test_encode_leaves_a_freshly_loaded_encoder_deterministic(tiny_model_dir):
    encoder = load(tiny_model_dir)
    batch = encoder.tokenize(TEXTS, "passage")
    with torch.no_grad():
        before = encoder(batch)
    encode(encoder, TEXTS, "passage")
    with torch.no_grad():
        after = encoder(batch)
    assert torch.allclose(before, after, atol=1e-6)


# ---------------------------------------------------------------- EmbeddingCache

def test_cache_second_call_encodes_nothing(tmp_path, tiny_model_dir):
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path, "tiny:mean")
    first = cache.encode(encoder, TEXTS, "passage", batch_size=4)
    assert encoder.texts_seen == len(TEXTS)
    second = cache.encode(encoder, TEXTS, "passage", batch_size=4)
    assert encoder.texts_seen == len(TEXTS)
    assert torch.equal(first, second)
    assert torch.allclose(first, encode(encoder, TEXTS, "passage"), atol=1e-6)


def test_cache_returns_the_first_models_vectors(tmp_path, encoder_a, encoder_b):
    from_a = encode(encoder_a, TEXTS, "passage")
    from_b = encode(encoder_b, TEXTS, "passage")
    assert not torch.allclose(from_a, from_b, atol=1e-3)  # the two tiny models really differ

    cache = EmbeddingCache(tmp_path, "same-fingerprint")
    cache.encode(encoder_a, TEXTS, "passage")
    assert torch.allclose(cache.encode(encoder_b, TEXTS, "passage"), from_a, atol=1e-6)


def test_cache_encodes_only_the_missing_texts_in_a_mixed_call(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS[:3], "passage")
    mixed = ["fish", TEXTS[2], TEXTS[0], "bread"]  # two new texts between cached ones
    out = cache.encode(encoder_b, mixed, "passage")
    assert torch.allclose(out[1], encode(encoder_a, [TEXTS[2]], "passage")[0], atol=1e-5)
    assert torch.allclose(out[2], encode(encoder_a, [TEXTS[0]], "passage")[0], atol=1e-5)
    assert torch.allclose(out[[0, 3]], encode(encoder_b, ["fish", "bread"], "passage"), atol=1e-5)


def test_cache_keys_on_kind(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS, "passage")
    as_query = cache.encode(encoder_b, TEXTS, "query")
    assert torch.allclose(as_query, encode(encoder_b, TEXTS, "query"), atol=1e-5)


def test_cache_encodes_duplicate_texts_once(tmp_path, tiny_model_dir):
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path, "fp")
    out = cache.encode(encoder, ["cat", "dog", "cat"], "passage")
    assert encoder.texts_seen == 2
    assert torch.equal(out[0], out[2])
    assert len(json.loads((cache.folder / "keys.json").read_text())) == 2


def test_cache_files_reload_across_instances(tmp_path, encoder_a, encoder_b):
    EmbeddingCache(tmp_path, "fp").encode(encoder_a, TEXTS, "passage")
    reopened = EmbeddingCache(tmp_path, "fp")
    assert len(reopened.index) == len(TEXTS)
    assert torch.allclose(reopened.encode(encoder_b, TEXTS[::-1], "passage"),
                          encode(encoder_a, TEXTS[::-1], "passage"), atol=1e-5)
    vectors = np.load(reopened.folder / "vectors.npy", allow_pickle=False)
    assert vectors.shape == (len(TEXTS), 32)


def test_cache_folders_are_per_fingerprint(tmp_path, encoder_a, encoder_b):
    EmbeddingCache(tmp_path, "model-a").encode(encoder_a, TEXTS, "passage")
    other = EmbeddingCache(tmp_path, "model-b")
    assert other.folder != EmbeddingCache(tmp_path, "model-a").folder
    assert torch.allclose(other.encode(encoder_b, TEXTS, "passage"), encode(encoder_b, TEXTS, "passage"), atol=1e-5)


def test_cache_ignores_inconsistent_files(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS, "passage")
    keys = json.loads((cache.folder / "keys.json").read_text())
    (cache.folder / "keys.json").write_text(json.dumps(keys + ["extra"]))  # no vector for this key
    reopened = EmbeddingCache(tmp_path, "fp")
    assert reopened.index == {}
    assert torch.allclose(reopened.encode(encoder_b, TEXTS, "passage"), encode(encoder_b, TEXTS, "passage"),
                          atol=1e-5)


def test_cache_with_no_texts_returns_an_empty_tensor(tmp_path, encoder_a):
    out = EmbeddingCache(tmp_path, "fp").encode(encoder_a, [], "query")
    assert out.shape[0] == 0


@pytest.mark.slow
def test_encode_sharded_over_two_processes_equals_one_process(tiny_model_dir, tmp_path):
    """23 texts over 2 ranks (12 + 11): every rank gets all embeddings, in input order."""
    from helpers import REPO, accelerate_launch
    from embedtune.encode import encode_sharded

    out = tmp_path / "emb.pt"
    proc = accelerate_launch([str(REPO / "tests" / "dist_encode.py"), str(tiny_model_dir), str(out)], processes=2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out, weights_only=True)
    encoder = Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="mean"))
    single = encode_sharded(encoder, saved["texts"], "passage", batch_size=4)  # no process group: plain encode
    assert saved["emb"].shape == single.shape == (23, 32)
    assert torch.allclose(saved["emb"], single, atol=1e-5)
