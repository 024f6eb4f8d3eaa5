"""encode.py: batched encoding keeps input order, alone and split across two processes."""

from __future__ import annotations

import pytest
import torch

from embedtune.encode import encode
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
