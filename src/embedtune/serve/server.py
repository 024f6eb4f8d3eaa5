"""`embedtune serve`: the exported model behind an OpenAI-compatible embeddings endpoint (uvicorn), with a
graceful drain on SIGTERM: requests in flight finish, new ones get 503, then the process exits 0."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass

from embedtune.errors import EmbedtuneError
from embedtune.manifest import not_in_key

SWITCH_INTERVAL_S = 0.0005


@dataclass
class ServeConfig:
    model: str = ""                   # exported sentence-transformers folder, built-in alias or hub id ("": the
                                      # run's model/, what `embedtune export` wrote)
    name: str = ""                    # a name clients may send as `model` besides its content id ("": run_name)
    host: str = "127.0.0.1"           # address to listen on (0.0.0.0: every interface; put TLS in front)
    port: int = 8000                  # TCP port
    api_key_env: str = "EMBEDTUNE_API_KEY"  # NAME of the environment variable holding the accepted key(s),
                                      # comma-separated; unset or empty: no key is asked for
    backend: str = "auto"             # auto (torch on a GPU, else onnx where the folder has the graph) | onnx | torch
    precision: str = "auto"           # torch: auto (bf16 where the hardware has it, as eval) | bf16 | fp32
    threads: int = 0                  # intra-op threads of the model (0: every core)
    batching: bool = True             # batch inputs across concurrent requests (false: each request alone)
    batch_tokens: int = 0             # padded tokens per batch at most (inputs x the longest); 0: 1,024 on a CPU
                                      # (bench/results/serve.md: more runs slower per text there), 16,384 on a GPU
    max_batch: int = 256              # inputs per batch at most
    max_wait_ms: float = 0.0          # how long an input may wait for others to join its batch (0: none; batches
                                      # still grow under load from what arrives while the model runs)
    max_queue: int = 8192             # inputs waiting at most; a request that does not fit gets 429
    max_inputs: int = 2048            # texts per request at most (OpenAI's limit)
    max_request_bytes: int = 8_000_000  # request body size at most (413 above)
    drain_timeout_s: float = 30.0     # after SIGTERM, how long requests in flight may take before the exit
    access_log: bool = not_in_key(False)  # uvicorn's line per request (never with headers, so never a key)


def api_keys(env_name: str) -> list[str]:
    """The keys in the environment variable named `env_name` (commas or whitespace between keys)."""
    if not env_name:
        return []
    return [k for k in re.split(r"[,\s]+", os.environ.get(env_name, "")) if k]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def build_service(cfg: ServeConfig, model: str, name: str):
    """The EmbeddingService for `model` (its folder opened, backend loaded, keys read)."""
    from embedtune.serve.app import EmbeddingService
    from embedtune.serve.backends import load_backend
    from embedtune.serve.model_folder import ModelFolder

    folder = ModelFolder.open(model)
    backend = load_backend(cfg.backend, folder, cfg.precision, cfg.threads)
    return EmbeddingService(cfg, folder, backend, name, api_keys(cfg.api_key_env))


class Server:
    """uvicorn serving one EmbeddingService; `run()` blocks (the CLI), `start()`/`stop()` run it in a thread
    (tests and benchmarks in one process)."""

    def __init__(self, cfg: ServeConfig, service):
        import uvicorn

        from embedtune.serve.app import create_app

        self.cfg, self.service = cfg, service
        self._loop: asyncio.AbstractEventLoop | None = None
        app = create_app(service, on_started=self._on_started)
        self.uvicorn = uvicorn.Server(uvicorn.Config(
            app, host=cfg.host, port=cfg.port, access_log=cfg.access_log,
            log_level="info" if cfg.access_log else "warning",
            timeout_graceful_shutdown=2, timeout_keep_alive=30))  # drain() has waited already

    def _on_started(self) -> None:
        self._loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            # after uvicorn's own handlers: SIGTERM drains first (SIGINT keeps uvicorn's quick stop)
            signal.signal(signal.SIGTERM, lambda signum, frame: self._loop.call_soon_threadsafe(self.drain))

    def drain(self) -> None:
        """New requests get 503 and /health/ready turns 503; once those in flight are answered (or
        serve.drain_timeout_s passed) the server stops."""
        self.service.draining = True

        async def finish() -> None:
            deadline = time.monotonic() + self.cfg.drain_timeout_s
            while self.service.in_flight and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            self.uvicorn.should_exit = True
        self._loop.create_task(finish())

    @property
    def url(self) -> str:
        port = self.uvicorn.servers[0].sockets[0].getsockname()[1] if self.uvicorn.started else self.cfg.port
        return f"http://{self.cfg.host}:{port}/v1"

    def run(self) -> None:
        self.uvicorn.run()

    def start(self) -> "Server":
        self._thread = threading.Thread(target=self.uvicorn.run, daemon=True)
        self._thread.start()
        while not self.uvicorn.started:
            if not self._thread.is_alive():
                raise EmbedtuneError(f"serve: the server did not start on {self.cfg.host}:{self.cfg.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self._thread.join(timeout=30)


def serve(cfg: ServeConfig, model: str, name: str) -> None:
    """`embedtune serve`: load, print where it listens and how it is configured, serve until SIGTERM/SIGINT."""
    # the event loop and the model's thread hand the GIL to each other several times per batch: at the default
    # 5 ms switch interval those handoffs, not the model, bound throughput under load
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    service = build_service(cfg, model, name)
    server = Server(cfg, service)
    key = (f"a key from ${cfg.api_key_env} ({len(service.keys)} accepted)" if service.keys else
           f"no key (set ${cfg.api_key_env} to ask for one)")
    if not service.keys and not _loopback(cfg.host):
        print(f"serve: warning: listening on {cfg.host} without a key: anyone who reaches this port can use it")
    folder = service.folder
    print(f"serve: {folder.model_id} ({folder.path}) at http://{cfg.host}:{cfg.port}/v1/embeddings; "
          f"{service.backend.name} backend, {service.backend.precision}, {service.dimensions} dimensions, at most "
          f"{folder.max_tokens} tokens per input, batches of at most {service.batch_tokens:,} padded tokens; {key}; "
          f"names: {', '.join(service.model_names)}", flush=True)
    server.run()
    print("serve: stopped", flush=True)
