"""`bundle --single-file`: one train_gpt.py that trains exactly as the package does."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from trainer import contract

from .conftest import TrainedRun, trainer_cmd


def step_lines(log: str) -> list[str]:
    """Loss lines without their timings: what must match between two runs of one seed."""
    lines = re.findall(r"^(step:\d+/\d+ (?:train|val)_loss:\S+(?: val_bpb:\S+)?)", log, re.M)
    exact = re.findall(r"^final_\S+_exact .*$", log, re.M)
    return lines + exact


def _run_script(script: Path, tmp_path: Path, *args: str, env_extra: dict | None = None):
    # A fresh folder, no repository on the path: the script must bring everything.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", TMPDIR=str(tmp_path), **(env_extra or {}))
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          env=env, cwd=script.parent, timeout=300)


def test_the_single_file_is_readable_python_with_a_section_per_module(tmp_path: Path):
    built = trainer_cmd("bundle", "--single-file", "--out", str(tmp_path))
    assert built.returncode == 0, built.stderr
    text = (tmp_path / "train_gpt.py").read_text()
    banners = re.findall(r"^# (trainer/\S+)$", text, re.M)
    # Dependencies first: contract before config before train before __main__.
    assert banners.index("trainer/contract.py") < banners.index("trainer/config.py") \
        < banners.index("trainer/train.py") < banners.index("trainer/__main__.py")
    assert "import trainer" not in text and "from trainer" not in text
    names = {n.id for n in ast.walk(ast.parse(text)) if isinstance(n, ast.Name)}
    assert "contract" not in names  # `contract.X` became `X`
    assert text.count("from __future__ import annotations") == 1
    assert "class Hyperparameters:" in text and "    num_layers = 9" in text  # the baseline
    assert "b85decode" not in text


def test_the_single_file_trains_like_the_package(tiny_run: TrainedRun, tmp_path: Path):
    built = trainer_cmd("bundle", "--single-file", "--out", str(tmp_path))
    assert built.returncode == 0, built.stderr
    script = tmp_path / "train_gpt.py"
    assert built.stdout.strip() == str(script)
    out = tmp_path / "run"
    done = _run_script(script, tmp_path, "train", "--config", str(tiny_run.config_path), "--out", str(out))
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


def test_the_settings_become_the_defaults_and_the_environment_overrides_them(
        tiny_run: TrainedRun, tmp_path: Path):
    settings = json.loads(tiny_run.config_path.read_text())
    paths = {"DATA_PATH": settings.pop("data_path"), "TOKENIZER_PATH": settings.pop("tokenizer_path")}
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    folder = tmp_path / "folder"
    folder.mkdir()
    built = trainer_cmd("bundle", "--single-file", "--settings", str(tmp_path / "settings.json"),
                        "--out", str(folder))
    assert built.returncode == 0, built.stderr
    script = folder / "train_gpt.py"
    assert "    model_dim = 64" in script.read_text() and "    seed = 7" in script.read_text()
    done = _run_script(script, tmp_path, env_extra=paths)  # `python train_gpt.py`, nothing else
    assert done.returncode == 0, done.stderr[-3000:]
    log = (folder / contract.TRAIN_LOG).read_text()
    assert step_lines(log) == step_lines((tiny_run.out / contract.TRAIN_LOG).read_text())
    results = json.loads((folder / contract.RESULTS).read_text())
    assert results["config"]["preset"] == "tiny" and results["config"]["data_path"] == paths["DATA_PATH"]
    # The community's variables still override the file's settings.
    other = tmp_path / "other"
    other.mkdir()
    (other / "train_gpt.py").write_bytes(script.read_bytes())
    done = _run_script(other / "train_gpt.py", tmp_path, env_extra={**paths, "SEED": "8", "ITERATIONS": "3"})
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((other / contract.RESULTS).read_text())
    assert results["seed"] == 8 and results["steps"] == 3


def test_the_compressed_form_runs_the_readable_source_beside_it(tiny_run: TrainedRun, tmp_path: Path):
    built = trainer_cmd("bundle", "--single-file", "--compressed", "--out", str(tmp_path))
    assert built.returncode == 0, built.stderr
    script, source = tmp_path / "train_gpt.py", tmp_path / "train_gpt_source.py"
    readable = trainer_cmd("bundle", "--single-file", "--out", str(tmp_path / "readable.py"))
    assert readable.returncode == 0 and source.read_text() == (tmp_path / "readable.py").read_text()
    assert script.stat().st_size < source.stat().st_size / 2
    out = tmp_path / "run"
    done = _run_script(script, tmp_path, "train", "--config", str(tiny_run.config_path), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert step_lines((out / contract.TRAIN_LOG).read_text()) == step_lines(
        (tiny_run.out / contract.TRAIN_LOG).read_text())
    results = json.loads((out / contract.RESULTS).read_text())
    assert results["code_files"] == ["train_gpt.py"] and results["code_bytes"] == script.stat().st_size


def test_the_single_file_reports_errors_like_the_package(tmp_path: Path):
    assert trainer_cmd("bundle", "--single-file", "--out", str(tmp_path)).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TMPDIR=str(tmp_path), NUM_LAYERS="abc")
    done = subprocess.run([sys.executable, str(tmp_path / "train_gpt.py")], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: NUM_LAYERS='abc' is not an int"
