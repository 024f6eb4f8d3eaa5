"""The CLI as users meet it: Hydra help, overrides, and clear one-line errors for bad input. Config errors
are checked in-process through Hydra's compose API; a few subprocess tests show the CLI prints them cleanly
and writes nothing first."""

import json
from pathlib import Path

import pytest
from helpers import assert_clean_error, compose_config, embedtune
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from embedtune import pipeline
from embedtune.errors import EmbedtuneError
from embedtune.validate import check_config


@pytest.mark.slow
def test_usage_lists_stages(tmp_path):
    result = embedtune(cwd=tmp_path)
    assert result.returncode == 2
    for stage in ("prepare", "generate", "filter", "mine", "train", "eval", "export", "run"):
        assert f"  {stage} " in result.stderr


@pytest.mark.slow
def test_stage_help_lists_config_groups(tmp_path):
    result = embedtune("train", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for group in ("corpus: ", "generator: ", "peft: lora, none", "logger: none, wandb", "debug: tiny"):
        assert group in result.stdout


def test_unknown_config_key_is_named():
    with pytest.raises(ConfigCompositionException, match="learning_rate"):
        compose_config("train.learning_rate=1")


def test_wrong_type_is_named():
    with pytest.raises(ConfigCompositionException, match="batch_size") as raised:
        compose_config("train.batch_size=many")
    assert isinstance(raised.value.__cause__, ValidationError)  # "... could not be converted to Integer"


def test_every_config_group_composes_and_passes_validation():
    """Each group option, composed into the root config, is a valid configuration (the mandatory ??? paths
    given)."""
    from helpers import REPO

    for group in sorted(p for p in (REPO / "conf").iterdir() if p.is_dir() and p.name != "hydra"):
        for option in sorted(group.glob("*.yaml")):
            extra = {"corpus": ["corpus.path=/data/x"], "model": ["model.name=some/model"]}.get(group.name, [])
            check_config(compose_config(f"{group.name}={option.stem}", *extra))


@pytest.mark.parametrize("overrides,needles", [
    (["train.grad_cache=true", "train.batch_size=8", "train.chunk_size=64"],
     ["train.chunk_size=64 is larger than train.batch_size=8"]),
    (["loss.temperature=0"], ["loss.temperature=0.0 must be > 0"]),
    (["filter.dev_fraction=0.5", "filter.test_fraction=0.5"], ["filter.dev_fraction=0.5 + filter.test_fraction=0.5"]),
    (["mining.top_k=3", "mining.num_negatives=3", "train.hard_negatives=5", "train.lr=-1"],
     ["mining.top_k=3 must exceed", "train.hard_negatives=5 is more than mining.num_negatives=3", "train.lr=-1.0"]),
    (["train.mixed_precision=fp8"], ["train.mixed_precision=fp8 is not one of"]),
], ids=["chunk-larger-than-batch", "zero-temperature", "no-training-documents", "several-at-once", "precision"])
def test_impossible_settings_are_named_together(overrides, needles):
    with pytest.raises(EmbedtuneError) as raised:
        check_config(compose_config(*overrides))
    assert "invalid settings (nothing was run)" in str(raised.value)
    for needle in needles:
        assert needle in str(raised.value)


@pytest.mark.slow
def test_the_cli_names_impossible_settings_before_anything_runs(tmp_path):
    result = embedtune("run", f"paths.runs={tmp_path / 'runs'}", "loss.temperature=0", "train.lr=-1", cwd=tmp_path)
    assert result.returncode == 2
    assert_clean_error(result, "invalid settings (nothing was run)", "loss.temperature=0.0", "train.lr=-1.0")
    written = [p.name for p in (tmp_path / "runs").rglob("*") if p.is_file()]
    assert written == []  # no stage output, not even the saved config


def test_lora_modules_absent_from_the_model_are_named(tmp_path):
    """Checked when the model is loaded, before the first training step."""
    from embedtune.model import Encoder, ModelConfig, PeftConfig

    encoder = Encoder.load(ModelConfig(name="minilm-l6"))
    with pytest.raises(EmbedtuneError, match=r"peft.target_modules \['q_proj'\] are not modules of minilm-l6"):
        encoder.apply_lora(PeftConfig(enabled=True, target_modules=["query", "q_proj"]))


@pytest.fixture
def run_args(tmp_path):
    return [f"paths.runs={tmp_path / 'runs'}", "run_name=bad"]


def no_stage_output(tmp_path: Path) -> bool:
    return not (tmp_path / "runs" / "bad" / "passages" / "manifest.json").exists()


def stage_error(stage: str, *overrides: str) -> str:
    """The one-line error a stage stops with (in-process: the CLI prints exactly this after `error: `)."""
    with pytest.raises(EmbedtuneError) as raised:
        pipeline.STAGES[stage](compose_config(*overrides))
    return str(raised.value)


def test_missing_corpus_path(tmp_path, run_args):
    message = stage_error("prepare", "corpus=jsonl", f"corpus.path={tmp_path / 'nope.jsonl'}", *run_args)
    assert "nope.jsonl" in message and "does not exist" in message
    assert no_stage_output(tmp_path)


def test_empty_corpus_folder(tmp_path, run_args):
    (tmp_path / "docs").mkdir()
    message = stage_error("prepare", "corpus=files", f"corpus.path={tmp_path / 'docs'}", *run_args)
    assert "docs" in message and "no file could be read" in message
    assert no_stage_output(tmp_path)


@pytest.mark.slow
def test_invalid_jsonl_line_is_named_in_one_line_by_the_cli(tmp_path, run_args):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"text": "fine " * 10}) + "\n" + '{"text": "broken\n')
    result = embedtune("prepare", "corpus=jsonl", f"corpus.path={path}", *run_args, cwd=tmp_path)
    assert_clean_error(result, "embedtune prepare: error: ", "docs.jsonl:2", "invalid JSON")
    assert no_stage_output(tmp_path)


def test_wrong_field_name_is_named(tmp_path, run_args):
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"body": "some text " * 10}) + "\n")
    message = stage_error("prepare", "corpus=jsonl", f"corpus.path={path}", *run_args)
    for needle in ("docs.jsonl:1", "'text'", "body", "corpus.text_field"):
        assert needle in message
    assert no_stage_output(tmp_path)


def test_later_stage_before_earlier_one(tmp_path, run_args):
    message = stage_error("mine", *run_args)
    assert "manifest.json" in message and "run the stage that writes it first" in message


@pytest.mark.slow
def test_multirun_gives_each_point_its_own_run_folder(tmp_path):
    result = embedtune("prepare", "-m", "debug=tiny", "corpus.chunk_tokens=16,64", "corpus.chunk_overlap=4",
                       f"paths.runs={tmp_path / 'runs'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    points = tmp_path / "runs" / "demo" / "points"
    counts = {n: json.loads((points / f"corpus.chunk_overlap=4,corpus.chunk_tokens={n},debug=tiny" / "passages"
                             / "manifest.json").read_text())["counts"] for n in (16, 64)}
    assert counts[16]["documents"] == counts[64]["documents"] == 300
    assert counts[16]["passages"] > counts[64]["passages"]  # smaller chunks, more passages
    assert not (tmp_path / "runs" / "demo" / "passages").exists()  # the run itself is untouched
