"""Encoding throughput of the packaged MiniLM on HPO passages: fp32 vs bf16 autocast, several batch sizes.

    python bench/encode.py [--n 2000]

Prints a table (passages/s and the largest cosine distance of bf16 from fp32 embeddings). This is the
measurement behind eval.precision=auto: bf16 autocast where the CPU has avx512_bf16/AMX (or on a GPU).
"""

import argparse
import time

import torch

from embedtune.encode import encode
from embedtune.hpo import load_terms
from embedtune.model import Encoder, ModelConfig, passage_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000, help="passages to encode")
    args = ap.parse_args()
    _, terms = load_terms()
    texts = [passage_text(t.name, t.definition) for t in terms[:args.n]]
    encoder = Encoder.load(ModelConfig())
    encode(encoder, texts[:64], "passage")  # warm-up
    rows, reference = [], None
    for precision in ("fp32", "bf16"):
        for batch_size in (32, 128, 512):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                started = time.perf_counter()
                emb = encode(encoder, texts, "passage", batch_size)
                seconds = time.perf_counter() - started
            if reference is None:
                reference = emb
            worst = float(1 - (emb * reference).sum(-1).min())
            rows.append((precision, batch_size, len(texts) / seconds, worst))
    print(f"MiniLM-L6, {len(texts)} HPO passages, {torch.get_num_threads()} threads\n")
    print("| precision | batch | passages/s | max cosine distance to fp32 |")
    print("| --- | ---: | ---: | ---: |")
    for precision, batch_size, rate, worst in rows:
        print(f"| {precision} | {batch_size} | {rate:,.0f} | {worst:.1e} |")


if __name__ == "__main__":
    main()
