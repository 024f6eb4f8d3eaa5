"""An OpenAI-compatible embeddings endpoint as an encoder for eval: `embedtune serve`, a hosted API (OpenAI,
Voyage, ...), or a vLLM/TEI/NIM server. Texts go in requests of `batch_size`, at most `concurrency` at once,
with retries (http_retry.py); each response's vectors are put back in input order by their index, and the
tokens the server counted are summed (what a paid API bills)."""

from __future__ import annotations

import base64

import numpy as np
import torch

from embedtune.http_retry import bearer_headers, post_all


class EndpointEncoder:
    def __init__(self, cfg):
        """`cfg`: a BaselineConfig with a url."""
        self.cfg = cfg
        self.url = cfg.url.rstrip("/") + "/embeddings"
        self.texts_sent = 0
        self.tokens_sent = 0
        self.served_models: set[str] = set()  # what the responses named (embedtune serve: the weights' hash)

    def _body(self, texts: list[str], kind: str) -> dict:
        cfg = self.cfg
        prompt = (cfg.query_prompt if kind == "query" else cfg.passage_prompt) or ""
        body: dict = {"input": [prompt + t for t in texts], "encoding_format": "float"}
        if cfg.model:
            body["model"] = cfg.model
        if cfg.input_type:  # NIM's fields; END cuts a long text as eval's own encoders do
            body.update(input_type=kind, truncate="END")
        if cfg.dimensions:
            body["dimensions"] = cfg.dimensions
        return body

    def _parse(self, answer: dict, count: int) -> tuple[np.ndarray, int, str]:
        rows = sorted(answer["data"], key=lambda d: d["index"])
        if [d["index"] for d in rows] != list(range(count)):
            raise ValueError("the response's indices do not match the inputs")  # malformed: retried
        vectors = np.array([_vector(d["embedding"]) for d in rows], dtype=np.float32)
        return vectors, int((answer.get("usage") or {}).get("prompt_tokens", 0)), str(answer.get("model", ""))

    def encode_texts(self, texts: list[str], kind: str, batch_size: int = 0, desc: str = "encode") -> torch.Tensor:
        """Vectors of `texts` (float32, L2-normalised unless the baseline says normalize=false), in order."""
        step = self.cfg.batch_size
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        # a body without one vector per input is malformed (retried, then an error naming the URL)
        answers = post_all(self.url, [self._body(c, kind) for c in chunks], bearer_headers(self.cfg.api_key_env),
                           self.cfg, lambda answer, i: self._parse(answer, len(chunks[i])), desc, "text",
                           [len(c) for c in chunks])
        parts = []
        for vectors, tokens, model in answers:
            parts.append(vectors)
            self.tokens_sent += tokens
            self.served_models.add(model)
        self.texts_sent += len(texts)
        out = torch.from_numpy(np.concatenate(parts))
        return torch.nn.functional.normalize(out, dim=-1) if self.cfg.normalize else out


def _vector(embedding) -> np.ndarray:
    """A float list, or base64 of little-endian float32 (what some servers send whatever was asked)."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return np.asarray(embedding, dtype=np.float32)
