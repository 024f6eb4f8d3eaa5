"""A full or read-only run folder (a real tmpfs, mounted here as root): the stage stops with one clear error
and every file written before is intact, byte for byte; no temporary file is left behind."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every test here runs whole stages in processes of their own


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def embedtune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "embedtune.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def snapshot(folder: Path) -> dict[str, str]:
    """Every output of embedtune (Hydra's own job logs under logs/ are Hydra's business, rewritten per run)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != "filler" and "logs" not in p.parts}


def prepared(disk: Path, tmp_path: Path) -> dict[str, str]:
    result = embedtune("prepare", "debug=tiny", f"paths.runs={disk}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    files = snapshot(disk)
    assert "demo/passages/manifest.json" in files and any(f.startswith("demo/passages/part-") for f in files)
    return files


def assert_clean_failure(result, disk: Path, before: dict[str, str], reason: str) -> None:
    assert result.returncode == 2
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "embedtune prepare: error: " in result.stderr and reason in result.stderr, result.stderr[-2000:]
    assert snapshot(disk) == before
    assert not [p for p in disk.rglob("*.tmp")], "a temporary file was left behind"


def test_full_disk_stops_with_a_clear_error_and_keeps_earlier_outputs(small_disk, tmp_path):
    before = prepared(small_disk, tmp_path)
    fd = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill what is left (unbuffered: no late flush)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    # another chunk size: prepare reruns and must rewrite its passages, on a full disk
    result = embedtune("prepare", "debug=tiny", "corpus.chunk_tokens=64", f"paths.runs={small_disk}", cwd=tmp_path)
    assert_clean_failure(result, small_disk, before, "No space left on device")


def test_read_only_run_folder_stops_with_a_clear_error(small_disk, tmp_path):
    before = prepared(small_disk, tmp_path)
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    result = embedtune("prepare", "debug=tiny", "corpus.chunk_tokens=64", f"paths.runs={small_disk}", cwd=tmp_path)
    assert_clean_failure(result, small_disk, before, "Read-only file system")
