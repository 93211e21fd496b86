"""The trainer bundle the worker uploads to a pod, and the run.json it runs with.

The bundle is the `trainer` package's `*.py` files and its `schema.json`, uploaded under
`<run dir>/code/trainer/`. Those bytes, exactly as uploaded, are the run's code bytes.
"""

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trainer.contract as contract
from server.eligibility import MAX_EVAL_SECONDS
from server.models import Experiment, Run

# Training cap used when neither the config, the preset nor the schema says otherwise (s).
DEFAULT_WALLCLOCK_S = 600.0


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
        path = self.package_dir / contract.SCHEMA
        return json.loads(path.read_text()) if path.is_file() else {"fields": {}, "presets": {}}


def default_bundle() -> TrainerBundle:
    return TrainerBundle(Path(contract.__file__).resolve().parent)


def run_config(experiment: Experiment, run: Run) -> dict[str, Any]:
    """run.json: the preset, the experiment's overrides, then this run's seed and id."""
    return {contract.PRESET_KEY: experiment.preset, **experiment.config,
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
