"""The server's Prometheus metrics (GET /metrics), in a registry of its own so that two servers in one
process (the tests) do not share counters."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from embedtune.serve.batcher import Batch

EXPOSITION_TYPE = CONTENT_TYPE_LATEST  # what GET /metrics answers with
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
TOKEN_BUCKETS = (16, 64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536)


class ServerMetrics:
    def __init__(self, model_id: str, backend: str, precision: str):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("embedtune_requests", "HTTP requests by route and status code",
                                ["route", "code"], registry=registry)
        self.errors = Counter("embedtune_request_errors", "Error responses by status code and error code",
                              ["code", "error"], registry=registry)
        self.latency = Histogram("embedtune_request_seconds", "Time from a request's arrival to its response",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_time = Histogram("embedtune_queue_seconds", "Time each input waited before its batch began",
                                    buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_seconds = Histogram("embedtune_batch_seconds", "Model time per batch",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_inputs = Histogram("embedtune_batch_inputs", "Inputs per batch", buckets=SIZE_BUCKETS,
                                      registry=registry)
        self.batch_tokens = Histogram("embedtune_batch_padded_tokens", "Padded tokens per batch (rows x longest)",
                                      buckets=TOKEN_BUCKETS, registry=registry)
        self.tokens = Counter("embedtune_prompt_tokens", "Tokens embedded (the usage reported to clients)",
                              registry=registry)
        self.inputs = Counter("embedtune_inputs", "Texts embedded", registry=registry)
        self.queued = Gauge("embedtune_queue_inputs", "Inputs waiting for a batch", registry=registry)
        self.in_flight = Gauge("embedtune_requests_in_flight", "Embedding requests being answered", registry=registry)
        info = Gauge("embedtune_model_info", "The served model (always 1)", ["model", "backend", "precision"],
                     registry=registry)
        info.labels(model_id, backend, precision).set(1)

    def batch(self, batch: Batch, seconds: float) -> None:
        self.batch_seconds.observe(seconds)
        self.batch_inputs.observe(len(batch.ids))
        self.batch_tokens.observe(batch.padded_tokens)
        for waited in batch.waited:
            self.queue_time.observe(waited)

    def answered(self, route: str, code: int, seconds: float, error: str = "") -> None:
        self.requests.labels(route, str(code)).inc()
        self.latency.labels(route).observe(seconds)
        if code >= 400:
            self.errors.labels(str(code), error or "error").inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
