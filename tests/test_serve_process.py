"""`embedtune serve` as users start it (the CLI, its own process): a soak from 64 concurrent clients (every
answer checked against its inputs, memory watched), then SIGTERM while a request is in flight: it finishes,
a new one gets 503, the process exits 0; the API key is in none of its output."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import CLEAN_ENV, REPO

sys.path.insert(0, str(REPO / "bench"))
from serve_load import free_port, run_load, wait_ready  # noqa: E402  (bench/serve_load.py: the benchmark's client)

pytestmark = pytest.mark.slow
SECRET = "sk-serve-soak-5e4d3c2b1a"
KEY = {"Authorization": f"Bearer {SECRET}"}
WORDS = ["cat", "dog", "fish", "bird", "apple", "bread", "river", "music", "heart", "lung", "kidney", "liver",
         "brain", "blood", "cell", "gene"]
TEXTS = [f"the {a} and the {b} of the city" for a in WORDS for b in WORDS[:4]]  # 64 distinct texts


def start_serve(model_dir, log: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    """`embedtune serve` in its own process with a key in its environment and uvicorn's access log on, its
    output in `log` (a pipe would fill and stall it); returns it, once /health/ready answers, with its base URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "embedtune.cli", "serve", f"serve.model={model_dir}",
                                f"serve.port={port}", "serve.threads=1", "serve.access_log=true", *overrides],
                               env={**CLEAN_ENV, "EMBEDTUNE_API_KEY": SECRET, "OMP_NUM_THREADS": "1"},
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        return process, wait_ready(process, port)
    except RuntimeError as e:
        raise AssertionError(f"{e}: {log.read_text()[-3000:]}") from None


def stop(process: subprocess.Popen, log: Path) -> str:
    """SIGTERM, the exit, and everything the process printed."""
    process.send_signal(signal.SIGTERM)
    process.wait(60)
    return log.read_text()


def test_soak_of_64_concurrent_clients_loses_nothing_and_memory_stays_flat(served_model_dir, tmp_path):
    """2,000 requests of 1-4 texts (bench/serve.py --soak runs 20,000): every answer a 200 holding its own
    inputs' vectors in order, resident memory flat after the first 400."""
    from sentence_transformers import SentenceTransformer

    expected = SentenceTransformer(str(served_model_dir), device="cpu").encode(TEXTS, prompt_name="query")
    server, url = start_serve(served_model_dir, tmp_path / "serve.log")
    try:
        soak = run_load(url, TEXTS, (1, 4), {"input_type": "query"}, np.asarray(expected), concurrency=64,
                        total=2000, server_pid=server.pid, rss_every=400, seed=1, headers=KEY)
    finally:
        output = stop(server, tmp_path / "serve.log")
    assert soak.statuses == {200: 2000} and not soak.failures, (soak.statuses, soak.failures)
    assert soak.mismatched == 0 and soak.embeddings > 2000
    rss = [mb for _, mb in soak.rss_mb]
    assert len(rss) == 5 and rss[-1] - rss[1] < 40, rss  # flat after warm-up (MB)
    assert server.returncode == 0 and SECRET not in output


def test_sigterm_lets_the_request_in_flight_finish_refuses_new_ones_and_exits_zero(served_model_dir, tmp_path):
    """A request whose body is still arriving when SIGTERM comes is surely in flight: it is answered."""
    server, url = start_serve(served_model_dir, tmp_path / "serve.log")
    answers = {}

    def slow_body():
        yield b'{"input": ["the cat and the dog", '
        time.sleep(1.0)  # SIGTERM arrives now
        yield b'"the heart of the city"], "input_type": "passage"}'
    sender = threading.Thread(target=lambda: answers.update(
        first=httpx.post(f"{url}/embeddings", content=slow_body(), timeout=60,
                         headers={**KEY, "Content-Type": "application/json"})))
    sender.start()
    time.sleep(0.4)
    server.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    late = httpx.post(f"{url}/embeddings", json={"input": "fish"}, headers=KEY)
    ready = httpx.get(url.replace("/v1", "/health/ready"))
    sender.join(30)
    server.wait(60)
    output = (tmp_path / "serve.log").read_text()
    assert answers["first"].status_code == 200 and len(answers["first"].json()["data"]) == 2
    assert late.status_code == 503 and late.json()["error"]["code"] == "shutting_down"
    assert ready.status_code == 503 and ready.json() == {"status": "draining"}
    assert server.returncode == 0, output[-2000:]
    assert "serve: stopped" in output and "POST /v1/embeddings" in output  # the access log was on ...
    assert SECRET not in output  # ... and holds no key


def test_bad_settings_stop_serve_with_one_clear_line(tmp_path):
    from helpers import assert_clean_error, embedtune

    no_run = embedtune("serve", cwd=tmp_path, timeout=120)
    assert_clean_error(no_run, "no exported model in runs/demo/model", "embedtune export")
    wrong = embedtune("serve", "serve.backend=tpu", "serve.max_inputs=9000", cwd=tmp_path, timeout=120)
    assert_clean_error(wrong, "serve.backend=tpu is not one of auto, onnx, torch", "serve.max_inputs=9000 is more than")
