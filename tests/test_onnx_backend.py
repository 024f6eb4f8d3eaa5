"""generator.backend=onnx: a tiny random Llama converted by onnxruntime-genai's model builder, against the
transformers backend on the same prompts."""

from __future__ import annotations

import numpy as np
import pytest

from embedtune.errors import EmbedtuneError
from embedtune.generate.backends import BackendConfig, TransformersBackend, make_backend
from embedtune.generate.decoding import banned_tokens
from embedtune.generate.onnx_backend import choose, conversion_target, converted_folder
from embedtune.generate.prompts import PromptConfig, render
from embedtune.generate.runner import GeneratorConfig, check_generator

pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.slow  # the model builder runs in a process of its own

PASSAGES = [("the heart " * n + "and the blood").strip() for n in (1, 7, 3, 12, 5, 2)]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """Converted models go to a cache of the module's own (EMBEDTUNE_CACHE), never the user's."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EMBEDTUNE_CACHE", str(folder))
        yield folder


def prompts(max_new_tokens: int = 6):
    return [render(kind, p, PromptConfig(), max_new_tokens=max_new_tokens)
            for p in PASSAGES for kind in ("keyword", "question")]


def test_fp32_writes_the_answers_transformers_writes_in_fp32(tiny_lm_dir, model_cache):
    """Greedy decoding through the converted model, with the shared few-shot start computed once and every
    prompt rewound to it, gives the transformers backend's answers (text and whether the model ended them)."""
    onnx = make_backend(BackendConfig(backend="onnx", model=str(tiny_lm_dir)))
    torch_backend = TransformersBackend(BackendConfig(model=str(tiny_lm_dir), dtype="float32", batch_size=4))
    asked = prompts()
    got, expected = onnx.generate(asked), torch_backend.generate(asked)
    assert got == expected
    assert any(a.text for a in got) and any(not a.finished for a in got)
    assert onnx.token_ids(asked) == torch_backend.token_ids(asked)


def test_the_conversion_is_made_once_and_keyed_by_weights_and_precision(tiny_lm_dir, model_cache, monkeypatch, tmp_path):
    first = converted_folder(str(tiny_lm_dir), "fp32")
    assert first.parent == model_cache / "models" / "onnx" and (first / "genai_config.json").exists()

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")
    monkeypatch.setattr("embedtune.generate.onnx_backend.subprocess.run", no_second_conversion)
    assert converted_folder(str(tiny_lm_dir), "fp32") == first
    monkeypatch.undo()
    assert conversion_target(str(tiny_lm_dir), "int8") != first  # another precision, another folder

    import shutil
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other"
    shutil.copytree(tiny_lm_dir, other)
    weights = load_file(other / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1
    save_file(weights, other / "model.safetensors", metadata={"format": "pt"})
    assert conversion_target(str(other), "fp32") != first  # other weights, another folder
    leftovers = [p.name for p in (model_cache / "models" / "onnx").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_sampled_answers_follow_the_seed_and_int8_runs(tiny_lm_dir, model_cache):
    sampled = make_backend(BackendConfig(backend="onnx", model=str(tiny_lm_dir), temperature=1.0, top_p=1.0))
    asked = prompts(max_new_tokens=8)
    once, again, other = sampled.generate(asked, seed=1), sampled.generate(asked, seed=1), sampled.generate(asked, seed=2)
    assert once == again
    assert once != other
    int8 = make_backend(BackendConfig(backend="onnx", model=str(tiny_lm_dir), onnx_precision="int8"))
    assert len(int8.generate(asked[:2])) == 2


def test_greedy_nucleus_and_no_repeat_choices():
    logits = np.array([0.0, 3.0, 1.0, -2.0])
    rng = np.random.default_rng(0)
    assert choose(logits, 0.0, 0.95, rng) == 1
    assert {choose(logits, 1.0, 0.5, rng) for _ in range(50)} == {1}  # the nucleus holds only the top token
    assert {choose(logits, 5.0, 1.0, rng) for _ in range(200)} == {0, 1, 2, 3}
    assert banned_tokens([5, 6, 7, 5, 6]) == [7]  # "5 6 7" again is banned, the prompt is not looked at
    assert banned_tokens([5, 6]) == []


def test_an_encoder_or_a_bad_precision_is_named(tiny_model_dir, model_cache):
    with pytest.raises(EmbedtuneError, match="onnx_precision=int3"):
        check_generator(GeneratorConfig(backend="onnx", onnx_precision="int3"))
    with pytest.raises(EmbedtuneError, match="generator.backend=tensorrt"):
        check_generator(GeneratorConfig(backend="tensorrt"))
    with pytest.raises(EmbedtuneError, match=f"converting generator '{tiny_model_dir}'"):
        converted_folder(str(tiny_model_dir), "fp32")  # a BERT encoder: the builder has no decoder to export


def test_the_llm_teacher_reads_the_same_p_yes_through_onnx(tmp_path, model_cache):
    from test_teacher import PASSAGES as TEACHER_PASSAGES, QUERIES, yes_no_lm

    from embedtune.teacher import TeacherConfig, make_teacher

    folder, _, _ = yes_no_lm(tmp_path / "lm")
    by_torch = make_teacher(TeacherConfig(kind="llm", llm=BackendConfig(model=str(folder), dtype="float32")))
    by_onnx = make_teacher(TeacherConfig(kind="llm", llm=BackendConfig(backend="onnx", model=str(folder))))
    expected = by_torch.score(QUERIES, TEACHER_PASSAGES)
    assert by_onnx.score(QUERIES, TEACHER_PASSAGES) == pytest.approx(expected, abs=1e-4)


def test_an_encoder_decoder_or_a_gpu_is_refused_before_any_conversion(tiny_model_dir, tmp_path, model_cache):
    import shutil

    from transformers import T5Config

    t5 = tmp_path / "t5"
    shutil.copytree(tiny_model_dir, t5)
    T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2).save_pretrained(t5)
    before = sorted((model_cache / "models").rglob("*")) if (model_cache / "models").exists() else []
    with pytest.raises(EmbedtuneError, match="encoder-decoder"):
        make_backend(BackendConfig(backend="onnx", model=str(t5)))
    with pytest.raises(EmbedtuneError, match="runs on the CPU"):
        make_backend(BackendConfig(backend="onnx", model=str(t5), device="cuda"))
    after = sorted((model_cache / "models").rglob("*")) if (model_cache / "models").exists() else []
    assert after == before  # nothing converted
