"""A load generator for an OpenAI-compatible embeddings endpoint, used by bench/serve.py (throughput and
latency) and by the soak (tests/test_serve_process.py, and bench/serve.py --soak): `concurrency` clients,
each on its own keep-alive connection, send requests back to back until a count or a duration is reached;
every 200 is checked against the vectors its inputs should get (no lost, mixed or reordered response)."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of answered requests, seconds
    statuses: Counter = field(default_factory=Counter)
    embeddings: int = 0
    mismatched: int = 0        # 200s whose vectors are not those of their inputs, in order
    failures: Counter = field(default_factory=Counter)  # connection errors by type
    rss_mb: list[tuple[int, float]] = field(default_factory=list)  # (requests answered, server RSS)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    def percentile(self, p: float) -> float:
        return float(np.percentile(self.latencies, p)) * 1000 if self.latencies else float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(process: subprocess.Popen, port: int, seconds: float = 120.0) -> str:
    """The base URL (.../v1) of a server process once its /health/ready answers 200; an error with its exit code
    if it exits first."""
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/ready", timeout=1).status_code == 200:
                return f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before it was ready")
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"the server was not ready after {seconds:.0f} s")


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux), MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _load(url: str, pick: Callable[[random.Random], list[int]], texts: list[str], body: dict,
                expected: Optional[np.ndarray], concurrency: int, total: int, duration: float,
                server_pid: Optional[int], rss_every: int, seed: int, headers: dict) -> LoadResult:
    import httpx

    result, issued = LoadResult(), 0
    deadline = time.perf_counter() + duration if duration else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client(n: int, http: httpx.AsyncClient) -> None:
        nonlocal issued
        rng = random.Random(seed * 1000 + n)
        while (not total or issued < total) and (deadline is None or time.perf_counter() < deadline):
            issued += 1
            chosen = pick(rng)
            started = time.perf_counter()
            try:
                response = await http.post(f"{url}/embeddings", json={**body, "input": [texts[i] for i in chosen]})
            except httpx.HTTPError as e:
                result.failures[type(e).__name__] += 1
                continue
            result.latencies.append(time.perf_counter() - started)
            result.statuses[response.status_code] += 1
            if response.status_code != 200:
                continue
            data = response.json()["data"]
            result.embeddings += len(data)
            if expected is not None:
                got = np.array([d["embedding"] for d in data], dtype=np.float32)
                if [d["index"] for d in data] != list(range(len(chosen))) or got.shape[0] != len(chosen) or \
                        float((got * expected[chosen]).sum(1).min()) < 0.99999:
                    result.mismatched += 1
            answered = result.requests
            if server_pid and rss_every and answered % rss_every == 0:
                result.rss_mb.append((answered, rss_mb(server_pid)))

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=120, limits=limits, headers=headers) as http:
        await asyncio.gather(*(client(n, http) for n in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def run_load(url: str, texts: list[str], per_request: tuple[int, int] = (1, 1), body: Optional[dict] = None,
             expected: Optional[np.ndarray] = None, concurrency: int = 8, total: int = 0, duration: float = 0.0,
             server_pid: Optional[int] = None, rss_every: int = 0, seed: int = 0,
             headers: Optional[dict] = None) -> LoadResult:
    """Requests of per_request[0]..per_request[1] texts drawn from `texts` (seeded), with `body`'s other fields
    (input_type, ...) and `headers` (a key); `expected[i]`: the unit vector text i must get (None: not
    checked); the server's RSS every `rss_every` answers."""
    low, high = per_request

    def pick(rng: random.Random) -> list[int]:
        return [rng.randrange(len(texts)) for _ in range(rng.randint(low, high))]
    return asyncio.run(_load(url.rstrip("/"), pick, texts, body or {}, expected, concurrency, total, duration,
                             server_pid, rss_every, seed, headers or {}))
