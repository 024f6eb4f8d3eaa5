"""Extraction against people: precision and recall of the query extractor on the person-labelled answers in
tests/data (real answers of the default generator; hand-written hard cases), written to extraction.md.

  python bench/extraction.py --out bench/results [-v: list the disagreements]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from embedtune.generate.extraction_check import NOT_EXTRACTION, agreement

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("-v", action="store_true")
    args = parser.parse_args()
    rows = [("real answers (420, default generator on HPO)", agreement(DATA / "generator_outputs.jsonl")),
            ("real answers, without drops for query quality (off_topic)",
             agreement(DATA / "generator_outputs.jsonl", skip_reasons=NOT_EXTRACTION)),
            ("hard cases (71: abbreviations, lists, units, code, quotes, Chinese, Japanese, German)",
             agreement(DATA / "extraction_cases.jsonl"))]
    lines = ["| labelled set | precision | recall | kept by extractor | kept by person | same query |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {name} | {a.precision:.3f} | {a.recall:.3f} | {a.kept_by_extractor} | {a.kept_by_person} | {a.both} |"
              for name, a in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "extraction.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    if args.v:
        for name, a in rows:
            print(f"\n{name}:\n  " + "\n  ".join(a.disagreements))


if __name__ == "__main__":
    main()
