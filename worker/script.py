"""A participant's own train_gpt.py on a pod: what is uploaded and counted, the environment it
runs with, which file is its artifact, and its score, read from its log.

The script's files go to `<run dir>/code/`, which is also its working folder, so nothing it
writes can overwrite the launcher's files in the run directory. It runs as the community
runs it, `torchrun --standalone --nproc_per_node=<GPUs> train_gpt.py` (a re-run: the script its
records folder runs, `entrypoint`), with its stdout and stderr as the run's `train.log`. A
re-run's files keep their relative paths under `code/`.
"""

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from server.eligibility import MAX_EVAL_SECONDS
from server.models import Experiment, ExperimentFile, Run
from server.policies import arm_changes
from server.scripts import ARTIFACT_PREFIX, ENTRYPOINT, REQUIREMENTS
from server.tracks import SCRIPT_DEFAULT_WALLCLOCK_S

SETUP_DEADLINE_S = 900.0  # `pip install -r requirements.txt` may take this long
# Community scripts write the raw model (final_model.pt) and the compressed submission
# (final_model.int8.ptz, .int6.ptz, ...); the compressed one is the artifact.
_ARTIFACT = re.compile(rf"^{ARTIFACT_PREFIX}[A-Za-z0-9._-]*\.pt[A-Za-z0-9]*$")


@dataclass(frozen=True)
class ScriptFiles:
    uploaded: dict[str, bytes]  # relative path under code/ -> bytes, every file of the experiment
    counted: dict[str, bytes]  # the code bytes of the run (see script_files)


def _reproduce(experiment: Experiment | None) -> dict[str, Any]:
    return ((experiment.source or {}).get("reproduce") or {}) if experiment is not None else {}


def entrypoint(experiment: Experiment | None) -> str:
    """The script torchrun launches: train_gpt.py, or the one a re-run's records folder runs."""
    return str(_reproduce(experiment).get("entrypoint") or ENTRYPOINT)


def script_files(rows: list[ExperimentFile], experiment: Experiment | None = None) -> ScriptFiles:
    """The files and the counted ones: every uploaded file but requirements.txt, or for a
    re-run the files its plan counted (the script that runs and the sources it uses)."""
    uploaded = {row.name: bytes(row.content) for row in rows}
    entry = entrypoint(experiment)
    if entry not in uploaded:
        raise ValueError(f"the experiment has no {entry}")
    listed = _reproduce(experiment).get("counted")
    counted = {name: data for name, data in uploaded.items()
               if (name in listed if listed is not None else name != REQUIREMENTS)}
    return ScriptFiles(uploaded, counted)


def script_env(experiment: Experiment, run: Run) -> dict[str, str]:
    """The script's environment: MAX_WALLCLOCK_SECONDS=600 < the experiment's env < the env of
    the run's ablation arm < a re-run's per-seed env < SEED and RUN_ID of this run. Nothing of
    the worker's own. The pod's data is reached through the `data` link in the script's folder
    (the community's default ./data/... paths)."""
    return {**_arm_settings(experiment, run.variant), **(experiment.seed_env or {}).get(str(run.seed), {}),
            "SEED": str(run.seed), "RUN_ID": str(run.id)}


def arm_env(experiment: Experiment, arm: str) -> dict[str, str]:
    """The experiment's env with the arm's changes on top."""
    return {**experiment.env, **arm_changes(experiment, arm).get("env", {})}


def env_digest(experiment: Experiment, arm: str) -> str:
    """sha256 of the arm's environment less what is this seed's own (a re-run's per-seed env,
    SEED, RUN_ID), which every arm shares: equal digests mean two arms ran the same settings.
    A digest, so that values never leave the experiment's row."""
    return hashlib.sha256(json.dumps(_arm_settings(experiment, arm), sort_keys=True).encode()).hexdigest()


def _arm_settings(experiment: Experiment, arm: str) -> dict[str, str]:
    return {"MAX_WALLCLOCK_SECONDS": f"{SCRIPT_DEFAULT_WALLCLOCK_S:g}", **arm_env(experiment, arm)}


def torchrun_argv(python: str, gpu_count: int | None, entry: str = ENTRYPOINT) -> list[str]:
    """`torchrun` as a module of the pod's Python, one process per GPU (one on a CPU pod)."""
    return [python, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={gpu_count or 1}", entry]


def deadline_s(experiment: Experiment, *, grace_s: float, requirements: bool, arm: str = "") -> float:
    """Seconds the script may live: its training cap + the eval cap + grace (+ pip's time)."""
    raw = arm_env(experiment, arm).get("MAX_WALLCLOCK_SECONDS", str(SCRIPT_DEFAULT_WALLCLOCK_S))
    try:
        wallclock = float(raw)
    except ValueError:
        raise ValueError(f"env.MAX_WALLCLOCK_SECONDS {raw!r} is not a number") from None
    if not wallclock > 0 or wallclock > 86_400:  # 0 (no cap), nan, negative: the pod still needs one
        wallclock = SCRIPT_DEFAULT_WALLCLOCK_S
    return wallclock + MAX_EVAL_SECONDS + grace_s + (SETUP_DEADLINE_S if requirements else 0.0)


def pick_artifact(listing: str, uploaded: set[str]) -> str | None:
    """The artifact among `find -printf '%T@ %s %f\\n'` lines (mtime, bytes, name): the newest
    compressed `final_model*.pt?` file, else the newest `final_model*.pt`; the bigger on a tie."""
    found: list[tuple[bool, float, int, str]] = []
    for line in listing.splitlines():
        parts = line.split(" ", 2)
        if len(parts) != 3 or not _ARTIFACT.match(parts[2]) or parts[2] in uploaded:
            continue
        try:
            found.append((not parts[2].endswith(".pt"), float(parts[0]), int(parts[1]), parts[2]))
        except ValueError:
            continue
    return max(found)[3] if found else None


def score(parsed: dict[str, Any], *, code_bytes: int, artifact_bytes: int) -> tuple[dict[str, Any], list[str]]:
    """(the run row's numbers, reasons) from `server.communitylog.parse_log`'s answer and what the
    worker measured. The log's own byte counts are compared, never used."""
    final = parsed["score"] or {}
    numbers = {
        "val_loss": final.get("val_loss"), "val_bpb": final.get("val_bpb"), "pre_quant_val_bpb": None,
        "steps": parsed["steps"], "val_tokens": parsed["val_tokens"],
        "train_time_s": _seconds(parsed["train_time_ms"]), "eval_time_s": _seconds(parsed["eval_time_ms"]),
    }
    reasons = [f"log: {warning}" for warning in parsed["warnings"]]
    claims = (("bytes_total", parsed["bytes_total"], code_bytes + artifact_bytes),
              ("model bytes", parsed["model_bytes"], artifact_bytes))
    for what, claimed, measured in claims:
        if claimed is not None and claimed != measured:
            reasons.append(f"the log says {what} {claimed:,}, the worker measured {measured:,}")
    return numbers, reasons


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0
