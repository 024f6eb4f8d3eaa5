"""teacher.py: each teacher kind scores pairs as its model does one pair at a time (batched by length, order
kept): a tiny random cross-encoder (one and two labels), a tiny bi-encoder, a tiny causal LM as a yes/no
judge, and an OpenAI-compatible server on 127.0.0.1 that answers with top logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import build_tiny_model, tiny_vocab
from helpers import ChatServer
from embedtune.generate.backends import BackendConfig
from embedtune.model import Encoder, ModelConfig
from embedtune.generate.answer import yes_no_probability
from embedtune.teacher import LLM_PROMPT, TeacherConfig, make_teacher, relevance

pytestmark = pytest.mark.usefixtures("torch_one_thread")

QUERIES = ["heart disease", "blood cell in the liver and the kidney", "a", "fever pain"]
PASSAGES = ["the heart of the gene is a protein", "blood", "river city mountain train apple bread music",
            "fever and pain in the brain of a cat"]


def cross_encoder_dir(folder, labels: int):
    from transformers import BertConfig, BertForSequenceClassification

    build_tiny_model(folder)
    config = BertConfig.from_pretrained(folder)
    config.num_labels = labels
    torch.manual_seed(labels)
    model = BertForSequenceClassification(config)
    with torch.no_grad():  # random init gives logits near 0: spread them so pairs differ clearly
        model.classifier.weight.mul_(200)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.mark.parametrize("labels", [1, 2])
def test_cross_encoder_scores_each_pair_as_the_model_does_alone(tmp_path, labels):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = cross_encoder_dir(tmp_path / "ce", labels)
    got = make_teacher(TeacherConfig(kind="cross_encoder", model=str(folder), batch_size=3, precision="fp32")).score(
        QUERIES, PASSAGES)
    model, tokenizer = AutoModelForSequenceClassification.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        alone = [model(**tokenizer(q, p, return_tensors="pt")).logits for q, p in zip(QUERIES, PASSAGES)]
    expected = [float(lg[0, 0]) if labels == 1 else float(lg[0, 1] - lg[0, 0]) for lg in alone]
    assert got == pytest.approx(expected, abs=1e-5)
    assert max(got) - min(got) > 1e-2  # spread out: an order mix-up would show  # distinct: an order mix-up would show


def test_relevance_of_several_labels_is_the_last_labels_log_odds():
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert float(relevance(logits)) == pytest.approx(2.0 - math.log(math.exp(0.0) + math.exp(1.0)))


def test_biencoder_scores_are_the_embedders_cosines(tiny_model_dir):
    cfg = TeacherConfig(kind="biencoder", model=str(tiny_model_dir), batch_size=2, precision="fp32")
    got = make_teacher(cfg).score(QUERIES + QUERIES[:1], PASSAGES + PASSAGES[1:2])  # a repeated query
    encoder = Encoder.load(ModelConfig(name=str(tiny_model_dir)))
    with torch.no_grad():
        q = encoder(encoder.tokenize(QUERIES + QUERIES[:1], "query"))
        p = encoder(encoder.tokenize(PASSAGES + PASSAGES[1:2], "passage"))
    assert got == pytest.approx((q * p).sum(-1).tolist(), abs=1e-5)


def yes_no_lm(folder):
    """A tiny random Llama whose WordPiece vocab has whole-word tokens for yes and no."""
    from transformers import BertTokenizerFast, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True)
    vocab = tiny_vocab() + ["yes", "no"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast.from_pretrained(str(folder), do_lower_case=True).save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(5)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    return folder, vocab.index("yes"), vocab.index("no")


def test_llm_teacher_is_p_yes_of_the_next_token_for_each_prompt_alone(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, yes, no = yes_no_lm(tmp_path / "lm")
    cfg = TeacherConfig(kind="llm", batch_size=3, llm=BackendConfig(model=str(folder), dtype="float32"))
    teacher = make_teacher(cfg)
    got = teacher.score(QUERIES, PASSAGES)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    expected = []
    for prompt in teacher.prompts(QUERIES, PASSAGES):  # no chat template: the completion text
        assert prompt.completion.startswith(LLM_PROMPT.split("{query}")[0])
        ids = tokenizer(prompt.completion, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            last = model(input_ids=ids).logits[0, -1].softmax(-1)
        expected.append(float(last[yes] / (last[yes] + last[no])))
    assert got == pytest.approx(expected, abs=1e-5)
    assert all(0 < g < 1 for g in got)


def test_yes_no_probability_reads_token_variants_and_is_nan_without_either():
    assert yes_no_probability({" Yes": math.log(0.3), "yes": math.log(0.1), "No": math.log(0.4), "maybe": 0.0}) == \
        pytest.approx(0.4 / 0.8)
    assert math.isnan(yes_no_probability({"maybe": -0.1}))


def logprob_choice(body: dict) -> dict:
    """One token with top logprobs: "yes" likely when the query's first word is in the passage."""
    text = body["messages"][-1]["content"]
    query = text.split("Query: ", 1)[1].split("\n", 1)[0]
    passage = text.split("Passage: ", 1)[1]
    p_yes = 0.8 if query.split()[0] in passage else 0.2
    top = [{"token": "Yes", "logprob": math.log(p_yes * 0.9)}, {"token": " no", "logprob": math.log((1 - p_yes) * 0.9)},
           {"token": "Maybe", "logprob": math.log(0.1)}]
    return {"message": {"role": "assistant", "content": "Yes"}, "finish_reason": "length",
            "logprobs": {"content": [{"token": "Yes", "logprob": top[0]["logprob"], "top_logprobs": top}]}}


def test_llm_teacher_over_an_openai_compatible_server_reads_top_logprobs():
    server = ChatServer(None, faults=[500], choice=logprob_choice)  # the 500 must be retried
    try:
        cfg = TeacherConfig(kind="llm", llm=BackendConfig(backend="openai", model="judge", api_base=server.url,
                                                          backoff_s=0.01, concurrency=2))
        got = make_teacher(cfg).score(QUERIES, PASSAGES)
    finally:
        server.close()
    expected = [0.8 if q.split()[0] in p else 0.2 for q, p in zip(QUERIES, PASSAGES)]
    assert got == pytest.approx(expected, abs=1e-9)
    assert len(server.requests) == len(QUERIES) + 1  # one retried after the 500
    assert all(r["body"]["logprobs"] is True and r["body"]["max_tokens"] == 1 and r["body"]["top_logprobs"] == 20
               for r in server.requests)


def test_a_teacher_without_its_model_or_with_an_unknown_kind_is_refused(tmp_path):
    from embedtune.errors import EmbedtuneError

    with pytest.raises(EmbedtuneError, match="teacher.kind=oracle"):
        make_teacher(TeacherConfig(kind="oracle"))
    with pytest.raises(EmbedtuneError, match="does not exist"):
        make_teacher(TeacherConfig(kind="cross_encoder", model=str(tmp_path / "missing")))
    with pytest.raises(EmbedtuneError, match="teacher.model=.*sequence-classification"):  # a folder without weights
        (tmp_path / "empty").mkdir()
        make_teacher(TeacherConfig(kind="cross_encoder", model=str(tmp_path / "empty")))
