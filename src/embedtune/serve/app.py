"""The HTTP application (Starlette): POST /v1/embeddings, GET /v1/models, /health/live, /health/ready and
/metrics over one EmbeddingService, which holds the model, its tokenizer, the dynamic batcher, the keys and
the drain state."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

import numpy as np
import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from embedtune.serve.api import ApiError, parse_request, response_body, shaped
from embedtune.serve.backends import dimensions_of, pad
from embedtune.serve.batcher import Batch, DynamicBatcher, QueueFull
from embedtune.serve.metrics import EXPOSITION_TYPE, ServerMetrics
from embedtune.serve.model_folder import InputTooLong, ModelFolder, TokenizedInputs

JSON = "application/json"
CPU_BATCH_TOKENS = 1024  # onnxruntime on a 2-core CPU: texts/s peak near 1,024 padded tokens (bench/results/serve.md)
GPU_BATCH_TOKENS = 16384
INLINE_CHARS = 4096  # requests with at most this many characters are tokenized on the event loop (~0.1 ms)
log = logging.getLogger("embedtune.serve")


class EmbeddingService:
    def __init__(self, cfg, folder: ModelFolder, backend, name: str, keys: list[str]):
        """`cfg`: the ServeConfig; `keys`: the accepted API keys (none: no key needed)."""
        self.cfg, self.folder, self.backend, self.keys = cfg, folder, backend, keys
        self.tokens = TokenizedInputs(folder)  # small requests: tokenized on the event loop, no thread hop
        self._big_request_tokens = TokenizedInputs(folder)  # large ones: in a thread, with a tokenizer of its own
        self.dimensions = dimensions_of(backend, self.tokens)
        self.batch_tokens = cfg.batch_tokens or (GPU_BATCH_TOKENS if backend.on_gpu else CPU_BATCH_TOKENS)
        self.model_names = tuple(dict.fromkeys(n for n in (folder.model_id, name) if n))
        self.metrics = ServerMetrics(folder.model_id, backend.name, backend.precision)
        self.batcher: Optional[DynamicBatcher] = None
        # (a fast tokenizer used from two threads at once fails with "Already borrowed": one each)
        self._tokenizer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")
        self.in_flight, self.draining, self.started = 0, False, time.time()
        # tokens of each prompt that mean pooling leaves out (include_prompt false: batches are grouped by type)
        self._prompt_lengths = {} if folder.include_prompt else {t: self.tokens.prompt_length(t) for t in folder.prompts}

    def _embed(self, batch: Batch) -> np.ndarray:
        input_ids, mask = pad(batch.ids, self.tokens.pad_id, self.tokens.left_padded)
        return self.backend.embed(input_ids, mask, self._prompt_lengths.get(batch.group, 0))

    async def start(self) -> None:
        cfg = self.cfg
        self.batcher = DynamicBatcher(self._embed, self.batch_tokens, cfg.max_batch, cfg.max_wait_ms / 1000,
                                      cfg.max_queue, cfg.batching, self.metrics.batch)
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self._tokenizer_thread.shutdown(wait=True)

    def check_key(self, request: Request) -> None:
        if not self.keys:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(given.encode(), k.encode()) for k in self.keys):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'", None,
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ApiError(413, f"the request body has {int(declared):,} bytes, more than serve.max_request_bytes="
                                f"{limit:,}: send fewer or shorter inputs per request", None, "request_too_large")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"the request body is over serve.max_request_bytes={limit:,} bytes: send fewer "
                                    "or shorter inputs per request", None, "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def embed(self, request: Request) -> bytes:
        if self.draining:
            raise ApiError(503, "the server is shutting down: send the request to another replica", None,
                           "shutting_down", "server_error", {"Connection": "close", "Retry-After": "1"})
        self.check_key(request)
        req = parse_request(await self.read_body(request), self.model_names, self.dimensions, self.cfg.max_inputs)
        try:
            if sum(map(len, req.texts)) <= INLINE_CHARS:
                ids = self.tokens(req.texts, req.input_type, req.truncate)
            else:  # long enough to hold up other requests: off the event loop
                ids = await asyncio.get_running_loop().run_in_executor(
                    self._tokenizer_thread, self._big_request_tokens, req.texts, req.input_type, req.truncate)
        except InputTooLong as e:
            raise ApiError(400, str(e), "input", "input_too_long") from None
        group = "" if self.folder.include_prompt else req.input_type
        try:
            vectors = await self.batcher.submit(ids, group)
        except QueueFull as e:
            raise ApiError(429, f"the server is at capacity ({e}): retry after a short wait", None, "queue_full",
                           "rate_limit_error", {"Retry-After": "1"}) from None
        tokens = sum(map(len, ids))
        self.metrics.tokens.inc(tokens)
        self.metrics.inputs.inc(len(ids))
        return response_body(shaped(vectors, req.dimensions), req.encoding_format, self.folder.model_id, tokens)

    def models(self) -> bytes:
        entry = {"id": self.folder.model_id, "object": "model", "created": int(self.started), "owned_by": "embedtune",
                 "aliases": list(self.model_names[1:]), "dimensions": self.dimensions,
                 "max_input_tokens": self.folder.max_tokens, "prompts": self.folder.prompts,
                 "backend": self.backend.name, "precision": self.backend.precision}
        return orjson.dumps({"object": "list", "data": [entry]})


def _answer(service: EmbeddingService, route: str, work: Callable) -> Callable:
    """A route that answers JSON, turns ApiError (and anything unexpected) into OpenAI's error shape, and
    counts the request in the metrics."""
    async def handler(request: Request) -> Response:
        started, code, error = time.perf_counter(), 200, ""
        service.in_flight += 1
        service.metrics.in_flight.inc()
        try:
            response = Response(await work(request), media_type=JSON)
        except ApiError as e:
            code, error = e.status, e.code or e.kind
            response = Response(e.body(), status_code=e.status, media_type=JSON, headers=e.headers)
        except Exception:  # a bug or a failed batch: this request fails, the server goes on
            log.exception("embedtune serve: %s failed", route)
            code, error = 500, "server_error"
            response = Response(ApiError(500, "the server failed on this request (see its log)", None, None,
                                         "server_error").body(), status_code=500, media_type=JSON)
        finally:
            service.in_flight -= 1
            service.metrics.in_flight.dec()
        service.metrics.queued.set(len(service.batcher.pending) if service.batcher else 0)
        service.metrics.answered(route, code, time.perf_counter() - started, error)
        return response
    return handler


def create_app(service: EmbeddingService, on_started: Callable[[], None] = lambda: None) -> Starlette:
    """`on_started()` runs once the model is ready (the server installs its SIGTERM drain there)."""
    async def models(request: Request) -> bytes:
        service.check_key(request)
        return service.models()

    async def live(request: Request) -> Response:
        return Response(b'{"status":"live"}', media_type=JSON)

    async def ready(request: Request) -> Response:
        if service.draining or service.batcher is None:
            state = "draining" if service.draining else "starting"
            return Response(b'{"status":"%s"}' % state.encode(), status_code=503, media_type=JSON)
        return Response(b'{"status":"ready"}', media_type=JSON)

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.exposition(), media_type=EXPOSITION_TYPE)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await service.start()
        on_started()
        yield
        await service.stop()

    async def not_found(request: Request, exc: HTTPException) -> Response:
        error = ApiError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail} (this server answers "
                                          "POST /v1/embeddings, GET /v1/models, /health/live, /health/ready, /metrics)")
        return Response(error.body(), status_code=exc.status_code, media_type=JSON)

    routes = [Route("/v1/embeddings", _answer(service, "/v1/embeddings", service.embed), methods=["POST"]),
              Route("/v1/models", _answer(service, "/v1/models", models), methods=["GET"]),
              Route("/health/live", live, methods=["GET"]), Route("/health/ready", ready, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan, exception_handlers={HTTPException: not_found})
