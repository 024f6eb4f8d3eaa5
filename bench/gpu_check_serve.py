"""The GPU check of `embedtune serve` (issue 30), as one script for a CUDA machine with no network.

    python bench/gpu_assets.py .gpu                 # here: MiniLM's config + tokenizer, HPO passages
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        starlette uvicorn orjson httptools          # here: what the GPU image lacks
    python bench/gpu_check_serve.py --assets .gpu --out $OUT   # there (after installing .whl into PYTHONPATH)

1. Parity: the torch backend on the GPU, fp32 and bf16 (serve.precision), against
   SentenceTransformer(folder).encode in fp32 on the same GPU: the smallest cosine over queries and passages
   (fp32 must be >= 0.99999; bf16 is reported: what `auto` serves on a bf16 GPU, as eval encodes there).
2. Throughput: short queries and 256-token passages at concurrency 1, 8, 32 and 128, dynamic batching
   against each request alone, bf16; requests/s, embeddings/s, p50/p95/p99 (bench/serve_load.py as the
   client, the server in its own process). MiniLM's architecture with random weights: speed does not
   depend on their values (the 90 MB weights would not fit the 64 MiB transfer).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "src"), str(REPO / "bench")]

SERVER = ("import sys; from embedtune.serve.server import ServeConfig, serve; "
          "serve(ServeConfig(port=int(sys.argv[2]), backend='torch', precision=sys.argv[3], "
          "batching=sys.argv[4] == 'on'), sys.argv[1], 'gpu-check')")


def random_minilm(assets: Path, work: Path) -> Path:
    """MiniLM's architecture and tokenizer with random weights, exported as `embedtune export` writes it."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from embedtune.export import ExportConfig, export_model
    from embedtune.model import Encoder, ModelConfig

    torch.manual_seed(0)
    raw = work / "raw"
    AutoModel.from_config(AutoConfig.from_pretrained(assets / "minilm")).save_pretrained(raw)
    AutoTokenizer.from_pretrained(assets / "minilm").save_pretrained(raw)
    Encoder.load(ModelConfig(name=str(raw), pooling="mean")).save(work / "encoder")
    export_model(work / "encoder", work / "model", ["a fever", "the heart"], ExportConfig(onnx=False), "# gpu check\n")
    return work / "model"


def start(model: Path, precision: str, batching: str) -> tuple[subprocess.Popen, str]:
    from serve_load import free_port, wait_ready

    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "EMBEDTUNE_API_KEY": ""}
    log = open(Path(tempfile.gettempdir()) / f"gpu-check-serve-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(model), str(port), precision, batching], env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    return process, wait_ready(process, port, 300)


def parity(model: Path, passages: list[str], queries: list[str]) -> list[dict]:
    import httpx
    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model), device="cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for precision in ("fp32", "bf16"):
        server, url = start(model, precision, "on")
        try:
            worst = 1.0
            for kind, texts in (("query", queries), ("passage", passages)):
                expected = reference.encode(texts, prompt_name=kind, convert_to_numpy=True, batch_size=64)
                for i in range(0, len(texts), 64):
                    got = httpx.post(f"{url}/embeddings", json={"input": texts[i:i + 64], "input_type": kind,
                                                                "truncate": "END"}, timeout=120).json()["data"]
                    vectors = np.array([d["embedding"] for d in got], dtype=np.float32)
                    worst = min(worst, float((vectors * expected[i:i + 64]).sum(1).min()))
            rows.append({"precision": precision, "min_cosine": worst, "texts": len(queries) + len(passages)})
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return rows


def throughput(model: Path, workloads: dict[str, list[str]], seconds: float) -> list[dict]:
    from serve_load import run_load

    rows = []
    for batching in ("on", "off"):
        server, url = start(model, "bf16", batching)
        try:
            for workload, pool in workloads.items():
                body = {"input_type": "query" if workload == "query" else "passage", "truncate": "END"}
                for concurrency in (1, 8, 32, 128):
                    run_load(url, pool, body=body, concurrency=concurrency, duration=1.0)
                    r = run_load(url, pool, body=body, concurrency=concurrency, duration=seconds)
                    rows.append({"batching": batching, "workload": workload, "concurrency": concurrency,
                                 "requests_s": r.requests / r.seconds, "embeddings_s": r.embeddings / r.seconds,
                                 "p50_ms": r.percentile(50), "p95_ms": r.percentile(95), "p99_ms": r.percentile(99),
                                 "errors": r.requests - r.statuses[200]})
                    print(rows[-1], flush=True)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
    return rows


def main() -> None:
    import torch

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".gpu")
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    args = ap.parse_args()
    assets = Path(args.assets)
    data = json.loads((assets / "hpo.json").read_text())
    passages = [(p["title"] + " " + p["text"] + " ") * 8 for p in data["passages"]][:256]  # cut to 256 tokens
    queries = [p["title"] for p in data["passages"]][:1024]
    with tempfile.TemporaryDirectory() as work:
        model = random_minilm(assets, Path(work))
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (a smoke run of the script)"
        result = {"device": device, "torch": torch.__version__,
                  "parity": parity(model, passages[:128], queries[:256]),
                  "throughput": throughput(model, {"query": queries, "passage (256 tokens)": passages}, args.seconds)}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
