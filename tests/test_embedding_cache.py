"""embedding_cache.py: each (kind, text) is encoded once per model, stored as float16 shards that are
memory-mapped, and a corpus is encoded block by block (a killed run keeps its finished blocks)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import embedtune.embedding_cache as embedding_cache
from embedtune.embedding_cache import EmbeddingCache
from embedtune.encode import encode
from embedtune.model import Encoder, ModelConfig
from embedtune.store import MappedTable, TextLookup

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["cat", "the blue river of the mountain city", "red fish", "protein", "a gene and a protein in the cell",
         "heart lung kidney liver brain blood"]
FP16 = 2e-3  # float16 storage of unit vectors: about 3 significant digits


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


def test_second_call_encodes_nothing_and_vectors_are_float16_to_3_digits(tmp_path, tiny_model_dir):
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path, "tiny:mean")
    first = cache.encode(encoder, TEXTS, "passage", batch_size=4)
    assert encoder.texts_seen == len(TEXTS)
    second = cache.encode(encoder, TEXTS, "passage", batch_size=4)
    assert encoder.texts_seen == len(TEXTS)
    assert torch.equal(first, second) and first.dtype == torch.float32
    fresh = encode(encoder, TEXTS, "passage")
    assert torch.allclose(first, fresh, atol=FP16) and not torch.equal(first, fresh)  # rounded, but close


def test_cache_returns_the_first_models_vectors(tmp_path, encoder_a, encoder_b):
    from_a = encode(encoder_a, TEXTS, "passage")
    from_b = encode(encoder_b, TEXTS, "passage")
    assert not torch.allclose(from_a, from_b, atol=1e-2)  # the two tiny models really differ
    cache = EmbeddingCache(tmp_path, "same-fingerprint")
    cache.encode(encoder_a, TEXTS, "passage")
    assert torch.allclose(cache.encode(encoder_b, TEXTS, "passage"), from_a, atol=FP16)


def test_cache_encodes_only_the_missing_texts_in_a_mixed_call(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS[:3], "passage")
    mixed = ["fish", TEXTS[2], TEXTS[0], "bread"]  # two new texts between cached ones
    out = cache.encode(encoder_b, mixed, "passage")
    assert torch.allclose(out[1], encode(encoder_a, [TEXTS[2]], "passage")[0], atol=FP16)
    assert torch.allclose(out[2], encode(encoder_a, [TEXTS[0]], "passage")[0], atol=FP16)
    assert torch.allclose(out[[0, 3]], encode(encoder_b, ["fish", "bread"], "passage"), atol=FP16)
    assert len(cache.shards) == 2 and len(cache) == 5  # a second shard holds the two new texts


def test_cache_keys_on_kind(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS, "passage")
    as_query = cache.encode(encoder_b, TEXTS, "query")
    assert torch.allclose(as_query, encode(encoder_b, TEXTS, "query"), atol=FP16)


def test_cache_encodes_duplicate_texts_once(tmp_path, tiny_model_dir):
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path, "fp")
    out = cache.encode(encoder, ["cat", "dog", "cat"], "passage")
    assert encoder.texts_seen == 2
    assert torch.equal(out[0], out[2])
    assert [len(np.load(p)) for p in cache.folder.glob("keys-*.npy")] == [2]


def test_cache_files_reload_memory_mapped_across_instances(tmp_path, encoder_a, encoder_b):
    EmbeddingCache(tmp_path, "fp").encode(encoder_a, TEXTS, "passage")
    reopened = EmbeddingCache(tmp_path, "fp")
    assert len(reopened) == len(TEXTS)
    assert all(isinstance(s, np.memmap) and s.dtype == np.float16 for s in reopened.shards)
    assert torch.allclose(reopened.encode(encoder_b, TEXTS[::-1], "passage"),
                          encode(encoder_a, TEXTS[::-1], "passage"), atol=FP16)


def test_cache_folders_are_per_fingerprint(tmp_path, encoder_a, encoder_b):
    EmbeddingCache(tmp_path, "model-a").encode(encoder_a, TEXTS, "passage")
    other = EmbeddingCache(tmp_path, "model-b")
    assert other.folder != EmbeddingCache(tmp_path, "model-a").folder
    assert torch.allclose(other.encode(encoder_b, TEXTS, "passage"), encode(encoder_b, TEXTS, "passage"), atol=FP16)


def test_cache_ignores_a_shard_whose_files_disagree(tmp_path, encoder_a, encoder_b):
    cache = EmbeddingCache(tmp_path, "fp")
    cache.encode(encoder_a, TEXTS, "passage")
    keys_path = next(cache.folder.glob("keys-*.npy"))
    np.save(keys_path, np.concatenate([np.load(keys_path), np.array([7], dtype=np.uint64)]))  # a key without a vector
    reopened = EmbeddingCache(tmp_path, "fp")
    assert len(reopened) == 0
    assert torch.allclose(reopened.encode(encoder_b, TEXTS, "passage"), encode(encoder_b, TEXTS, "passage"),
                          atol=FP16)


def test_cache_with_no_texts_returns_an_empty_tensor(tmp_path, encoder_a):
    out = EmbeddingCache(tmp_path, "fp").encode(encoder_a, [], "query")
    assert out.shape[0] == 0


def lookup_of(tmp_path, texts: list[str]) -> TextLookup:
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(len(texts))], "text": texts}), path)
    table = MappedTable.open([path], tmp_path / "table", ["id", "text"], "id")
    return TextLookup(table, lambda r: r["text"], ["text"])


def test_a_corpus_is_encoded_block_by_block_and_a_lost_block_alone_is_redone(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setattr(embedding_cache, "BLOCK_ROWS", 4)
    texts = [f"{w} number {i}" for i, w in enumerate(["gene", "cell", "lung", "heart", "brain", "blood"] * 2)]
    corpus = lookup_of(tmp_path, texts)
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path / "cache", "fp")
    vectors = cache.encode_corpus(encoder, corpus, "passage")
    assert encoder.texts_seen == 12 and len(cache.shards) == 3  # 12 rows in blocks of 4: one shard each
    expected = encode(load(tiny_model_dir), texts, "passage")
    assert torch.allclose(vectors.dense(), expected, atol=FP16)
    assert [start for start, _ in vectors.blocks(5)] == [0, 5, 10]
    assert np.allclose(np.concatenate([b for _, b in vectors.blocks(5)]), expected.numpy(), atol=FP16)
    assert np.allclose(vectors.take([11, 0]), expected.numpy()[[11, 0]], atol=FP16)
    # a killed run: the second block's shard never reached the disk; a rerun encodes only that block
    second = sorted(cache.folder.glob("keys-*.npy"), key=lambda p: p.stat().st_mtime_ns)[1]
    second.unlink()
    again = EmbeddingCache(tmp_path / "cache", "fp").encode_corpus(encoder, corpus, "passage")
    assert encoder.texts_seen == 16
    assert torch.allclose(again.dense(), expected, atol=FP16)


def test_a_corpus_of_texts_already_cached_as_a_list_is_not_encoded_again(tmp_path, tiny_model_dir):
    encoder = load(tiny_model_dir, CountingEncoder)
    cache = EmbeddingCache(tmp_path / "cache", "fp")
    cache.encode(encoder, TEXTS, "passage")
    vectors = cache.encode_corpus(encoder, lookup_of(tmp_path, TEXTS[::-1]), "passage")
    assert encoder.texts_seen == len(TEXTS)
    assert torch.allclose(vectors.dense(), encode(load(tiny_model_dir), TEXTS[::-1], "passage"), atol=FP16)


def test_forget_removes_gone_texts_from_every_models_cache_and_keeps_the_rest(tmp_path):
    rng = np.random.default_rng(0)
    texts = [f"passage {i}" for i in range(10)]
    for model in ("a", "b"):
        cache = EmbeddingCache(tmp_path, model)
        cache.add(embedding_cache.text_keys(texts[:6], "passage"), rng.standard_normal((6, 4)))
        cache.add(embedding_cache.text_keys(texts[6:], "passage"), rng.standard_normal((4, 4)))
    before = EmbeddingCache(tmp_path, "a").gather(EmbeddingCache(tmp_path, "a").find(
        embedding_cache.text_keys(texts[1:], "passage")))
    gone = embedding_cache.text_keys([texts[0], texts[7], texts[8], texts[9]], "passage")
    assert embedding_cache.forget(tmp_path, gone) == 8  # 4 texts from each of the two models' caches
    for model in ("a", "b"):
        cache = EmbeddingCache(tmp_path, model)
        assert (cache.find(gone) == -1).all() and len(cache) == 6
    cache = EmbeddingCache(tmp_path, "a")
    kept = embedding_cache.text_keys([t for t in texts if t not in (texts[0], texts[7], texts[8], texts[9])],
                                     "passage")
    expected = np.concatenate([before[:5], before[5:6]])  # texts 1-5 and 6 as they were (float16)
    assert np.array_equal(cache.gather(cache.find(kept)), expected)
    assert len(list(cache.folder.glob("keys-*.npy"))) == 2  # each shard written again without them
    assert embedding_cache.forget(tmp_path, gone) == 0  # again: nothing left to remove
