"""export.py: the sentence-transformers folder reproduces the encoder; a failed parity check writes nothing."""

from __future__ import annotations

import json

import pytest
import torch

from embedtune.errors import EmbedtuneError
from embedtune.export import ExportConfig, export_model
from embedtune.model import Encoder, ModelConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["the heart of a cat", "blue river", "protein and gene in the cell of the liver", "fish"]


@pytest.fixture(scope="module")
def encoder_dir(tiny_model_dir, tmp_path_factory):
    """A saved encoder folder (as train writes it) with prefixes, so prompts must survive the export."""
    cfg = ModelConfig(name=str(tiny_model_dir), pooling="mean", query_prefix="query: ", passage_prefix="passage: ")
    folder = tmp_path_factory.mktemp("export") / "encoder"
    Encoder.load(cfg).save(folder)
    return folder


def ours(encoder_dir, kind: str) -> torch.Tensor:
    encoder = Encoder.load(None, path=str(encoder_dir)).eval()
    with torch.no_grad():
        return encoder(encoder.tokenize(TEXTS, kind))


def test_export_model_writes_a_sentence_transformers_folder_with_parity(encoder_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = tmp_path / "model"
    result = export_model(encoder_dir, out, TEXTS, ExportConfig(), card="# tiny card\n")
    assert result["texts_checked"] == len(TEXTS)
    assert 0.0 <= result["max_abs_diff"] <= 1e-4
    assert (out / "README.md").read_text(encoding="utf-8") == "# tiny card\n"
    assert not (tmp_path / ".model.tmp").exists()

    st = SentenceTransformer(str(out), device="cpu")
    for kind in ("passage", "query"):
        theirs = st.encode(TEXTS, prompt_name=kind, convert_to_tensor=True).float().cpu()
        assert theirs.shape == (len(TEXTS), 32)
        assert torch.allclose(theirs, ours(encoder_dir, kind), atol=1e-5), kind
    assert torch.allclose(theirs.norm(dim=-1), torch.ones(len(TEXTS)), atol=1e-5)  # Normalize module kept


def test_export_model_with_cls_pooling(tiny_model_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder_dir = tmp_path / "encoder"
    Encoder.load(ModelConfig(name=str(tiny_model_dir), pooling="cls")).save(encoder_dir)
    export_model(encoder_dir, tmp_path / "model", TEXTS, ExportConfig(), card="")
    theirs = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(
        TEXTS, prompt_name="passage", convert_to_tensor=True).float().cpu()
    assert torch.allclose(theirs, ours(encoder_dir, "passage"), atol=1e-5)


def test_failed_parity_raises_and_leaves_the_existing_output_untouched(encoder_dir, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "previous.txt").write_text("earlier export")
    with pytest.raises(EmbedtuneError, match="max_abs_diff"):
        export_model(encoder_dir, out, TEXTS, ExportConfig(max_abs_diff=-1.0), card="")
    assert sorted(p.name for p in out.iterdir()) == ["previous.txt"]
    assert (out / "previous.txt").read_text() == "earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind




def test_onnx_export_gives_the_trained_encoders_embeddings(encoder_dir, tmp_path):
    """onnx/sentence_embedding.onnx (pooling + normalisation inside) under onnxruntime, on texts of other
    lengths and batch sizes than the export traced: same embeddings as the encoder."""
    import onnxruntime

    from embedtune.model import Encoder

    out = tmp_path / "model"
    result = export_model(encoder_dir, out, TEXTS, ExportConfig(), card="")
    assert 0 <= result["onnx_max_abs_diff"] <= 1e-4
    session = onnxruntime.InferenceSession(str(out / "onnx" / "sentence_embedding.onnx"))
    encoder = Encoder.load(None, path=str(encoder_dir))
    texts = ["a much longer passage about the gene and the protein in the blood cell of the heart", "fever"]
    batch = encoder.tokenize(texts, "passage")
    (onnx_emb,) = session.run(None, {"input_ids": batch["input_ids"].numpy(),
                                     "attention_mask": batch["attention_mask"].numpy()})
    with torch.no_grad():
        ours = encoder(batch)
    assert onnx_emb.shape == tuple(ours.shape)
    assert float((ours - torch.from_numpy(onnx_emb)).abs().max()) < 1e-4


DECODER_RECIPES = {
    "llama-last-eos-instruct": ("tiny_llama_dir", dict(pooling="last", query_prefix="Instruct: {task}\nQuery: ",
                                                       task="find the organ")),
    "qwen3-bidirectional-left": ("tiny_qwen3_dir", dict(pooling="last", attention="bidirectional",
                                                        padding_side="left", query_prefix="query: ")),
    "llama-mean-prompt-excluded-left": ("tiny_llama_dir", dict(pooling="mean", pool_prefix=False, padding_side="left",
                                                               query_prefix="query: the gene ",
                                                               passage_prefix="passage: ")),
}


@pytest.mark.parametrize("recipe", list(DECODER_RECIPES))
def test_export_of_a_decoder_loads_in_sentence_transformers_and_matches(recipe, tmp_path, request):
    """Pooling, prompts (task filled in, left out of pooling where asked), padding side, EOS and attention all
    travel in the folder: a plain SentenceTransformer(path) embeds queries and passages as the encoder did."""
    from sentence_transformers import SentenceTransformer

    fixture, settings = DECODER_RECIPES[recipe]
    encoder_dir = tmp_path / "encoder"
    encoder = Encoder.load(ModelConfig(name=str(request.getfixturevalue(fixture)), **settings))
    encoder.save(encoder_dir)
    onnx = recipe == "qwen3-bidirectional-left"  # ONNX of a decoder, checked by export itself on two batches
    result = export_model(encoder_dir, tmp_path / "model", TEXTS, ExportConfig(onnx=onnx), card="")
    assert result["max_abs_diff"] < 1e-5
    if onnx:
        assert result["onnx_max_abs_diff"] < 1e-4 and (tmp_path / "model" / "onnx" / "sentence_embedding.onnx").exists()
    model = SentenceTransformer(str(tmp_path / "model"), device="cpu")
    assert model.prompts["query"] == encoder.prefix("query")
    assert model.tokenizer.padding_side == encoder.tokenizer.padding_side
    pooling = json.loads((tmp_path / "model" / "1_Pooling" / "config.json").read_text())
    assert pooling["include_prompt"] is settings.get("pool_prefix", True)
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config.get("is_causal", True) is (settings.get("attention") != "bidirectional")
    for kind in ("query", "passage"):
        theirs = model.encode(TEXTS, prompt_name=kind, convert_to_tensor=True).float().cpu()
        assert torch.allclose(theirs, ours(encoder_dir, kind), atol=1e-5), kind
    if settings["pooling"] == "last":
        assert Encoder.load(ModelConfig(name=str(tmp_path / "model"))).pooling == "last"  # auto reads it back


def test_onnx_refuses_a_prompt_left_out_of_pooling(tiny_llama_dir, tmp_path):
    encoder_dir = tmp_path / "encoder"
    Encoder.load(ModelConfig(name=str(tiny_llama_dir), pooling="mean", pool_prefix=False,
                             query_prefix="query: ")).save(encoder_dir)
    with pytest.raises(EmbedtuneError, match="model.pool_prefix=false"):
        export_model(encoder_dir, tmp_path / "model", TEXTS, ExportConfig(onnx=True), card="")
    assert not (tmp_path / "model").exists()


def test_onnx_with_external_data_is_checked_from_its_files(tiny_llama_dir, tmp_path):
    """Models over protobuf's 2 GB limit are written with their weights beside the graph; here forced on a
    tiny decoder: the graph file holds no weights, the data file does, and onnxruntime (loading both from
    the graph's path) gives the encoder's embeddings on the traced and on a second batch."""
    import onnx

    from embedtune.export import export_onnx

    encoder = Encoder.load(ModelConfig(name=str(tiny_llama_dir), pooling="last"))
    path = tmp_path / "onnx" / "sentence_embedding.onnx"
    diff = export_onnx(encoder, path, TEXTS, external_data=True)
    assert 0 <= diff <= 1e-4
    weights = sum(p.numel() * 4 for p in encoder.parameters())
    data = [f for f in path.parent.iterdir() if f != path]
    assert data and sum(f.stat().st_size for f in data) >= 0.9 * weights
    graph = onnx.load(str(path), load_external_data=False)
    outside = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    inside = sum(len(t.raw_data) for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL)
    assert outside and inside < 0.1 * weights  # only tiny tensors (under a size threshold) stay in the graph
