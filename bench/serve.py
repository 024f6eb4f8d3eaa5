"""`embedtune serve` under load: requests/s, embeddings/s and p50/p95/p99 latency for short queries and
256-token passages at several concurrencies, ONNX and torch backends, each with dynamic batching and with
each request encoded alone (serve.batching=false: the same HTTP stack, no batching across requests).

    python bench/serve.py --out bench/results                  # the table (+ PNG); about 12 minutes
    python bench/serve.py --soak 20000 --out bench/results     # 20,000 requests from 64 clients, every answer checked

The server runs in its own process (`embedtune serve`); the client is wrk where it is installed (apt install
wrk: C, little CPU), else bench/serve_load.py. On a small machine they share the cores, as a server and its
clients on one host would. The model is the packaged MiniLM exported as `embedtune export` writes it
(sentence-transformers folder + ONNX), or --model. The soak always uses bench/serve_load.py, which checks
every answer's vectors.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import free_port, rss_mb, run_load, wait_ready  # noqa: E402

from embedtune.hpo import load_terms  # noqa: E402

CACHE = Path.home() / ".cache" / "embedtune" / "bench-serve-minilm"


def exported_minilm() -> Path:
    """The base MiniLM as `embedtune export` writes it, once into the user cache."""
    if (CACHE / "model" / "onnx" / "sentence_embedding.onnx").exists():
        return CACHE / "model"
    from embedtune.export import ExportConfig, export_model
    from embedtune.model import Encoder, ModelConfig

    Encoder.load(ModelConfig()).save(CACHE / "encoder")
    export_model(CACHE / "encoder", CACHE / "model", ["Abnormality of the heart", "a fever"], ExportConfig(), "# bench\n")
    return CACHE / "model"


def workloads(model: Path) -> dict[str, list[str]]:
    """HPO term synonyms as queries (what people type), and passages of 256 tokens made of HPO definitions."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model))
    _, terms = load_terms()
    queries = [s[0] for t in terms for s in t.synonyms][:2000]
    words = " ".join(t.definition for t in terms if t.definition).split()
    passages, start = [], 0
    while len(passages) < 200:
        end = start + 150
        while len(tokenizer(" ".join(words[start:end]))["input_ids"]) < 256:
            end += 10
        ids = tokenizer(" ".join(words[start:end]), truncation=True, max_length=256)["input_ids"]
        passages.append(tokenizer.decode(ids[1:-1]))
        start = end
    return {"query": queries, "passage (256 tokens)": passages}


def start_server(model: Path, *overrides: str) -> tuple[subprocess.Popen, str]:
    """`embedtune serve` in its own process (output to a file: a full pipe would stall it), once ready."""
    port = free_port()
    log = open(Path(tempfile.gettempdir()) / f"embedtune-bench-serve-{port}.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "embedtune.cli", "serve", f"serve.model={model}",
                                f"serve.port={port}", *overrides], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "EMBEDTUNE_API_KEY": ""})
    return process, wait_ready(process, port, 300)


def wait_idle(url: str) -> None:
    """Until the server answers no request: a client that stopped (the warm-up) leaves its last requests running."""
    for _ in range(600):
        text = httpx.get(url.replace("/v1", "/metrics")).text
        if "embedtune_requests_in_flight 0.0" in text:
            return
        time.sleep(0.1)


def batch_stats(url: str) -> tuple[float, float]:
    """(batches, inputs) so far, from the server's /metrics."""
    text = httpx.get(url.replace("/v1", "/metrics")).text
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("embedtune_batch_inputs_")}
    return values.get("embedtune_batch_inputs_count", 0.0), values.get("embedtune_batch_inputs_sum", 0.0)


def cpu_kind() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")), "")
    return f"{os.cpu_count()} cores, {model or platform.processor()}, " + (
        f"native bf16 ({', '.join(native)})" if native else "no native bf16 (AVX2: fp32)")


WRK_SCRIPT = """
bodies = {%s}
request = function()
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, bodies[math.random(#bodies)])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%d %%d %%d %%f %%f %%f\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status, latency:percentile(50), latency:percentile(95),
    latency:percentile(99)))
end
"""


def wrk_load(url: str, pool: list[str], body: dict, concurrency: int, seconds: float, folder: Path) -> dict:
    """wrk (C, one client thread) sending requests of one random text of `pool` each; its own summary."""
    bodies = ", ".join(f"[==[{json.dumps({**body, 'input': [t]})}]==]" for t in pool[:500])  # ASCII JSON, Lua long strings
    script = folder / "bench_serve.lua"
    script.write_text(WRK_SCRIPT % bodies)
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{round(seconds)}s", "--timeout", "30s", "-s", str(script),
                          f"{url}/embeddings"], capture_output=True, text=True, check=True).stdout
    requests, duration, failed, non2xx, p50, p95, p99 = next(
        line.split()[1:] for line in out.splitlines() if line.startswith("RESULT "))
    seconds = int(duration) / 1e6
    return {"requests_s": int(requests) / seconds, "embeddings_s": (int(requests) - int(non2xx)) / seconds,
            "p50_ms": float(p50) / 1000, "p95_ms": float(p95) / 1000, "p99_ms": float(p99) / 1000,
            "errors": int(failed) + int(non2xx)}


def python_load(url: str, pool: list[str], body: dict, concurrency: int, seconds: float, folder: Path) -> dict:
    """bench/serve_load.py's client (where wrk is not installed): its own CPU time is counted against the server's."""
    r = run_load(url, pool, body=body, concurrency=concurrency, duration=seconds)
    return {"requests_s": r.requests / r.seconds, "embeddings_s": r.embeddings / r.seconds, "p50_ms": r.percentile(50),
            "p95_ms": r.percentile(95), "p99_ms": r.percentile(99), "errors": r.requests - r.statuses[200]}


def measure(args, model: Path, texts: dict[str, list[str]], load, folder: Path) -> list[dict]:
    """Per backend, a server with dynamic batching and one without, both up at once and measured in turns,
    cell by cell: a machine whose speed drifts (shared hosts do) shifts both alike."""
    rows = []
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.batching]
    for backend in args.backends.split(","):
        servers = {batching: start_server(model, f"serve.backend={backend}", f"serve.batching={str(batching).lower()}",
                                          *args.set) for batching in modes}
        try:
            for workload, pool in texts.items():
                if args.workloads and workload.split()[0] not in args.workloads:
                    continue
                body = {"input_type": "query" if workload == "query" else "passage"}
                for concurrency in args.concurrency:
                    for batching, (_, url) in servers.items():
                        load(url, pool, body, concurrency, 1, folder)  # warm-up
                        wait_idle(url)
                        before = batch_stats(url)
                        measured = load(url, pool, body, concurrency, args.seconds, folder)
                        wait_idle(url)
                        after = batch_stats(url)
                        batches = after[0] - before[0]
                        rows.append({"backend": backend, "batching": batching, "workload": workload,
                                     "concurrency": concurrency, **measured,
                                     "mean_batch": (after[1] - before[1]) / batches if batches else 0.0})
                        print(rows[-1], flush=True)
        finally:
            for process, _ in servers.values():
                process.send_signal(signal.SIGTERM)
                process.wait(60)
    return sorted(rows, key=lambda r: (r["backend"], not r["batching"]))  # stable: workload, concurrency kept


def model_alone(model: Path, texts: dict[str, list[str]], backends: list[str]) -> str:
    """The ceiling batching can reach: each backend called directly (no HTTP), texts/s at several batch sizes on
    random samples of each workload (padded to the longest of the batch, as the server pads)."""
    import random

    from embedtune.serve.backends import load_backend, pad
    from embedtune.serve.model_folder import ModelFolder, TokenizedInputs

    folder = ModelFolder.open(str(model))
    tokens = TokenizedInputs(folder)
    sizes = (1, 4, 16, 32, 64)
    lines = ["| backend | workload | " + " | ".join(f"batch {n}" for n in sizes) + " | batch 32 / batch 1 |",
             "| --- | --- | " + " | ".join("---:" for _ in sizes) + " | ---: |"]
    for name in backends:
        backend = load_backend(name, folder, "auto", 0)
        for workload, pool in texts.items():
            rates = []
            for n in sizes:
                rng, done, started = random.Random(0), 0, time.perf_counter()
                while time.perf_counter() - started < 3.0:
                    ids = tokens([rng.choice(pool) for _ in range(n)], "query", "END")
                    backend.embed(*pad(ids, tokens.pad_id, tokens.left_padded), 0)
                    done += n
                rates.append(done / (time.perf_counter() - started))
            lines.append(f"| {name} | {workload} | " + " | ".join(f"{r:,.0f}" for r in rates)
                         + f" | {rates[3] / rates[0]:.1f}x |")
    return "\n".join(lines) + "\n"


def table(rows: list[dict]) -> str:
    lines = ["| backend | batching | workload | concurrency | requests/s | embeddings/s | p50 ms | p95 ms | p99 ms | "
             "mean batch | errors |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['backend']} | {'dynamic' if r['batching'] else 'each request alone'} | {r['workload']} | "
                     f"{r['concurrency']} | {r['requests_s']:,.0f} | {r['embeddings_s']:,.0f} | {r['p50_ms']:.1f} | "
                     f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['errors']} |")
    return "\n".join(lines) + "\n"


def speedups(rows: list[dict]) -> str:
    """Dynamic batching's embeddings/s over each request alone, per backend, workload and concurrency."""
    lines = ["| backend | workload | concurrency | dynamic / alone (embeddings/s) |", "| --- | --- | ---: | ---: |"]
    for r in rows:
        if not r["batching"]:
            continue
        alone = next((a for a in rows if not a["batching"] and all(a[k] == r[k] for k in ("backend", "workload",
                                                                                               "concurrency"))), None)
        if alone is None:
            continue
        lines.append(f"| {r['backend']} | {r['workload']} | {r['concurrency']} | "
                     f"{r['embeddings_s'] / max(alone['embeddings_s'], 1e-9):.1f}x |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads_seen = list(dict.fromkeys(r["workload"] for r in rows))
    fig, axes = plt.subplots(2, len(workloads_seen), figsize=(5.5 * len(workloads_seen), 7), squeeze=False)
    for col, workload in enumerate(workloads_seen):
        for backend in dict.fromkeys(r["backend"] for r in rows):
            for batching in (True, False):
                sel = [r for r in rows if r["workload"] == workload and r["backend"] == backend
                       and r["batching"] == batching]
                label = f"{backend}, {'dynamic batching' if batching else 'each request alone'}"
                style = "-o" if batching else "--s"
                xs = [r["concurrency"] for r in sel]
                axes[0][col].plot(xs, [r["embeddings_s"] for r in sel], style, label=label, markersize=4)
                axes[1][col].plot(xs, [r["p99_ms"] for r in sel], style, label=label, markersize=4)
        for row, ylabel in ((0, "embeddings/s"), (1, "p99 latency (ms)")):
            ax = axes[row][col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients")
            ax.set_ylabel(ylabel)
            ax.set_title(workload, fontsize=10)
            ax.legend(fontsize=7)
        axes[1][col].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def soak(args, model: Path, texts: dict[str, list[str]]) -> str:
    """args.soak requests of 1-4 queries from 64 clients, each answer checked against offline vectors of its
    inputs; the server's RSS every 1,000 answers."""
    from sentence_transformers import SentenceTransformer

    pool = texts["query"][:256]
    expected = SentenceTransformer(str(model), device="cpu").encode(pool, prompt_name="query")
    server, url = start_server(model)
    try:
        result = run_load(url, pool, (1, 4), {"input_type": "query"}, np.asarray(expected), concurrency=64,
                          total=args.soak, server_pid=server.pid, rss_every=1000, seed=0)
        final_rss = rss_mb(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    rss = [mb for _, mb in result.rss_mb]
    return (f"Soak: {result.requests:,} requests of 1-4 queries from 64 concurrent clients in {result.seconds:.0f} s "
            f"({result.requests / result.seconds:,.0f} requests/s); statuses {dict(result.statuses)}; connection "
            f"failures {dict(result.failures) or 'none'}; answers whose vectors were not their inputs', in order: "
            f"{result.mismatched}; p50/p95/p99 {result.percentile(50):.0f}/{result.percentile(95):.0f}/"
            f"{result.percentile(99):.0f} ms; server exit code {server.returncode}.\n\n"
            f"Server RSS (MB) every 1,000 answers: {', '.join(f'{mb:.0f}' for mb in rss)} (final {final_rss:.0f}); "
            f"after the first 1,000: {rss[-1] - rss[0]:+.0f} MB.\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="", help="an exported model folder (default: the packaged MiniLM, exported)")
    ap.add_argument("--backends", default="onnx,torch")
    ap.add_argument("--concurrency", default="1,8,32,128", type=lambda s: [int(c) for c in s.split(",")])
    ap.add_argument("--seconds", type=float, default=8.0, help="measured seconds per cell (after 1 s of warm-up)")
    ap.add_argument("--set", nargs="*", default=[], help="more serve settings, e.g. serve.max_wait_ms=2")
    ap.add_argument("--workloads", nargs="*", default=[], help="query and/or passage (default: both)")
    ap.add_argument("--batching", default="both", choices=["both", "on", "off"])
    ap.add_argument("--soak", type=int, default=0, help="run a soak of this many requests instead of the table")
    ap.add_argument("--out", default="", help="folder for serve.md + serve.png (or serve_soak.md)")
    args = ap.parse_args()
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    model = Path(args.model) if args.model else exported_minilm()
    texts = workloads(model)
    label = args.model or "the packaged all-MiniLM-L6-v2 as `embedtune export` writes it"
    heading = f"`embedtune serve` of {label}, measured {time.strftime('%Y-%m-%d')} on {cpu_kind()}.\n\n"
    if args.soak:
        report = heading + soak(args, model, texts)
        name = "serve_soak.md"
    else:
        load = wrk_load if shutil.which("wrk") else python_load
        with tempfile.TemporaryDirectory() as folder:
            rows = measure(args, model, texts, load, Path(folder))
        client = ("wrk (one client thread)" if load is wrk_load else "bench/serve_load.py (httpx; install wrk for a "
                  "client that takes less of the CPU)")
        report = (heading + f"Each cell: {args.seconds:.0f} s of requests back to back from N connections (one "
                  f"random text per request), after 1 s of warm-up; the client, {client}, runs on the same "
                  "machine.\n\n" + table(rows)
                  + "\nDynamic batching against each request alone:\n\n" + speedups(rows)
                  + "\nThe model alone (no HTTP; texts/s over 3 s, random texts of each workload per batch): what batching "
                  "can gain at most on this machine.\n\n" + model_alone(model, texts, args.backends.split(",")))
        name = "serve.md"
        if args.out:
            plot(rows, Path(args.out) / "serve.png")
            (Path(args.out) / "serve.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n" + report)
    if args.out:
        (Path(args.out) / name).write_text(report + ("\n![serve.png](serve.png)\n" if name == "serve.md" else ""))


if __name__ == "__main__":
    main()
