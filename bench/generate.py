"""Synthetic-query throughput of the default generator on this machine: batch size, the cached few-shot start,
and (when its prebuilt wheel is installed) llama.cpp through xllamacpp on the same prompts.

    python bench/generate.py [--model smollm2-135m] [--n 256] [--batch-sizes 16,32,64] [--xllamacpp]

Prompts are the demo's: HPO passages, the default query-type mix (keyword, question and claim, one per passage).
Prints queries/s per setting as a table (model loading excluded).
"""

import argparse
import json
import time

from embedtune.generate.backends import BackendConfig, TransformersBackend
from embedtune.generate.prompts import passage_for_prompt, render
from embedtune.generate.runner import GeneratorConfig, query_types
from embedtune.hpo import load_terms


def prompts_for(n: int):
    _, terms = load_terms()
    cfg = GeneratorConfig()
    cfg.prompt.domain = "human phenotypes (clinical signs, symptoms and abnormalities)"
    chosen = terms[1000:1000 + n]
    return [render(query_types(t.id, cfg)[0], passage_for_prompt(t.name, t.definition, cfg.prompt.passage_max_chars),
                   cfg.prompt, cfg.max_new_tokens) for t in chosen]


def timed(backend, prompts) -> float:
    started = time.perf_counter()
    backend.generate(prompts)
    return len(prompts) / (time.perf_counter() - started)


def xllamacpp_rate(model: str, prompts, parallel: int) -> float:
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
        list(pool.map(ask, prompts))
    return len(prompts) / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--n", type=int, default=256, help="prompts per setting")
    ap.add_argument("--batch-sizes", default="16,32,64")
    ap.add_argument("--xllamacpp", action="store_true", help="also time llama.cpp (pip install xllamacpp)")
    args = ap.parse_args()
    prompts = prompts_for(args.n)
    backend = TransformersBackend(BackendConfig(model=args.model, dtype=args.dtype))
    backend.generate(prompts[:4])  # warm-up
    rows = []
    for cached in (True, False):
        for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
            backend.cfg.batch_size, backend.cfg.prefix_cache = batch_size, cached
            rows.append((f"transformers {args.dtype}", batch_size, "yes" if cached else "no", timed(backend, prompts)))
    if args.xllamacpp:
        for parallel in (4, 8):
            rows.append(("llama.cpp (xllamacpp), GGUF as packaged", parallel, "per slot",
                         xllamacpp_rate(args.model, prompts, parallel)))
    print(f"\n{args.model}, {len(prompts)} prompts (default mix), up to {prompts[0].max_new_tokens} new tokens\n")
    print("| backend | batch (slots) | few-shot start cached | queries/s |\n| --- | ---: | --- | ---: |")
    for name, batch, cached, rate in rows:
        print(f"| {name} | {batch} | {cached} | {rate:.2f} |")
    print(json.dumps([{"backend": r[0], "batch": r[1], "cached": r[2], "queries_per_s": round(r[3], 2)} for r in rows]))


if __name__ == "__main__":
    main()
