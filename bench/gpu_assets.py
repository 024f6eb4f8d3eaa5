"""Write what bench/gpu_check.py needs on a GPU machine that has no network and no embedtune assets:

    python bench/gpu_assets.py .gpu

- minilm/: all-MiniLM-L6-v2's config + tokenizer (weights are drawn at random there: speed does not depend
  on their values, and the 90 MB file would not fit a 64 MiB transfer);
- smollm2/: SmolLM2-135M-Instruct's config + tokenizer with its chat template, taken from the packaged GGUF
  (weights random there too);
- hpo.json: HPO (query, passage) pairs and passages to write prompts for.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from transformers import AutoConfig, AutoTokenizer

sys.path.insert(0, str(Path(__file__).parent))
from train import hpo_pairs  # noqa: E402  (bench/train.py: the same pairs as the CPU benchmark)

from embedtune.assets import resolve_model  # noqa: E402
from embedtune.hpo import load_terms  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".gpu")
    out.mkdir(parents=True, exist_ok=True)
    minilm = resolve_model("minilm-l6").path
    AutoConfig.from_pretrained(minilm).save_pretrained(out / "minilm")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(out / "minilm")
    smol = resolve_model("smollm2-135m")
    AutoConfig.from_pretrained(smol.path, gguf_file=smol.gguf_file).save_pretrained(out / "smollm2")
    AutoTokenizer.from_pretrained(smol.path, gguf_file=smol.gguf_file).save_pretrained(out / "smollm2")
    _, terms = load_terms()
    passages = [{"title": t.name, "text": t.definition} for t in terms[1000:2024] if t.definition]
    (out / "hpo.json").write_text(json.dumps({"pairs": hpo_pairs(seed=0), "passages": passages}))
    print(f"wrote {out}: " + ", ".join(f"{p.name} {sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) / 2**20:.1f} MB"
                                       if p.is_dir() else f"{p.name} {p.stat().st_size / 2**20:.1f} MB"
                                       for p in sorted(out.iterdir())))


if __name__ == "__main__":
    main()
