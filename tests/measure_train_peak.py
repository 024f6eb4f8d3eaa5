"""The measured memory of a real training run on this CPU, for tests/test_memory_plan.py: run_training for
two steps (the second has AdamW's state, as every later one) on texts longer than the max lengths (every chunk
at its worst-case shape), and the peak resident set size above the process's size just before (imports done,
kernels warmed up). glibc is told (by the test, in the environment) to return freed blocks to the system
at once, so the peak is the peak of live memory, not of what malloc kept.

usage: python measure_train_peak.py OUT_DIR OVERRIDE...   prints {"baseline": bytes, "peak": bytes}
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    import peft  # noqa: F401  (imported before the baseline: what the run imports is not its memory)
    import torch
    from helpers import compose_config

    from embedtune.pipeline import train_job
    from embedtune.train import TrainData, run_training

    torch.set_num_threads(1)
    cfg = compose_config(*overrides)
    long_text = "the heart and the blood of the patient " * 80  # longer than any max length used
    n = 16
    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": [f"p{(i + k) % n}" for k in (1, 2, 3)]}
            for i in range(n)]
    data = TrainData(rows, {f"q{i}": f"{i} {long_text}" for i in range(n)},
                     {f"p{i}": f"{i} {long_text}" for i in range(n)}, cfg.train)
    layer = torch.nn.Linear(64, 64)
    layer(torch.randn(8, 64)).sum().backward()  # autograd and the matmul kernels loaded before the baseline
    baseline = rss()
    run_training(train_job(cfg), data, out)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(json.dumps({"baseline": baseline, "peak": int(max(m["train/memory_mb"] for m in logged) * 2 ** 20)}))


if __name__ == "__main__":
    main()
