"""The slurm/ scripts and the Hydra submitit launcher against a real one-node SLURM cluster (Debian's
slurm-wlm, started by tests/slurm_cluster.sh; .ci/run installs and starts it). Skipped, with the reason,
where SLURM cannot be installed or started. The commands are the README's "Scale out" commands in CPU form."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.slow  # every test here runs whole stages in processes of their own

CLUSTER = REPO / "tests" / "slurm_cluster.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
            "DEADLINE"}
TINY = ["debug=tiny", "logger=none"]


def _responds(env: dict) -> bool:
    try:
        return subprocess.run(["sinfo", "-h"], env=env, capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The environment for SLURM client commands and jobs: SLURM_CONF of a running cluster (the one .ci/run
    started, or one started here and stopped afterwards), the test interpreter, CPU launch settings."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "EMBEDTUNE_PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    started = None
    if not (env.get("SLURM_CONF") and _responds(env)):
        if shutil.which("slurmctld") is None or shutil.which("sbatch") is None:
            pytest.skip("SLURM is not installed (tests/slurm_cluster.sh install needs root and apt-get)")
        if os.geteuid() != 0:
            pytest.skip("starting a local SLURM cluster needs root (munged, slurmd)")
        state = tmp_path_factory.mktemp("slurm-state")
        proc = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            pytest.skip(f"the local SLURM cluster did not start: {proc.stderr.strip()[-500:]}")
        env["SLURM_CONF"], started = proc.stdout.strip().splitlines()[-1], state
    yield env
    if started is not None:
        subprocess.run(["bash", str(CLUSTER), "stop", str(started)], timeout=120)


def sh(args, env, cwd, timeout=120) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def job_states(job: str, env) -> dict[str, str]:
    out = sh(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State"], env, REPO).stdout
    return {line.split("|")[0]: line.split("|")[1].split()[0] for line in out.splitlines() if "|" in line}


def wait_for(jobs: list[str], env, timeout: float = 900) -> dict[str, str]:
    """Poll sacct until every job (and array task) of `jobs` is in a final state."""
    deadline = time.time() + timeout
    while True:
        states = {k: v for job in jobs for k, v in job_states(job, env).items()}
        pending = [k for k, v in states.items() if v not in TERMINAL]
        if states and not pending:
            return states
        if time.time() > deadline:
            subprocess.run(["scancel", *jobs], env=env)
            raise AssertionError(f"SLURM jobs still not finished after {timeout}s: {states}")
        time.sleep(1)


def embedtune(args, env, cwd, timeout=600):
    return sh([sys.executable, "-m", "embedtune.cli", *args], env, cwd, timeout)


# ---------------------------------------------------------------- the whole pipeline, chained

@pytest.fixture(scope="module")
def pipeline_run(slurm, tmp_path_factory):
    """slurm/pipeline.sh on the tiny demo: prepare -> generate (2-task array) -> filter -> mine (2 processes)
    -> train (2 processes) -> eval+export, chained with afterok; returns (folder, job ids, final states)."""
    work = tmp_path_factory.mktemp("pipeline")
    env = {**slurm, "SHARDS": "2", "PROCS_PER_NODE": "2", "ACCELERATE_USE_CPU": "true",
           "LAUNCH_CONFIG": str(REPO / "launch" / "cpu-2.yaml"), "EVAL_LAUNCH_CONFIG": str(REPO / "launch" / "cpu-2.yaml"),
           "MINE_LAUNCH_CONFIG": str(REPO / "launch" / "cpu-2.yaml"),
           "SBATCH_FLAGS": "--cpus-per-task=1"}
    out = sh([str(REPO / "slurm" / "pipeline.sh"), *TINY, "run_name=demo", f"paths.runs={work / 'runs'}"], env, work).stdout
    jobs = dict(line.split()[:2] for line in out.splitlines())
    states = wait_for(list(jobs.values()), slurm)
    return work, jobs, states


def test_pipeline_sh_runs_every_stage_as_chained_jobs(pipeline_run):
    work, jobs, states = pipeline_run
    assert set(jobs) == {"prepare", "generate", "filter", "mine", "score", "train", "eval+export"}
    assert set(states.values()) == {"COMPLETED"}, states
    assert {f"{jobs['generate']}_0", f"{jobs['generate']}_1"} <= set(states)  # the array's two tasks
    run = work / "runs" / "demo"
    for stage in ("passages", "queries", "pairs", "negatives", "checkpoints", "eval", "model"):
        assert (run / stage / "manifest.json").exists(), stage
    assert not (run / "scores").exists()  # teacher.kind=none: the score job only says it is off
    train = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert train["processes"] == 2 and train["counts"]["steps"] == 4
    shards = json.loads((run / "queries" / "manifest.json").read_text())
    assert shards["counts"]["queries"] == 24
    report = (run / "eval" / "report.md").read_text()
    assert "| hpo (test, human) | tuned |" in report
    assert (run / "model" / "model.safetensors").exists()
    mine_log = (work / "logs" / f"embedtune-mine-{jobs['mine']}.out").read_text()
    assert "(rank 1/2)" in mine_log and mine_log.count("hard negatives for") == 1  # 2 ranks, one writer
    log = (work / "logs" / f"embedtune-train-{jobs['train']}.out").read_text()
    assert "on 1 node(s) x 2 process(es)" in log and "train: 4 steps" in log


def test_generate_array_equals_a_local_run(slurm, pipeline_run, tmp_path):
    """generate.sbatch as a 2-task array writes the same queries as one local process (greedy decoding, one
    prompt per forward in fp32: batches of other prompts would change bf16 padding numerics, not sharding)."""
    from embedtune.generate.runner import read_queries

    work, _, _ = pipeline_run
    for name in ("local", "array"):
        shutil.copytree(work / "runs" / "demo" / "passages", tmp_path / name / "demo" / "passages")
    args = [*TINY, "run_name=demo", "generator.batch_size=1", "generator.dtype=float32", "generator.max_passages=8"]
    embedtune(["generate", *args, f"paths.runs={tmp_path / 'local'}"], slurm, tmp_path)
    (tmp_path / "logs").mkdir()
    out = sh(["sbatch", "--parsable", "--array=0-1", "--cpus-per-task=1", str(REPO / "slurm" / "generate.sbatch"),
              *args, f"paths.runs={tmp_path / 'array'}"], slurm, tmp_path).stdout
    states = wait_for([out.strip().split(";")[0]], slurm)
    assert set(states.values()) == {"COMPLETED"} and len(states) == 2, states
    rows = [sorted((q["passage_id"], q["query_id"], q["text"]) for q in read_queries(tmp_path / n / "demo" / "queries"))
            for n in ("local", "array")]
    assert len(rows[0]) == 8 and rows[0] == rows[1]
    assert len(list((tmp_path / "array" / "demo" / "queries").glob("shard-*.done"))) == 2


def test_train_sbatch_is_preempted_requeued_and_resumes(slurm, pipeline_run, tmp_path):
    """train.sbatch with 2 processes; USR1 to the batch script (what --signal=B:USR1@300 sends before the time
    limit): the trainer checkpoints, the job requeues itself, and the requeued job resumes and finishes."""
    work, _, _ = pipeline_run
    run = tmp_path / "runs" / "demo"
    for stage in ("passages", "queries", "pairs", "negatives", "benchmarks"):
        shutil.copytree(work / "runs" / "demo" / stage, run / stage)
    (tmp_path / "logs").mkdir()
    env = {**slurm, "PROCS_PER_NODE": "2", "ACCELERATE_USE_CPU": "true",
           "LAUNCH_CONFIG": str(REPO / "launch" / "cpu-2.yaml")}
    steps = 40
    job = sh(["sbatch", "--parsable", "--cpus-per-task=1", str(REPO / "slurm" / "train.sbatch"), *TINY,
              "run_name=demo", f"paths.runs={tmp_path / 'runs'}", f"train.max_steps={steps}", "train.log_every=1"],
             env, tmp_path).stdout.strip()
    metrics = run / "checkpoints" / "metrics.jsonl"
    deadline = time.time() + 300
    while not (metrics.exists() and metrics.read_text().count("train/loss") >= 3):
        # (sacct may not know a job for a moment after sbatch)
        assert time.time() < deadline and job_states(job, slurm).get(job, "PENDING") in ("PENDING", "RUNNING"), \
            f"training did not start: {job_states(job, slurm)}"
        time.sleep(0.2)
    sh(["scancel", "--batch", "--signal=USR1", job], slurm, tmp_path)
    deadline = time.time() + 600
    while (run / "checkpoints" / "manifest.json").exists() is False:
        assert time.time() < deadline, "the requeued job did not finish"
        time.sleep(1)
    assert wait_for([job], slurm)[job] == "COMPLETED"
    log = (tmp_path / "logs" / f"embedtune-train-{job}.out").read_text()
    assert "USR1 from SLURM" in log and f"requeueing job {job}" in log
    assert "train: stopped by SIGTERM; saved step-" in log
    assert f"train: job {job} (restart 1)" in log and "train: resuming from" in log
    assert f"train: {steps} steps" in log
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert manifest["counts"]["steps"] == steps and manifest["processes"] == 2


def test_train_sbatch_under_deepspeed_from_its_json_config(slurm, pipeline_run, tmp_path):
    """The multi-node DeepSpeed command in its CPU form: launch/multinode-zero2.yaml (ZeRO-2 from
    launch/deepspeed/zero2.json) on 1 node x 2 processes, DeepSpeed's CPU accelerator."""
    work, _, _ = pipeline_run
    run = tmp_path / "runs" / "demo"
    for stage in ("passages", "queries", "pairs", "negatives", "benchmarks"):
        shutil.copytree(work / "runs" / "demo" / stage, run / stage)
    (tmp_path / "logs").mkdir()
    (tmp_path / "launch").symlink_to(REPO / "launch")  # submitted from a checkout's root: relative JSON path
    env = {**slurm, "PROCS_PER_NODE": "2", "DS_ACCELERATOR": "cpu",
           "LAUNCH_CONFIG": str(REPO / "launch" / "multinode-zero2.yaml")}
    job = sh(["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=1", str(REPO / "slurm" / "train.sbatch"), *TINY,
              "run_name=demo", f"paths.runs={tmp_path / 'runs'}", "train.grad_cache=true", "train.chunk_size=2"],
             env, tmp_path).stdout.strip()
    state = wait_for([job], slurm)[job]
    text = (tmp_path / "logs" / f"embedtune-train-{job}.out").read_text()
    assert state == "COMPLETED", text[-3000:]
    manifest = json.loads((run / "checkpoints" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["counts"]["steps"] == 4
    files = [p.name for p in (run / "checkpoints" / manifest["final"]).rglob("*")]
    assert sum("zero_pp_rank" in f for f in files) >= 2, files  # one ZeRO optimizer partition per rank


def test_hydra_multirun_through_the_submitit_launcher(slurm, pipeline_run, tmp_path):
    """`embedtune train -m hydra/launcher=slurm loss.temperature=0.02,0.05`: one SLURM job per point, each in
    its own folder seeded from the run, and one sweep table after both."""
    work, _, _ = pipeline_run
    runs = tmp_path / "runs"
    for stage in ("passages", "queries", "pairs", "negatives", "benchmarks"):
        shutil.copytree(work / "runs" / "demo" / stage, runs / "demo" / stage)
    proc = embedtune(["train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
                      "hydra.launcher.cpus_per_task=1", *TINY, "run_name=demo", f"paths.runs={runs}",
                      "loss.temperature=0.02,0.05"], slurm, tmp_path)
    points = sorted(p.name for p in (runs / "demo" / "points").iterdir())
    assert points == ["debug=tiny,loss.temperature=0.02", "debug=tiny,loss.temperature=0.05"]
    for point in points:
        folder = runs / "demo" / "points" / point
        assert json.loads((folder / "checkpoints" / "manifest.json").read_text())["counts"]["steps"] == 4
        assert f"temperature: {point.split('=')[-1]}" in (folder / "config.train.yaml").read_text()
        # seeded by hard links: the point reads the run's files, it does not copy them
        part = json.loads((runs / "demo" / "passages" / "manifest.json").read_text())["files"][0]
        assert (folder / "passages" / part).stat().st_ino == (runs / "demo" / "passages" / part).stat().st_ino
    assert not (runs / "demo" / "checkpoints").exists()  # the run itself was not trained
    sweep = next((runs / "demo" / "sweeps").iterdir())
    rows = json.loads((sweep / "sweep.json").read_text())
    assert [r["point"] for r in rows] == points and all("train/loss" in r["metrics"] for r in rows)
    assert rows[0]["metrics"]["train/loss"] != rows[1]["metrics"]["train/loss"]
    assert "| debug=tiny,loss.temperature=0.02 |" in (sweep / "sweep.md").read_text()
    assert (sweep / "sweep.png").stat().st_size > 1000 and "sweep:" in proc.stdout
    jobs = {p.name for p in (sweep / ".submitit").iterdir() if "_" in p.name and p.name[0].isdigit()}  # array tasks
    assert len(jobs) == 2
    states = wait_for(sorted(jobs), slurm, timeout=120)  # accounting may lag a moment behind the job's end
    assert set(states.values()) == {"COMPLETED"}, states
