"""eval.baselines: endpoints (embedtune serve, any OpenAI-compatible server) and local sentence-transformers
models as report rows, their vectors cached so nothing is sent twice, the verdict at the top of the report;
and, on the session's demo run, `embedtune serve` of the tuned and base models evaluated as endpoints give
eval's own tuned and base rows."""

from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from helpers import embedtune, send_json, serving

from embedtune.baselines import BaselineConfig, LocalBaseline, baseline_cache, check_served_model, spend_line
from embedtune.beir import RetrievalSet
from embedtune.endpoint import EndpointEncoder
from embedtune.errors import EmbedtuneError
from embedtune.evaluate import EvalConfig, evaluate_set, verdicts
from embedtune.validate import baseline_problems

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TEXTS = ["the heart of a cat", "blue river", "protein and gene in the cell of the liver", "fish"]


def offline(model_dir, texts, kind) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_dir), device="cpu").encode(texts, prompt_name=kind, convert_to_numpy=True)


def endpoint(url: str, **settings) -> BaselineConfig:
    return BaselineConfig(**{"name": "served", "url": url, "batch_size": 3, "max_retries": 3, "backoff_s": 0.01,
                             **settings})


def test_an_endpoint_baseline_embeds_as_the_server_does_with_input_type_or_client_prompts(served_model_dir):
    with serving(served_model_dir) as server:
        served = EndpointEncoder(endpoint(server.url, input_type=True))
        texts = TEXTS + ["the gene and the heart " * 20]  # over the 48-token limit: cut as offline (truncate=END)
        for kind in ("query", "passage"):
            got = served.encode_texts(texts, kind).numpy()
            assert np.allclose(got, offline(served_model_dir, texts, kind), atol=1e-5), kind
        assert served.texts_sent == 2 * len(texts) and served.tokens_sent > 2 * len(texts)
        assert served.served_models == {server.service.folder.model_id}


class ScriptedEmbeddings:
    """POST /v1/embeddings answered from a script first (an HTTP status, "shuffled": the right vectors in
    reversed order, "short": one vector too few), then with vector [len(text), index of the text]."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                step = outer.script.pop(0) if outer.script else "ok"
                if isinstance(step, int):
                    return self.reply(step, {"error": {"message": "busy"}})
                rows = [{"index": i, "embedding": [float(len(t)), float(i)]} for i, t in enumerate(body["input"])]
                if step == "shuffled":
                    rows.reverse()
                if step == "short":
                    rows = rows[:-1]
                self.reply(200, {"data": rows, "model": "scripted-1", "usage": {"prompt_tokens": 10 * len(rows)}})

            def reply(self, status, payload):
                send_json(self, status, json.dumps(payload).encode())

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_endpoint_requests_retry_reorder_by_index_and_carry_the_key(monkeypatch):
    monkeypatch.setenv("BASELINE_KEY", "sk-baseline-123")
    server = ScriptedEmbeddings([429, 503, "short", "shuffled"])
    try:
        encoder = EndpointEncoder(endpoint(server.url, batch_size=8, concurrency=1, api_key_env="BASELINE_KEY",
                                           model="text-embedding-3-small", dimensions=2, normalize=False))
        got = encoder.encode_texts(["a", "bbb", "cc"], "query").numpy()
        assert got.tolist() == [[1.0, 0.0], [3.0, 1.0], [2.0, 2.0]]  # a shuffled answer put back by index
        assert len(server.requests) == 4  # 429, 503, a body short of a vector: each retried; then the answer
        body = server.requests[-1]["body"]
        assert body == {"input": ["a", "bbb", "cc"], "encoding_format": "float", "model": "text-embedding-3-small",
                        "dimensions": 2}
        assert all(r["auth"] == "Bearer sk-baseline-123" for r in server.requests)
        assert encoder.tokens_sent == 30 and encoder.served_models == {"scripted-1"}
        server.script = [400]
        with pytest.raises(EmbedtuneError, match="HTTP 400"):
            encoder.encode_texts(["a"], "query")
    finally:
        server.close()


def test_prompts_go_in_front_of_the_texts_for_an_api_that_reads_no_input_type():
    server = ScriptedEmbeddings([])
    try:
        encoder = EndpointEncoder(endpoint(server.url, query_prompt="query: ", passage_prompt="passage: "))
        encoder.encode_texts(["fish"], "query")
        encoder.encode_texts(["river"], "passage")
        assert [r["body"]["input"] for r in server.requests] == [["query: fish"], ["passage: river"]]
        assert all("input_type" not in r["body"] and "model" not in r["body"] for r in server.requests)
    finally:
        server.close()


def test_vectors_are_cached_so_a_second_evaluation_sends_nothing(served_model_dir, tmp_path):
    corpus = {f"d{i}": t for i, t in enumerate(TEXTS)}
    data = RetrievalSet("set", corpus, {"q0": "cat heart", "q1": "river"}, {"q0": {"d0": 1}, "q1": {"d1": 1}})
    with serving(served_model_dir) as server:
        cfg = endpoint(server.url, input_type=True, price_per_million_tokens=0.02)
        first = EndpointEncoder(cfg)
        scores = evaluate_set(first, baseline_cache(tmp_path, cfg), data, EvalConfig(), "served")
        assert first.texts_sent == len(corpus) + 2
        spent = spend_line(cfg, first)
        assert spent["cost_usd"] == pytest.approx(first.tokens_sent * 0.02 / 1e6) and spent["tokens_sent"] > 0
        again = EndpointEncoder(cfg)
        assert evaluate_set(again, baseline_cache(tmp_path, cfg), data, EvalConfig(), "served") == scores
        assert again.texts_sent == 0 and again.tokens_sent == 0
        renamed = EndpointEncoder(endpoint(server.url, input_type=True, name="other label"))
        evaluate_set(renamed, baseline_cache(tmp_path, renamed.cfg), data, EvalConfig(), "x")
        assert renamed.texts_sent == 0  # the cache is keyed by what makes the vectors, not by the row's name
        check_served_model(cfg, baseline_cache(tmp_path, cfg), first)  # records the served model's id
        first.served_models = {"emb-0000000000000000"}
        with pytest.raises(EmbedtuneError, match="the model behind the endpoint changed"):
            check_served_model(cfg, baseline_cache(tmp_path, cfg), first)


def test_a_local_baseline_uses_the_models_own_prompts(served_model_dir):
    local = LocalBaseline(BaselineConfig(name="local", model=str(served_model_dir)))
    assert local.prompts == {"query": "query: ", "passage": "passage: "}
    got = local.encode_texts(TEXTS, "passage")
    assert torch.allclose(got, torch.from_numpy(offline(served_model_dir, TEXTS, "passage")), atol=1e-5)
    plain = LocalBaseline(BaselineConfig(name="plain", model=str(served_model_dir), query_prompt=""))
    assert plain.prompts["query"] == ""


def test_verdicts_name_the_best_model_with_its_interval():
    def row(scores):
        return {"nDCG@10": float(np.mean(scores)), "per_query": {f"q{i}": s for i, s in enumerate(scores)}}
    rng = np.random.default_rng(0)
    base = rng.uniform(0.2, 0.6, 200)
    results = {"hpo (test, human)": {"base": row(base), "tuned": row(base + 0.1), "served": row(base + 0.1),
                                     "api": row(base + 0.02)},
               "synthetic (held-out)": {"base": row(base), "tuned": row(base + 0.3)},
               "faq (human)": {"base": row(base), "api": row(base + rng.normal(0, 0.05, 200) * 0.1)}}
    lines = verdicts(results)
    assert len(lines) == 2  # human sets only, when there are any
    assert lines[0].startswith("hpo (test, human): tuned is best (served: the same score on every query), nDCG@10 ")
    assert "over api" in lines[0]  # not over its own served copy
    assert "+0.080 [+0.080, +0.080]" in lines[0]
    assert "are tied within the noise" in lines[1]
    assert verdicts({"synthetic (held-out)": results["synthetic (held-out)"]})[0].startswith(
        "synthetic (held-out): tuned is best")


def test_baseline_settings_are_checked_before_anything_runs():
    found = baseline_problems([BaselineConfig(name="tuned", model="m"), BaselineConfig(name="x"),
                               BaselineConfig(name="y", url="127.0.0.1:8000"), BaselineConfig(name="y", model="m",
                                                                                               batch_size=0)])
    text = "\n".join(found)
    assert "eval.baselines[0].name='tuned'" in text and "eval.baselines[1] (x) needs a model" in text
    assert "eval.baselines[2].url=127.0.0.1:8000 must start with http" in text
    assert "eval.baselines[3].name='y'" in text and "eval.baselines[3] (y): batch_size" in text


@pytest.mark.slow
def test_serve_of_the_tuned_and_base_models_as_endpoints_gives_evals_own_rows(demo_run, tmp_path):
    """The demo run's exported model and the base MiniLM, each behind `embedtune serve` (ONNX and torch), as
    endpoint baselines beside MiniLM run locally: the served tuned model scores the tuned row (nDCG@10 to 1e-4),
    the served base model the base row; a second evaluation sends nothing; the report opens with its verdict."""
    from embedtune.assets import resolve_model

    copy = tmp_path / "e2e"
    shutil.copytree(demo_run.folder, copy, copy_function=os.link)  # hard links: eval replaces files, never edits
    args = [*demo_run.stage_args[:2], f"paths.runs={tmp_path}", "eval.precision=fp32"]
    exported = embedtune("export", *args, cwd=tmp_path)  # skipped when model/ is the final checkpoint's already
    assert exported.returncode == 0, exported.stderr[-2000:]
    with serving(copy / "model", backend="onnx") as tuned, serving(resolve_model("minilm-l6").path, backend="torch",
                                                                 precision="fp32") as base:
        baselines = (f"eval.baselines=[{{name: served-tuned, url: '{tuned.url}', input_type: true}}, "
                     f"{{name: served-base, url: '{base.url}', input_type: true, price_per_million_tokens: 0.02}}, "
                     "{name: minilm-here, model: minilm-l6}]")
        result = embedtune("eval", *args, baselines, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        again = embedtune("eval", *args, baselines, "force=true", cwd=tmp_path)
        assert again.returncode == 0, again.stderr[-3000:]
    report = json.loads((copy / "eval" / "report.json").read_text())
    for name, rows in report.items():
        if name in ("comparisons", "summary"):
            continue
        assert set(rows) == {"base", "tuned", "bm25", "served-tuned", "served-base", "minilm-here"}
        for served, own in (("served-tuned", "tuned"), ("served-base", "base"), ("minilm-here", "base")):
            assert rows[served]["nDCG@10"] == pytest.approx(rows[own]["nDCG@10"], abs=1e-4), (name, served)
            assert rows[served]["R@100"] == pytest.approx(rows[own]["R@100"], abs=1e-4), (name, served)
    spend = {r["baseline"]: r for r in report["summary"]["baselines_spend"]}
    assert spend["served-base"]["texts_sent"] == 0 and spend["served-base"]["cost_usd"] == 0.0  # all cached
    assert spend["served-tuned"]["served_models"] == [] and spend["minilm-here"]["where"] == "local"
    sent_first = next(line for line in result.stdout.splitlines() if line.startswith("| served-base | http://"))
    texts, tokens, cost = [cell.strip() for cell in sent_first.split("|")[3:6]]
    assert int(texts.replace(",", "")) > 0 and int(tokens.replace(",", "")) > 0 and cost.startswith("$")
    md = (copy / "eval" / "report.md").read_text().split("\n\n")
    assert md[1].startswith("**hpo (test, human): ")  # the verdict right below the heading
    assert "| hpo (test, human) | served-tuned |" in "\n\n".join(md) and "tuned - served-base" in "\n\n".join(md)
