"""How the encoder should read a passage: "title text" or "title. text" (the generator's prompts use the
latter). Base model, HPO **dev** queries, nDCG@10 per query, paired bootstrap over queries.

    python bench/passage_format.py [--model minilm-l6] [--batch-size 32]
"""

from __future__ import annotations

import argparse

import torch

from embedtune.encode import encode
from embedtune.evaluate import paired_bootstrap, trec_metrics
from embedtune.hpo import build_queries, load_terms
from embedtune.model import Encoder, ModelConfig
from embedtune.precision import autocast

FORMATS = {"title text": lambda title, text: f"{title} {text}", "title. text": lambda title, text: f"{title}. {text}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    _, terms = load_terms()
    queries, qrels = build_queries(terms)
    dev = qrels["dev"]
    text_of = {q["_id"]: q["text"] for q in queries}
    query_ids = sorted(dev)
    encoder = Encoder.load(ModelConfig(name=args.model))
    with autocast("auto"):
        query_emb = encode(encoder, [text_of[q] for q in query_ids], "query", args.batch_size, desc="queries")
        per_query = {}
        for name, render in FORMATS.items():
            passages = encode(encoder, [render(t.name, t.definition) for t in terms], "passage", args.batch_size,
                              desc=name)
            scores, rows = (query_emb @ passages.T).topk(100, dim=1)
            run = {q: {terms[int(r)].id: float(s) for s, r in zip(scores[n], rows[n])} for n, q in enumerate(query_ids)}
            per_query[name] = trec_metrics(run, {q: dev[q] for q in query_ids})
    base, other = per_query["title text"], per_query["title. text"]
    print(f"HPO dev, {len(query_ids):,} queries, {len(terms):,} passages, base {args.model}\n")
    print("| passage as the encoder reads it | nDCG@10 | R@100 |\n| --- | ---: | ---: |")
    for name, metrics in per_query.items():
        print(f"| {name} | {metrics['nDCG@10']:.4f} | {metrics['R@100']:.4f} |")
    ci = paired_bootstrap(base["per_query"], other["per_query"])
    print(f"\n'title. text' - 'title text': {ci['diff']:+.4f} [{ci['low']:+.4f}, {ci['high']:+.4f}]"
          f"{'' if ci['significant'] else ' (not significant)'}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
