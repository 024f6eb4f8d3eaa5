"""embedtune serve over real HTTP (uvicorn in a thread of the test process): served vectors equal
SentenceTransformer(model).encode for both backends and both input types; the API's options, errors, keys,
metrics and dynamic batching."""

from __future__ import annotations

import asyncio
import base64
import shutil

import httpx
import numpy as np
import pytest
from helpers import serving

from embedtune.errors import EmbedtuneError
from embedtune.serve.model_folder import ModelFolder

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["the heart of a cat", "blue river", "protein and gene in the cell of the liver", "fish", "a" * 3]
LONG = "the cat and the dog " * 8 + "the heart and the kidney " * 8  # 80 words, over the 48-token limit


def offline(model_dir, texts: list[str], kind: str) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    return model.encode(texts, prompt_name=kind, convert_to_numpy=True)


def embed(url: str, **body) -> np.ndarray:
    response = httpx.post(f"{url}/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(len(data)))
    return np.array([d["embedding"] for d in data], dtype=np.float32)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module", params=["onnx", "torch"])
def server(request, served_model_dir):
    with serving(served_model_dir, backend=request.param) as running:
        yield running


def test_served_vectors_equal_sentence_transformers_encode(server, served_model_dir):
    """Both input types (each with the model's own prompt), a text over the limit with truncate=END (cut as
    sentence-transformers cuts it): cosine >= 0.99999 with SentenceTransformer(model).encode."""
    texts = TEXTS + [LONG]
    for kind in ("query", "passage"):
        served = embed(server.url, input=texts, input_type=kind, truncate="END")
        assert cosines(served, offline(served_model_dir, texts, kind)).min() >= 0.99999, kind
    one = embed(server.url, input="fish")  # a single string; input_type defaults to query
    assert cosines(one, offline(served_model_dir, ["fish"], "query"))[0] >= 0.99999
    assert cosines(one, offline(served_model_dir, ["fish"], "passage"))[0] < 0.99999  # the prompts matter


def test_too_long_input_is_refused_or_cut_at_either_end(server, served_model_dir):
    response = httpx.post(f"{server.url}/embeddings", json={"input": ["fish", LONG]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and error["code"] == "input_too_long"
    assert "input[1] has" in error["message"] and "limit of 48" in error["message"]
    from embedtune.serve.model_folder import TokenizedInputs

    tokens = TokenizedInputs(ModelFolder.open(str(served_model_dir)))
    (ids,) = tokens([LONG], "query", "START")
    assert len(ids) == 48 and ids[:3] == tokens(["x"], "query", "NONE")[0][:3]  # [CLS] query : stay first
    kept = tokens.tokenizer.decode(ids[3:-1])  # the text's last 44 tokens
    assert LONG.strip().endswith(kept) and kept.endswith("the heart and the kidney")
    start = embed(server.url, input=[LONG], truncate="START")
    assert cosines(start, offline(served_model_dir, [kept], "query"))[0] >= 0.99999
    end = embed(server.url, input=[LONG], truncate="END")
    assert cosines(end, offline(served_model_dir, [LONG], "query"))[0] >= 0.99999  # sentence-transformers' own cut
    assert cosines(start, end)[0] < 0.999


def test_dimensions_truncate_and_renormalise_and_base64_equals_float(server):
    full = embed(server.url, input=TEXTS)
    cut = embed(server.url, input=TEXTS, dimensions=8)
    expected = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    assert cut.shape == (len(TEXTS), 8) and np.allclose(cut, expected, atol=1e-6)
    response = httpx.post(f"{server.url}/embeddings", json={"input": TEXTS, "encoding_format": "base64"}).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in response["data"]])
    assert np.array_equal(decoded, full)  # float JSON reads back to the very same float32 values
    usage = response["usage"]
    assert usage["prompt_tokens"] == usage["total_tokens"] > len(TEXTS) * 3  # [CLS] query : ... [SEP]


def test_models_names_a_content_hash_that_changes_with_the_weights(server, served_model_dir, tmp_path):
    listed = httpx.get(f"{server.url}/models").json()["data"]
    assert len(listed) == 1
    entry = listed[0]
    assert entry["id"] == ModelFolder.open(str(served_model_dir)).model_id and entry["id"].startswith("emb-")
    assert entry["dimensions"] == 32 and entry["max_input_tokens"] == 48 and entry["aliases"] == ["tiny"]
    assert entry["prompts"] == {"query": "query: ", "passage": "passage: "}
    response = httpx.post(f"{server.url}/embeddings", json={"input": "fish", "model": "tiny"}).json()
    assert response["model"] == entry["id"]  # the name is an alias; answers carry the content id
    changed = shutil.copytree(served_model_dir, tmp_path / "model")
    (changed / "README.md").write_text("another card")
    assert ModelFolder.open(str(changed)).model_id == entry["id"]  # the card is not the model
    weights = bytearray((changed / "model.safetensors").read_bytes())
    weights[-1] ^= 1
    (changed / "model.safetensors").write_bytes(bytes(weights))
    assert ModelFolder.open(str(changed)).model_id != entry["id"]


BAD = [  # (body, status, param, words in the message)
    (b"{not json", 400, None, "not valid JSON"),
    (b"[1, 2]", 400, None, "JSON object"),
    (b"{}", 400, "input", "missing field 'input'"),
    (b'{"input": []}', 400, "input", "empty list"),
    (b'{"input": ""}', 400, "input", "empty string"),
    (b'{"input": ["fish", ""]}', 400, "input", "input[1] is an empty string"),
    (b'{"input": 3}', 400, "input", "not an integer"),
    (b'{"input": ["fish", {"a": 1}]}', 400, "input", "input[1] must be a string, not an object"),
    (b'{"input": [[101, 2023]]}', 400, "input", "token ids"),
    (b'{"input": "fish", "input_type": "document"}', 400, "input_type", "not one of query, passage"),
    (b'{"input": "fish", "truncate": "MIDDLE"}', 400, "truncate", "not one of NONE, START, END"),
    (b'{"input": "fish", "encoding_format": "hex"}', 400, "encoding_format", "not one of float, base64"),
    (b'{"input": "fish", "dimensions": 0}', 400, "dimensions", "outside 1..32"),
    (b'{"input": "fish", "dimensions": 33}', 400, "dimensions", "outside 1..32"),
    (b'{"input": "fish", "dimensions": "8"}', 400, "dimensions", "must be an integer"),
    (b'{"input": "fish", "user": 7}', 400, "user", "must be a string"),
    (b'{"input": "fish", "model": "gpt-4"}', 404, "model", "not served here"),
    (b'{"input": "fish", "inputs": "fish"}', 400, "inputs", "unknown field 'inputs'"),
    (b'{"input": ["fish", "fish", "fish", "fish", "fish"]}', 400, "input", "max_inputs=4"),
]


def test_every_bad_request_gets_a_4xx_naming_the_field_and_the_server_goes_on(served_model_dir):
    with serving(served_model_dir, max_inputs=4, max_queue=64, max_request_bytes=2000) as server:
        for body, status, param, words in BAD:
            response = httpx.post(f"{server.url}/embeddings", content=body, headers={"Content-Type": "application/json"})
            assert response.status_code == status, (body, response.text)
            error = response.json()["error"]
            assert error["param"] == param and words in error["message"], (body, error)
            assert set(error) == {"message", "type", "param", "code"}
        big = httpx.post(f"{server.url}/embeddings", json={"input": ["fish " * 100] * 4})
        assert big.status_code == 413 and "max_request_bytes" in big.json()["error"]["message"]
        wrong = httpx.get(f"{server.url}/embeddings")
        assert wrong.status_code == 405 and "POST /v1/embeddings" in wrong.json()["error"]["message"]
        assert httpx.get(f"{server.url}/nothing").status_code == 404
        assert embed(server.url, input=["fish", "river"]).shape == (2, 32)
        metrics = httpx.get(server.url.replace("/v1", "/metrics")).text
        refused = sum(status == 400 for _, status, _, _ in BAD)
        assert f'embedtune_requests_total{{code="400",route="/v1/embeddings"}} {refused}.0' in metrics
        assert 'embedtune_request_errors_total{code="404",error="model_not_found"} 1.0' in metrics
        assert 'embedtune_requests_total{code="200",route="/v1/embeddings"} 1.0' in metrics


def test_a_key_is_asked_for_when_its_variable_is_set(served_model_dir, monkeypatch):
    secret = "sk-serve-test-8d1f0a2b77"
    monkeypatch.setenv("EMBEDTUNE_TEST_KEYS", f"other-key, {secret}")
    with serving(served_model_dir, api_key_env="EMBEDTUNE_TEST_KEYS") as server:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": secret}):
            response = httpx.post(f"{server.url}/embeddings", json={"input": "fish"}, headers=headers)
            assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
            assert httpx.get(f"{server.url}/models", headers=headers).status_code == 401
        for key in ("other-key", secret):
            ok = httpx.post(f"{server.url}/embeddings", json={"input": "fish"}, headers={"Authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        root = server.url.replace("/v1", "")
        assert httpx.get(f"{root}/health/live").status_code == 200 and httpx.get(f"{root}/health/ready").status_code == 200
        metrics = httpx.get(f"{root}/metrics")
        assert metrics.status_code == 200 and secret not in metrics.text
        assert 'embedtune_requests_total{code="401",route="/v1/embeddings"} 3.0' in metrics.text


def test_concurrent_requests_share_batches_and_each_gets_its_own_vectors(served_model_dir):
    """32 requests at once: the batcher puts several into one batch (metrics), and every response holds the
    vectors of its own inputs, in its own order."""
    words = ["cat", "dog", "fish", "bird", "apple", "bread", "river", "music", "heart", "lung", "kidney", "liver"]
    requests = [[f"the {words[(i + j) % len(words)]} of the city" for j in range(1 + i % 3)] for i in range(32)]
    expected = {t: v for t, v in zip(sorted({t for r in requests for t in r}),
                                     offline(served_model_dir, sorted({t for r in requests for t in r}), "query"))}
    with serving(served_model_dir, max_wait_ms=20) as server:
        async def all_at_once():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(f"{server.url}/embeddings", json={"input": r}) for r in requests))
        responses = asyncio.run(all_at_once())
        for texts, response in zip(requests, responses):
            got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
            assert cosines(got, np.array([expected[t] for t in texts])).min() >= 0.99999
        histogram = server.service.metrics.batch_inputs.collect()[0].samples
        batches = next(s.value for s in histogram if s.name.endswith("_count"))
        inputs = next(s.value for s in histogram if s.name.endswith("_sum"))
        assert inputs == sum(map(len, requests)) and batches < len(requests)  # requests shared batches


def test_torch_backend_serves_a_decoder_that_leaves_its_prompt_out_of_pooling(tiny_llama_dir, tmp_path):
    """A left-padded decoder whose mean pooling leaves the prompt out (no ONNX graph for it): `auto` takes
    torch, queries and passages never share a batch (their prompts differ in length), vectors match offline."""
    from embedtune.export import ExportConfig, export_model
    from embedtune.model import Encoder, ModelConfig

    cfg = ModelConfig(name=str(tiny_llama_dir), pooling="mean", pool_prefix=False, padding_side="left",
                      query_prefix="query: the gene ", passage_prefix="passage: ")
    Encoder.load(cfg).save(tmp_path / "encoder")
    export_model(tmp_path / "encoder", tmp_path / "model", TEXTS, ExportConfig(onnx=False), card="")
    with serving(tmp_path / "model", max_wait_ms=50) as server:
        assert server.service.backend.name == "torch"

        async def mixed():
            async with httpx.AsyncClient(timeout=60) as client:
                return await asyncio.gather(*(client.post(f"{server.url}/embeddings", json={"input": TEXTS, "input_type": k})
                                              for k in ("query", "passage", "query", "passage")))
        for kind, response in zip(("query", "passage") * 2, asyncio.run(mixed())):
            got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
            assert cosines(got, offline(tmp_path / "model", TEXTS, kind)).min() >= 0.99999, kind


def test_the_openai_client_calls_it(server, served_model_dir):
    """The official openai client (which asks for base64 by default) against the server, input_type through
    extra_body as for NIM."""
    from openai import OpenAI

    client = OpenAI(base_url=server.url, api_key="unused", max_retries=0)
    answer = client.embeddings.create(model="tiny", input=TEXTS, extra_body={"input_type": "passage"})
    got = np.array([d.embedding for d in answer.data], dtype=np.float32)
    assert cosines(got, offline(served_model_dir, TEXTS, "passage")).min() >= 0.99999
    assert answer.model.startswith("emb-") and answer.usage.prompt_tokens > 0


def test_a_folder_of_the_older_format_reads_its_limit_from_sentence_bert_config():
    """The packaged MiniLM (sentence-transformers 2 layout: max_seq_length 256 in sentence_bert_config.json, no
    ONNX graph, so `auto` takes torch): a text over 256 tokens is refused with NONE and cut as
    sentence-transformers cuts it with END."""
    from embedtune.assets import resolve_model

    folder = resolve_model("minilm-l6").path
    assert ModelFolder.open("minilm-l6").max_tokens == 256 and ModelFolder.open("minilm-l6").onnx is None
    long_text = "the heart and the kidney of a patient with fever " * 40
    with serving(folder) as server:
        assert server.service.backend.name == "torch"
        refused = httpx.post(f"{server.url}/embeddings", json={"input": long_text})
        assert refused.status_code == 400 and "limit of 256" in refused.json()["error"]["message"]
        served = embed(server.url, input=[long_text, "fever"], truncate="END")
    # 1e-4: a full 256-token window sums in another order than sentence-transformers' (2.3e-5 measured on an
    # AVX512 CPU); the served vector must still be nearer the END cut than a cut 76 words earlier (below)
    expected = offline(folder, [long_text, "fever"], "query")
    assert cosines(served, expected).min() >= 0.9999
    shorter = offline(folder, [" ".join(long_text.split()[:180]), "fever"], "query")
    assert cosines(served[:1], shorter[:1]).min() < cosines(served[:1], expected[:1]).min()


def test_a_missing_or_unexported_folder_is_refused_naming_it(tmp_path):
    """Before any server starts (the CLI prints these as its one error line: tests/test_serve_process.py)."""
    with pytest.raises(EmbedtuneError, match="does not exist"):
        ModelFolder.open(str(tmp_path / "nothing"))
    with pytest.raises(EmbedtuneError, match=r"is not a sentence-transformers folder .*embedtune export"):
        ModelFolder.open(str(tmp_path))
