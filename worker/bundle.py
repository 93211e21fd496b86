"""The trainer bundle the worker uploads to a pod, and the run.json it runs with.

The default bundle is the trainer as one file: the output of `python -m trainer bundle
--single-file --compressed` (the readable flattened trainer, lzma-compressed and base85-encoded,
as many records ship their code), uploaded as `<run dir>/code/train_gpt.py` and run as `python
train_gpt.py train ...`; its bytes, exactly as uploaded, are the run's code bytes, as the
challenge counts a record's train_gpt.py. The compressed form is counted rather than the
readable one because it is about a third of the size (bytes the model can use under the cap);
`caddie export` writes the readable file by default and says how the two counts differ. The worker builds it with a subprocess (it imports nothing of the
trainer but `trainer.contract`), once per worker process. `TrainerBundle` (the package's
`*.py` files and `schema.json` under `code/trainer/`, run with `-m trainer`) serves tests
that stand a small fake in for the trainer.
"""

import functools
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trainer.contract as contract
from server.eligibility import MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS
from server.models import Experiment, Run
from server.policies import arm_changes

# Training cap used when neither the config, the preset nor the schema says otherwise (s).
DEFAULT_WALLCLOCK_S = MAX_TRAIN_SECONDS


@dataclass(frozen=True)
class TrainerBundle:
    package_dir: Path  # a folder named like the package it holds, e.g. .../trainer

    def files(self) -> dict[str, bytes]:
        """{path relative to the code folder: bytes}, e.g. {"trainer/train.py": b"..."}."""
        paths = sorted(self.package_dir.glob("*.py"))
        schema = self.package_dir / contract.SCHEMA
        if schema.is_file():
            paths.append(schema)
        if not paths:
            raise FileNotFoundError(f"trainer bundle {self.package_dir} holds no *.py files")
        return {f"{self.package_dir.name}/{p.name}": p.read_bytes() for p in paths}

    def schema(self) -> dict[str, Any]:
        return _schema(self.package_dir)

    def entry(self, python: str, *, run_dir: str) -> list[str]:
        """The trainer's command line up to its subcommand (`train`, `data fetch`, ...); the
        launcher puts `<run dir>/code` on PYTHONPATH."""
        return [python, "-m", self.package_dir.name]

    def argv(self, python: str, *, config_path: str, run_dir: str) -> list[str]:
        """The command that trains."""
        return [*self.entry(python, run_dir=run_dir), "train", "--config", config_path, "--out", run_dir]


@dataclass(frozen=True)
class SingleFileBundle:
    package_dir: Path  # the trainer package the script is built from

    def files(self) -> dict[str, bytes]:
        """{"train_gpt.py": its bytes}: the one file uploaded and counted."""
        return {SINGLE_FILE: _single_file(self.package_dir)}

    def schema(self) -> dict[str, Any]:
        return _schema(self.package_dir)

    def entry(self, python: str, *, run_dir: str) -> list[str]:
        return [python, f"{run_dir}/code/{SINGLE_FILE}"]

    def argv(self, python: str, *, config_path: str, run_dir: str) -> list[str]:
        return [*self.entry(python, run_dir=run_dir), "train", "--config", config_path, "--out", run_dir]


Bundle = TrainerBundle | SingleFileBundle
SINGLE_FILE = "train_gpt.py"


def default_bundle() -> SingleFileBundle:
    return SingleFileBundle(Path(contract.__file__).resolve().parent)


@functools.cache
def _single_file(package_dir: Path) -> bytes:
    """`python -m trainer bundle --single-file --compressed`, run once per worker process."""
    with tempfile.TemporaryDirectory(prefix="caddie-bundle-") as folder:
        done = subprocess.run(
            [sys.executable, "-m", package_dir.name, "bundle", "--single-file", "--compressed",
             "--out", folder],
            cwd=package_dir.parent, capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"building the single-file trainer failed: {done.stderr.strip()[-500:]}")
        return (Path(folder) / SINGLE_FILE).read_bytes()


def _schema(package_dir: Path) -> dict[str, Any]:
    path = package_dir / contract.SCHEMA
    return json.loads(path.read_text()) if path.is_file() else {"fields": {}, "presets": {}}


def run_config(experiment: Experiment, run: Run) -> dict[str, Any]:
    """run.json: the preset, the experiment's overrides, the overrides of the run's ablation arm,
    then this run's seed and id."""
    arm = arm_changes(experiment, run.variant).get("config", {})
    return {contract.PRESET_KEY: experiment.preset, **experiment.config, **arm,
            "seed": run.seed, "run_id": str(run.id)}


def run_deadline_s(config: dict[str, Any], schema: dict[str, Any], *, grace_s: float) -> float:
    """Seconds the trainer process may live: training cap + the eval cap + grace."""
    preset = schema.get("presets", {}).get(config.get(contract.PRESET_KEY, ""), {})
    field = schema.get("fields", {}).get("max_wallclock_seconds", {})
    wallclock = config.get("max_wallclock_seconds",
                           preset.get("max_wallclock_seconds", field.get("default", DEFAULT_WALLCLOCK_S)))
    try:
        wallclock = float(wallclock)
    except (TypeError, ValueError):
        raise ValueError(f"max_wallclock_seconds {wallclock!r} is not a number") from None
    if wallclock <= 0:  # 0 means "no cap" to the trainer; the pod still needs one
        wallclock = DEFAULT_WALLCLOCK_S
    return wallclock + MAX_EVAL_SECONDS + grace_s
