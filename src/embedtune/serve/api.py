"""The embeddings API's wire format, apart from any HTTP stack: OpenAI's request (input, model,
encoding_format, dimensions, user) plus NIM's input_type and truncate, checked field by field into an
EmbeddingRequest or an ApiError naming the field; and the response body (float or base64 vectors, usage)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Optional

import numpy as np
import orjson

from embedtune.serve.model_folder import INPUT_TYPES, TRUNCATE

FIELDS = ("input", "model", "encoding_format", "dimensions", "user", "input_type", "truncate")


class ApiError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 kind: str = "invalid_request_error", headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                       "code": self.code}})


@dataclass(frozen=True)
class EmbeddingRequest:
    texts: list[str]
    encoding_format: str          # float | base64
    dimensions: Optional[int]     # Matryoshka: the first `dimensions` of each vector, re-normalised
    input_type: str               # query | passage: which of the model's prompts is prepended
    truncate: str                 # NONE (too long is a 400) | START | END


def _type_name(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _texts(value, max_inputs: int) -> list[str]:
    if isinstance(value, str):
        if not value:
            raise ApiError(400, "input is an empty string: send at least one character", "input")
        return [value]
    if not isinstance(value, list):
        raise ApiError(400, f"input must be a string or a list of strings, not {_type_name(value)}", "input")
    if not value:
        raise ApiError(400, "input is an empty list: send at least one string", "input")
    if len(value) > max_inputs:
        raise ApiError(400, f"input holds {len(value):,} strings, more than this server takes in one request "
                            f"(serve.max_inputs={max_inputs:,}): split it", "input")
    for i, text in enumerate(value):
        if isinstance(text, str):
            if not text:
                raise ApiError(400, f"input[{i}] is an empty string", "input")
            continue
        if isinstance(text, int) and not isinstance(text, bool) or (
                isinstance(text, list) and all(isinstance(t, int) for t in text)):
            raise ApiError(400, f"input[{i}] is token ids: this server takes text (its tokenizer is not the "
                                "client's; LangChain: check_embedding_ctx_length=False)", "input")
        raise ApiError(400, f"input[{i}] must be a string, not {_type_name(text)}", "input")
    return value


def _choice(body: dict, name: str, options: tuple, default: str) -> str:
    value = body.get(name)
    if value is None:
        return default
    if value not in options:
        shown = json.dumps(value)[:40] if not isinstance(value, str) else repr(value[:40])
        raise ApiError(400, f"{name}={shown} is not one of {', '.join(options)}", name)
    return value


def parse_request(raw: bytes, model_names: tuple[str, ...], dimensions: int, max_inputs: int) -> EmbeddingRequest:
    """The request body checked field by field (every message names its field); `model_names`: the ids a
    request may name (a request that names none gets the served model)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, not {_type_name(body)}")
    unknown = [k for k in body if k not in FIELDS]
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r} (this endpoint reads {', '.join(FIELDS)})", unknown[0])
    if "input" not in body:
        raise ApiError(400, "missing field 'input' (a string or a list of strings)", "input")
    texts = _texts(body["input"], max_inputs)
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, f"model must be a string, not {_type_name(model)}", "model")
    if model is not None and model not in model_names:
        raise ApiError(404, f"model {model[:80]!r} is not served here; this server serves {' or '.join(model_names)} "
                            "(GET /v1/models)", "model", "model_not_found")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise ApiError(400, f"user must be a string, not {_type_name(user)}", "user")
    wanted = body.get("dimensions")
    if wanted is not None:
        if not isinstance(wanted, int) or isinstance(wanted, bool):
            raise ApiError(400, f"dimensions must be an integer, not {_type_name(wanted)}", "dimensions")
        if not 1 <= wanted <= dimensions:
            raise ApiError(400, f"dimensions={wanted} is outside 1..{dimensions} (the model's vectors have "
                                f"{dimensions})", "dimensions")
    return EmbeddingRequest(texts, _choice(body, "encoding_format", ("float", "base64"), "float"), wanted,
                            _choice(body, "input_type", INPUT_TYPES, "query"), _choice(body, "truncate", TRUNCATE, "NONE"))


def shaped(vectors: np.ndarray, dimensions: Optional[int]) -> np.ndarray:
    """The first `dimensions` of each vector, L2-normalised again (Matryoshka truncation); all of them when None."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    cut = vectors[:, :dimensions]
    return cut / np.maximum(np.linalg.norm(cut, axis=1, keepdims=True), 1e-12)


def response_body(vectors: np.ndarray, encoding_format: str, model_id: str, tokens: int) -> bytes:
    """OpenAI's list of embeddings: floats (float32, written in the shortest form that reads back exactly)
    or base64 of little-endian float32."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format == "base64":
        rows = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        rows = list(vectors)
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    return orjson.dumps({"object": "list", "data": data, "model": model_id,
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                        option=orjson.OPT_SERIALIZE_NUMPY)
