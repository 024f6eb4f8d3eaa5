"""Synthetic-query throughput of the transformers backend with the default generator, by batch size.

    python bench/generate.py [--model smollm2-135m] [--n 64] [--batch-sizes 1,8,16,32]

Prompts are the demo's (keyword template, HPO passages). Prints queries/s and the speed-up over
one-at-a-time generation as a table. (The vllm backend needs a GPU; the openai backend's speed is the server's.)
"""

import argparse
import time

from embedtune.generate.backends import BackendConfig, TransformersBackend
from embedtune.generate.prompts import PromptConfig, render
from embedtune.hpo import load_terms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--n", type=int, default=64, help="prompts per batch size")
    ap.add_argument("--batch-sizes", default="1,8,16,32")
    args = ap.parse_args()
    _, terms = load_terms()
    prompt_cfg = PromptConfig(domain="human phenotypes (clinical signs, symptoms and abnormalities)")
    backend = TransformersBackend(BackendConfig(model=args.model, dtype=args.dtype))
    prompts = [backend.format(render("keyword", t.name, t.definition, prompt_cfg)) for t in terms[1000:1000 + args.n]]
    backend.generate(prompts[:2])  # warm-up
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        backend.cfg.batch_size = batch_size
        started = time.perf_counter()
        backend.generate(prompts)
        rows.append((batch_size, len(prompts) / (time.perf_counter() - started)))
    print(f"\n{args.model} ({args.dtype}), transformers backend, {len(prompts)} prompts, "
          f"max_new_tokens={backend.cfg.max_new_tokens}\n")
    print("| batch size | queries/s | vs batch 1 |")
    print("| ---: | ---: | ---: |")
    for batch_size, rate in rows:
        print(f"| {batch_size} | {rate:.2f} | {rate / rows[0][1]:.1f}x |")


if __name__ == "__main__":
    main()
