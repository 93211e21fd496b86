"""`bundle --single-file`: one train_gpt.py that trains exactly as the package does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from trainer import contract

from .conftest import TinyRun, trainer_cmd


def step_lines(log: str) -> list[str]:
    """Loss lines without their timings: what must match between two runs of one seed."""
    lines = re.findall(r"^(step:\d+/\d+ (?:train|val)_loss:\S+(?: val_bpb:\S+)?)", log, re.M)
    exact = re.findall(r"^final_\S+_exact .*$", log, re.M)
    return lines + exact


def test_the_single_file_trains_like_the_package(tiny_run: TinyRun, tmp_path: Path):
    built = trainer_cmd("bundle", "--single-file", "--out", str(tmp_path))
    assert built.returncode == 0, built.stderr
    script = tmp_path / "train_gpt.py"
    assert built.stdout.strip() == str(script)
    # A fresh folder, no repository on the path: the script must bring everything.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, str(script), "train", "--config", str(tiny_run.config_path),
         "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    package_log = (tiny_run.out / contract.TRAIN_LOG).read_text()
    bundle_log = (out / contract.TRAIN_LOG).read_text()
    assert step_lines(bundle_log) == step_lines(package_log)
    assert len(step_lines(package_log)) > 10
    results = json.loads((out / contract.RESULTS).read_text())
    assert results["val_loss"] == tiny_run.results["val_loss"]
    # The script is the code that counts.
    assert results["code_files"] == ["train_gpt.py"]
    assert results["code_bytes"] == script.stat().st_size
    assert results["code_bytes"] < tiny_run.results["code_bytes"] / 2  # compressed
    assert len(list(tmp_path.glob("caddie-trainer-*/trainer/*.py"))) == len(
        [f for f in tiny_run.results["code_files"] if f.endswith(".py")])


def test_the_single_file_reports_errors_like_the_package(tmp_path: Path):
    assert trainer_cmd("bundle", "--single-file", "--out", str(tmp_path)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TMPDIR=str(tmp_path), NUM_LAYERS="abc")
    done = subprocess.run([sys.executable, str(tmp_path / "train_gpt.py")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: NUM_LAYERS='abc' is not an int"
