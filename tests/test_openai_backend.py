"""The openai backend against a real HTTP server on 127.0.0.1 that answers with a real (tiny) model."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import write_passages

from embedtune.errors import EmbedtuneError
from embedtune.generate.backends import BackendConfig, TransformersBackend
from embedtune.generate.prompts import Prompt
from embedtune.generate.runner import GeneratorConfig, read_queries, run_generate

SECRET = "sk-test-0123456789abcdef"


class ChatServer:
    """POST /v1/chat/completions -> the tiny LM's greedy completion; `faults` are served first, in order:
    an HTTP status (429, 500), "malformed" JSON, a "truncated" body, or "slow" (past the client timeout)."""

    def __init__(self, model_dir, faults=(), answer=None):
        self.backend = TransformersBackend(BackendConfig(model=str(model_dir), dtype="float32", batch_size=1))
        self.answer = answer  # optional: messages -> reply text, in place of the model (a scripted judge)
        self.faults, self.requests, self.lock = list(faults), [], threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"auth": self.headers.get("Authorization"), "body": body})
                    fault = server.faults.pop(0) if server.faults else None
                if isinstance(fault, int):
                    return self.reply(fault, b'{"error": "busy"}')
                if fault == "malformed":
                    return self.reply(200, b'{"choices": [')
                if fault == "truncated":
                    return self.reply(200, b'{"choices": [{"message": {"content": "x"}}]}', length=200)
                if fault == "slow":
                    time.sleep(1.5)
                with server.lock:
                    if server.answer is not None:
                        text, finish = server.answer(body["messages"]), "stop"
                    else:
                        prompt = Prompt(body["messages"], "", body["max_tokens"])  # the server's chat template
                        reply = server.backend.generate([prompt])[0]
                        text, finish = reply.text, "stop" if reply.finished else "length"
                answer = {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}]}
                self.reply(200, json.dumps(answer).encode())

            def reply(self, status, payload, length=None):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length or len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def passage_in(messages) -> str:
    """The passage of the last user turn of a generation prompt ("Text: <passage>\n\n<instruction>")."""
    return messages[-1]["content"].split("Text: ", 1)[-1].split("\n\n", 1)[0]


def scripted_run(model_dir, tmp_path, answer, key: str, *overrides: str):
    """`embedtune run debug=tiny` in tmp_path with the openai backend pointed at a ChatServer that answers with
    `answer(messages)`; the API key comes from EMBEDTUNE_KEY. Returns (completed process, server)."""
    import subprocess
    import sys

    server = ChatServer(model_dir, answer=answer)
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "2",
           "EMBEDTUNE_KEY": key}
    try:
        result = subprocess.run(
            [sys.executable, "-m", "embedtune.cli", "run", "debug=tiny", f"paths.runs={tmp_path / 'runs'}",
             "generator.backend=openai", "generator.model=scripted", f"generator.api_base={server.url}",
             "generator.api_key_env=EMBEDTUNE_KEY", *overrides],
            cwd=tmp_path, capture_output=True, text=True, timeout=900, env=env)
    finally:
        server.close()
    return result, server


@pytest.fixture
def passages_dir(tmp_path):
    return write_passages(tmp_path / "passages", 6)


@pytest.fixture(scope="module")
def chat_lm_dir(tiny_lm_dir, tmp_path_factory):
    """The tiny LM with a chat template, as served models have: the server and the local backend then read
    the same chat messages the same way."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("chat_lm") / "model"
    shutil.copytree(tiny_lm_dir, folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant:{% endif %}")
    tokenizer.save_pretrained(str(folder))
    return folder


def openai_config(server, **kw):
    defaults = dict(backend="openai", model="tiny", api_base=server.url, max_new_tokens=4, max_passages=None,
                    api_key_env="EMBEDTUNE_TEST_KEY", concurrency=3, backoff_s=0.01, backoff_max_s=0.05,
                    timeout_s=1.0)
    defaults.update(kw)
    return GeneratorConfig(**defaults)


def run(cfg, passages_dir, out):
    return run_generate(cfg, passages_dir, out, json.loads((passages_dir / "manifest.json").read_text()))


def rows(folder):
    return sorted((q["passage_id"], q["query_id"], q["text"]) for q in read_queries(folder))


def test_same_queries_as_the_local_backend_and_key_only_in_the_header(chat_lm_dir, passages_dir, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setenv("EMBEDTUNE_TEST_KEY", SECRET)
    server = ChatServer(chat_lm_dir)
    try:
        manifest = run(openai_config(server), passages_dir, tmp_path / "remote")
    finally:
        server.close()
    local = GeneratorConfig(model=str(chat_lm_dir), dtype="float32", max_new_tokens=4, batch_size=1,
                            max_passages=None)
    run(local, passages_dir, tmp_path / "local")
    assert manifest["counts"]["queries"] == 6
    assert rows(tmp_path / "remote") == rows(tmp_path / "local")
    assert {r["auth"] for r in server.requests} == {f"Bearer {SECRET}"}
    body = server.requests[0]["body"]
    assert body["stop"] == ["\n"] and body["max_tokens"] == 4  # the type's length, capped by max_new_tokens
    assert [m["role"] for m in body["messages"]] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    for path in (tmp_path / "remote").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_retries_through_429_500_malformed_truncated_and_slow_answers(chat_lm_dir, passages_dir, tmp_path):
    server = ChatServer(chat_lm_dir, faults=[429, 500, "malformed", "truncated", "slow", 503])
    try:
        manifest = run(openai_config(server), passages_dir, tmp_path / "q")
    finally:
        server.close()
    assert manifest["counts"]["queries"] == 6 and "empty" not in manifest["counts"]["dropped"]
    assert len(server.requests) == 6 + 6  # every fault cost one retry


def test_gives_up_with_a_clear_error_and_keeps_finished_shards(tiny_lm_dir, passages_dir, tmp_path):
    out = tmp_path / "q"
    server = ChatServer(tiny_lm_dir)
    try:
        first = openai_config(server)
        first.shard.index, first.shard.count = 0, 2
        run(first, passages_dir, out)
        server.faults = [500] * 100
        second = openai_config(server, max_retries=2)
        second.shard.index, second.shard.count = 1, 2
        with pytest.raises(EmbedtuneError, match=r"shard-1-of-2.*gave up after 3 attempts \(HTTP 500\)"):
            run(second, passages_dir, out)
    finally:
        server.close()
    assert (out / "shard-0-of-2.parquet").exists() and (out / "shard-0-of-2.done").exists()
    assert not (out / "shard-1-of-2.parquet").exists()


def test_missing_api_base_is_named():
    from embedtune.generate.backends import make_backend

    with pytest.raises(EmbedtuneError, match="api_base"):
        make_backend(BackendConfig(backend="openai"))


def test_vllm_missing_is_a_clear_error():
    """vllm is not installed on CPU machines; the message must say what to do."""
    from embedtune.generate.backends import make_backend

    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    with pytest.raises(EmbedtuneError, match="pip install vllm"):
        make_backend(BackendConfig(backend="vllm"))


def test_llm_judge_scores_through_any_backend(tiny_lm_dir):
    from embedtune.judge import JudgeConfig, judge_queries, parse_score

    def judge(messages):
        prompt = messages[-1]["content"]
        query = prompt.split("Query: ", 1)[1].split("\n", 1)[0]
        return {"enlarged heart": "4", "big heart": "Score: 5/5", "kidney stones": "1"}.get(query, "no idea")

    server = ChatServer(tiny_lm_dir, answer=judge)
    try:
        cfg = JudgeConfig(backend="openai", model="judge", api_base=server.url, backoff_s=0.01)
        queries = [{"passage_id": "p", "text": t} for t in ("enlarged heart", "big heart", "kidney stones", "odd")]
        scores = judge_queries(queries, {"p": "Cardiomegaly. An enlarged heart."}, cfg)
    finally:
        server.close()
    assert scores == [4, 5, 1, 0]
    assert "Cardiomegaly" in server.requests[0]["body"]["messages"][0]["content"]
    assert parse_score("I'd say 3.") == 3 and parse_score("") == 0 and parse_score("9") == 0
