"""Property: whatever a client sends to POST /v1/embeddings (any JSON, or bytes that are not JSON), the server
answers 200 or a 4xx in OpenAI's error shape whose message names the field at fault, never a 5xx; and
afterwards a valid request still gets the right vectors."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
from helpers import serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from embedtune.serve.api import FIELDS

pytestmark = pytest.mark.usefixtures("torch_one_thread")

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                                                 inner, max_size=3),
                           max_leaves=8)
texts = st.text(max_size=120)  # unicode of every kind, empty included; long ones pass the 48-token limit
field_values = {
    "input": st.one_of(texts, st.lists(texts, max_size=6), st.lists(st.integers(0, 50000), max_size=4), json_values),
    "model": st.one_of(st.sampled_from(["tiny", "gpt-4", ""]), json_values),
    "encoding_format": st.one_of(st.sampled_from(["float", "base64", "hex"]), json_values),
    "dimensions": st.one_of(st.integers(-5, 40), json_values),
    "user": st.one_of(st.text(max_size=10), json_values),
    "input_type": st.one_of(st.sampled_from(["query", "passage", "document", "QUERY"]), json_values),
    "truncate": st.one_of(st.sampled_from(["NONE", "START", "END", "none"]), json_values),
}
bodies = st.fixed_dictionaries({}, optional={**field_values, "extra": json_values})
raw = st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode),
                st.sampled_from([b"", b"\xff\xfe{", b'{"input": NaN}', b'{"input": Infinity}', b'{"input": "a", "input": 1}']))


@pytest.fixture(scope="module")
def server(served_model_dir):
    with serving(served_model_dir, max_inputs=5) as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    """One keep-alive connection for every example, as a real client would hold."""
    with httpx.Client(base_url=server.url, timeout=30) as connection:
        yield connection


def check(response: httpx.Response, body) -> None:
    assert response.status_code < 500, (body, response.text)
    if response.status_code == 200:
        data = response.json()["data"]
        assert data and all(d["object"] == "embedding" for d in data)
        return
    assert 400 <= response.status_code < 500, (body, response.text)
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    named = [f for f in (*FIELDS, "extra", "body") if f in error["message"]]
    assert named or error["param"] is None and "JSON" in error["message"], (body, error)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=bodies)
def test_any_json_body_gets_200_or_a_4xx_naming_its_field(client, body):
    check(client.post("/embeddings", json=body), body)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=raw)
def test_any_bytes_get_a_4xx_or_200(client, payload):
    check(client.post("/embeddings", content=payload, headers={"Content-Type": "application/json"}), payload)


def test_after_the_fuzz_a_valid_request_still_gets_the_right_vectors(server, served_model_dir):
    from sentence_transformers import SentenceTransformer

    response = httpx.post(f"{server.url}/embeddings", json={"input": ["fish", "blue river"], "input_type": "passage"})
    assert response.status_code == 200
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    expected = SentenceTransformer(str(served_model_dir), device="cpu").encode(["fish", "blue river"],
                                                                                prompt_name="passage")
    assert np.allclose(got, expected, atol=1e-5)
    metrics = httpx.get(server.url.replace("/v1", "/metrics")).text
    assert 'code="500"' not in metrics
