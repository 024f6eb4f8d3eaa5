"""The GPU check of `embedtune score` (issue 16): a cross-encoder teacher's pairs/s on CUDA at a few batch sizes.

    python bench/gpu_assets.py .gpu                 # here: tokenizers and HPO pairs (no weights)
    python bench/gpu_check_score.py --assets .gpu   # there (about a minute on an H100-class GPU, estimate)
    python bench/gpu_check_score.py --assets .gpu --smoke   # a tiny version anywhere (CPU)

The teacher is cross-encoder shaped: BertForSequenceClassification with one label, MiniLM-L6's shape (the
ms-marco-MiniLM-L6 cross-encoders) and BERT-base's (12 x 768), random weights built from a config (speed does
not depend on their values), MiniLM's tokenizer. Pairs are HPO (query, passage) pairs, 256 tokens at most,
scored through embedtune's own CrossEncoderTeacher (length-sorted batches, bf16 autocast where native).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gpu_check import sync, table


def build_teacher(folder: Path, tokenizer_dir: Path, layers: int, hidden: int) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 64), intermediate_size=4 * hidden, num_labels=1)
    BertForSequenceClassification(config).save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    from embedtune.teacher import TeacherConfig, make_teacher

    ap = argparse.ArgumentParser()
    ap.add_argument("--assets", default=".gpu")
    ap.add_argument("--pairs", type=int, default=8192)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes and few pairs (runs on CPU)")
    a = ap.parse_args()
    assets = Path(a.assets)
    data = json.loads((assets / "hpo.json").read_text())
    pairs = data["pairs"]  # (HPO synonym, its term's title + definition)
    n = 64 if a.smoke else a.pairs
    queries = [pairs[i % len(pairs)][0] for i in range(n)]
    passages = [pairs[i % len(pairs)][1] for i in range(n)]
    shapes = [("tiny 2x64", 2, 64)] if a.smoke else [("MiniLM-L6 shape (6x384)", 6, 384), ("BERT-base shape (12x768)", 12, 768)]
    batches = [8, 32] if a.smoke else [32, 128, 512]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU (a smoke run on CPU)"
    print(f"torch {torch.__version__}, {gpu}; {n:,} HPO pairs, at most 256 tokens each", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, layers, hidden in shapes:
            folder = build_teacher(Path(tmp) / name.split()[0], assets / "minilm", layers, hidden)
            for batch in batches:
                teacher = make_teacher(TeacherConfig(kind="cross_encoder", model=str(folder), max_length=256,
                                                     batch_size=batch))
                teacher.score(queries[:batch], passages[:batch])  # warm-up (kernels, allocator)
                sync()
                started = time.time()
                scores = teacher.score(queries, passages)
                sync()
                seconds = time.time() - started
                peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
                assert len(scores) == n and all(s == s for s in scores)
                rows.append((name, batch, f"{n / seconds:,.0f}", f"{peak:.2f}"))
                del teacher
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
    print("\n## score: cross-encoder teacher on CUDA, bf16 autocast\n")
    print(table(("teacher", "batch size", "pairs/s", "peak GPU memory GB"), rows), flush=True)


if __name__ == "__main__":
    main()
