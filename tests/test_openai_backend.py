"""The openai backend against a real HTTP server on 127.0.0.1 that answers with a real (tiny) model."""

import json

import pytest
from helpers import ChatServer, write_passages

from embedtune.errors import EmbedtuneError
from embedtune.generate.backends import BackendConfig
from embedtune.generate.runner import GeneratorConfig, read_queries, run_generate

SECRET = "sk-test-0123456789abcdef"


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
