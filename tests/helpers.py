"""Helpers shared by the test modules (fixtures live in conftest.py): the CLI as a subprocess, accelerate
launch on this CPU, a finished prepare stage, a scripted OpenAI-compatible server, checkpoint weights."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from safetensors.torch import load_file

from embedtune.config import Config, register
from embedtune.serve.server import ServeConfig, Server, build_service
from embedtune.generate.backends import BackendConfig, TransformersBackend
from embedtune.generate.prompts import Prompt
from embedtune.io import write_parquet
from embedtune.loss import LossConfig
from embedtune.manifest import Stage
from embedtune.model import ModelConfig, PeftConfig
from embedtune.tracking import LoggerConfig
from embedtune.train import TrainConfig, TrainData, TrainJob, run_training

REPO = Path(__file__).resolve().parent.parent
DEMO_SECRET = "sk-live-embedtune-9f8e7d6c5b4a39281706"  # the demo run's generator API key (test_secrets.py)
CLEAN_ENV = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}


# ---------------------------------------------------------------- embedtune: the CLI in a subprocess

def embedtune(*args: str, cwd: Path, timeout: int = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m embedtune.cli ARGS` in `cwd` with a clean environment (offline W&B and hub)."""
    return subprocess.run([sys.executable, "-m", "embedtune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**CLEAN_ENV, **(env or {})})


def assert_clean_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    """A failed command that printed one clear error (no traceback) holding every needle."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in result.stderr, result.stderr


def compose_config(*overrides: str) -> Config:
    """The root config as `embedtune <stage> OVERRIDES` builds it, in-process (Hydra's compose API)."""
    register()
    with initialize_config_module(config_module="embedtune.conf", version_base=None):
        return OmegaConf.to_object(compose(config_name="config", overrides=list(overrides)))


def weights(checkpoint: Path) -> dict:
    """The encoder weights saved in a checkpoint folder (checkpoints/step-<n>)."""
    return load_file(str(checkpoint / "encoder" / "model.safetensors"))


# ---------------------------------------------------------------- write_passages: a finished prepare stage

def write_passages(folder: Path, n: int) -> Path:
    """A passages/ folder as `prepare` leaves it (one Parquet part + manifest) with `n` short passages."""
    rows = [{"id": f"{i:016x}", "doc_id": str(i), "title": f"Term {i}", "text": "the heart and the blood " * 3,
             "source": "s", "n_tokens": 12} for i in range(n)]
    write_parquet(rows, Path(folder) / "part-00000.parquet")
    Stage("prepare", folder, {}, {}).finish({"passages": n}, files=["part-00000.parquet"])
    return Path(folder)


# ---------------------------------------------------------------- launch: run a script under accelerate launch

def accelerate_launch_command(args: list[str], processes: int = 2, deepspeed_stage: int = 0,
                              env: dict | None = None, deepspeed_config: str = "") -> tuple[list[str], dict]:
    """The `accelerate launch` command line and environment for the repository's launch/ configs on this
    CPU: launch/cpu-2.yaml (DDP over gloo) or, with deepspeed_stage, launch/zero2.yaml with --zero_stage, or
    a DeepSpeed launch config by name (deepspeed_config, e.g. "zero3-offload.yaml"), on DeepSpeed's CPU
    accelerator; one intra-op thread per process."""
    base = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "offline"}
    base.pop("ACCELERATE_USE_CPU", None)
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if deepspeed_config:
        base["DS_ACCELERATOR"] = "cpu"
        launcher += ["--config_file", str(REPO / "launch" / deepspeed_config)]
    elif deepspeed_stage:
        base["DS_ACCELERATOR"] = "cpu"
        launcher += ["--config_file", str(REPO / "launch" / "zero2.yaml"), "--zero_stage", str(deepspeed_stage)]
    elif processes > 1:
        base["ACCELERATE_USE_CPU"] = "true"
        launcher += ["--config_file", str(REPO / "launch" / "cpu-2.yaml")]
    else:
        launcher += ["--config_file", str(REPO / "launch" / "cpu.yaml")]
    launcher += ["--num_processes", str(processes), "--main_process_port", str(29600 + os.getpid() % 300)]
    return launcher + args, {**base, **(env or {})}


def accelerate_launch(args: list[str], processes: int = 2, deepspeed_stage: int = 0, timeout: int = 300,
                      env: dict | None = None, deepspeed_config: str = ""):
    """Run accelerate_launch_command(...) to the end; returns the CompletedProcess (output captured)."""
    command, full_env = accelerate_launch_command(args, processes, deepspeed_stage, env, deepspeed_config)
    return subprocess.run(command, env=full_env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


# ---------------------------------------------------------------- train: a short real run on memorisable pairs

# queries and passages share no word, so only training can pair them
WORDS = ["cat", "dog", "fish", "bird", "apple", "bread", "river", "music"]
PASSAGES = [f"the {w} of the city" for w in ["gene", "protein", "heart", "lung", "kidney", "liver", "brain", "blood"]]


def memorisable_data(**cfg) -> TrainData:
    rows = [{"query_id": f"q{i}", "passage_id": f"p{i}", "negative_ids": []} for i in range(8)]
    queries = {f"q{i}": w for i, w in enumerate(WORDS)}
    passages = {f"p{i}": text for i, text in enumerate(PASSAGES)}
    return TrainData(rows, queries, passages, TrainConfig(**cfg))


def train_cfg(**overrides) -> TrainConfig:
    return TrainConfig(**{"batch_size": 8, "hard_negatives": 0, "max_steps": 30, "lr": 3e-3, "warmup_ratio": 0.1,
                          "mixed_precision": "no", "log_every": 1, "save_every": 10, "keep_checkpoints": 2,
                          "seed": 0, **overrides})


def train(model_dir, out_dir, peft: PeftConfig = PeftConfig(), **overrides) -> dict:
    """run_training of the tiny encoder on the 8 memorisable pairs; the train manifest it would write."""
    cfg = train_cfg(**overrides)
    job = TrainJob(ModelConfig(name=str(model_dir), pooling="mean"), peft, LossConfig(temperature=0.05), cfg,
                   LoggerConfig(kind="none"), "test")
    return run_training(job, memorisable_data(**vars(cfg)), out_dir).manifest()


# ---------------------------------------------------------------- ChatServer: an OpenAI-compatible server on 127.0.0.1

def send_json(handler: BaseHTTPRequestHandler, status: int, payload: bytes, length: int | None = None) -> None:
    """A JSON answer from a scripted server's handler (`length`: a Content-Length that lies, for truncated bodies)."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(length or len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


class ChatServer:
    """POST /v1/chat/completions -> the tiny LM's greedy completion; `faults` are served first, in order:
    an HTTP status (429, 500), "malformed" JSON, a "truncated" body, or "slow" (past the client timeout).
    `choice(body) -> dict`: the whole first choice, scripted (no model is loaded; e.g. one with logprobs)."""

    def __init__(self, model_dir, faults=(), answer=None, choice=None):
        self.backend = None if choice or answer else TransformersBackend(
            BackendConfig(model=str(model_dir), dtype="float32", batch_size=1))
        self.answer = answer  # optional: messages -> reply text, in place of the model (a scripted judge)
        self.choice = choice
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
                if server.choice is not None:
                    return self.reply(200, json.dumps({"choices": [server.choice(body)]}).encode())
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
                send_json(self, status, payload, length)

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


# ---------------------------------------------------------------- serving: `embedtune serve` in a thread of this process

@contextlib.contextmanager
def serving(model, name: str = "tiny", **settings):
    """`embedtune serve` of `model` on a free port of 127.0.0.1, in a thread (real uvicorn, real HTTP); yields
    the Server (`.url` ends in /v1, `.service` holds the model and metrics)."""
    cfg = ServeConfig(port=0, **settings)
    server = Server(cfg, build_service(cfg, str(model), name)).start()
    try:
        yield server
    finally:
        server.stop()
