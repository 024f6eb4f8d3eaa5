"""Synthetic-query throughput of the default generator on this machine, per backend, on the demo's prompts.

    python bench/generate.py [--model smollm2-135m] [--n 256] [--out bench/results]

Each setting runs in a process of its own (its peak memory is its own): transformers at the CPU's dtype with the
cached few-shot start at batch 32 (the default), then generator.backend=onnx at fp32, int8 and int4 (the
conversion is made once before timing and cached); `--settings transformers,llama.cpp` adds llama.cpp through
xllamacpp (pip install xllamacpp; the GGUF as packaged, 8 parallel slots). Prompts are the demo's: HPO passages,
one query per passage of the default mix. Prints and writes generate.md (+ generate.png, generate.json):
queries/s (model loading excluded), peak resident memory, the share of answers identical to transformers' and
the share that ran out of tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

SETTINGS = {"transformers": ["backend=transformers"], "onnx fp32": ["backend=onnx", "onnx_precision=fp32"],
            "onnx int8": ["backend=onnx", "onnx_precision=int8"], "onnx int4": ["backend=onnx", "onnx_precision=int4"],
            "llama.cpp": ["xllamacpp=8"]}  # optional (pip install xllamacpp): the GGUF as packaged, 8 parallel slots
DEFAULT_SETTINGS = "transformers,onnx fp32,onnx int8,onnx int4"


def prompts_for(n: int):
    from embedtune.generate.prompts import passage_for_prompt, render
    from embedtune.generate.runner import GeneratorConfig, query_types
    from embedtune.hpo import load_terms

    _, terms = load_terms()
    cfg = GeneratorConfig()
    cfg.prompt.domain = "human phenotypes (clinical signs, symptoms and abnormalities)"
    chosen = terms[1000:1000 + n]
    return [render(query_types(t.id, cfg)[0], passage_for_prompt(t.name, t.definition, cfg.prompt.passage_max_chars),
                   cfg.prompt, cfg.max_new_tokens) for t in chosen]


def one(model: str, n: int, overrides: list[str]) -> dict:
    """One setting, in this process: load, warm up, time `n` prompts (n=0: only convert, when onnx)."""
    from embedtune.generate.backends import BackendConfig, make_backend
    from embedtune.generate.onnx_backend import converted_folder

    cfg = BackendConfig(model=model)
    for item in overrides:
        key, value = item.split("=", 1)
        setattr(cfg, key, value)
    if overrides and overrides[0].startswith("xllamacpp="):
        if n == 0:
            return {"convert_s": 0.0}
        prompts = prompts_for(n)
        started = time.perf_counter()
        rate, answers = xllamacpp_rate(model, prompts, int(overrides[0].split("=", 1)[1]))
        return {"queries_per_s": rate, "seconds": time.perf_counter() - started,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "answers": answers}
    if n == 0:
        started = time.perf_counter()
        if cfg.backend == "onnx":
            converted_folder(model, cfg.onnx_precision)
        return {"convert_s": time.perf_counter() - started}
    backend = make_backend(cfg)
    prompts = prompts_for(n)
    backend.generate(prompts[:2])  # warm-up
    started = time.perf_counter()
    answers = backend.generate(prompts)
    seconds = time.perf_counter() - started
    return {"queries_per_s": n / seconds, "seconds": seconds,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "answers": [[a.text, a.finished] for a in answers]}


def xllamacpp_rate(model: str, prompts, parallel: int) -> tuple[float, list]:
    """llama.cpp's server in-process (xllamacpp), `parallel` slots, prompt caching per slot."""
    from concurrent.futures import ThreadPoolExecutor

    import xllamacpp

    from embedtune.assets import resolve_model

    resolved = resolve_model(model)
    params = xllamacpp.CommonParams()
    params.model.path = f"{resolved.path}/{resolved.gguf_file}"
    params.n_parallel, params.n_ctx = parallel, 1024 * parallel
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = 2
    server = xllamacpp.Server(params)

    def ask(p):
        return server.handle_chat_completions({"messages": p.messages, "max_tokens": p.max_new_tokens,
                                               "temperature": 0, "stop": ["\n"]})
    ask(prompts[0])
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        replies = list(pool.map(ask, prompts))
    rate = len(prompts) / (time.perf_counter() - started)
    return rate, [[r["choices"][0]["message"]["content"].strip(), r["choices"][0]["finish_reason"] != "length"]
                  for r in replies]


def child(model: str, n: int, overrides: list[str]) -> dict:
    done = subprocess.run([sys.executable, __file__, "--model", model, "--n", str(n), "--one", *overrides],
                          capture_output=True, text=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{' '.join(overrides)} failed:\n{done.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def cpu_line() -> str:
    from train import cpu_kind  # bench/train.py: the CPU and whether it has native bf16

    return f"{cpu_kind()[0]}, {os.cpu_count()} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--n", type=int, default=256, help="prompts per setting")
    ap.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"of: {', '.join(SETTINGS)}")
    ap.add_argument("--out", default="bench/results")
    ap.add_argument("--one", nargs="*", help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = ap.parse_args()
    if args.one is not None:
        print("RESULT " + json.dumps(one(args.model, args.n, args.one)))
        return
    results = {}
    for name in args.settings.split(","):
        converted = child(args.model, 0, SETTINGS[name])  # the conversion (first use), then a clean process
        results[name] = {**child(args.model, args.n, SETTINGS[name]), **converted}
        print(f"{name}: {results[name]['queries_per_s']:.2f} queries/s", flush=True)
    reference = results.get("transformers")
    lines = [f"Generator {args.model}, {args.n} demo prompts (HPO passages, default mix), greedy, on {cpu_line()}, "
             f"{date.today()}. `python bench/generate.py --n {args.n}`", "",
             "| backend | queries/s | x transformers | peak memory MB | answers identical to transformers | ran out of tokens | first-use conversion s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, r in results.items():
        same = (sum(a == b for a, b in zip(r["answers"], reference["answers"])) / len(r["answers"])
                if reference else float("nan"))
        unfinished = sum(not finished for _, finished in r["answers"]) / len(r["answers"])
        speedup = r["queries_per_s"] / reference["queries_per_s"] if reference else float("nan")
        lines.append(f"| {name} | {r['queries_per_s']:.2f} | {speedup:.2f} | {r['peak_rss_mb']:.0f} | {same:.1%} | "
                     f"{unfinished:.1%} | {r['convert_s']:.0f} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "generate.md").write_text("\n".join(lines) + "\n")
    (out / "generate.json").write_text(json.dumps({k: {m: v for m, v in r.items() if m != "answers"}
                                                   for k, r in results.items()}, indent=1))
    print("\n".join(lines))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(list(results), [r["queries_per_s"] for r in results.values()], color="#4c72b0")
    ax.set_ylabel("queries/s")
    ax.set_title(f"generation on {cpu_line()}", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "generate.png", dpi=110)


if __name__ == "__main__":
    main()
