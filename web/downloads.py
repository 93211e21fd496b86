"""A run's files as the worker downloaded them into `runs_dir()/<run id>/`: which exist,
and the path of one, never outside that folder whatever name a results.json carries."""

from pathlib import Path
from typing import Any

from server.config import get_settings
from trainer import contract

# The names the trainer writes and the worker keeps (a shared trainer module,
# docs/architecture.md); results.json may name another artifact.
RESULTS_FILE = contract.RESULTS
DEFAULT_ARTIFACT = contract.ARTIFACT


def artifact_name(results: dict[str, Any] | None) -> str:
    name = (results or {}).get("artifact_file")
    return name if isinstance(name, str) and name else DEFAULT_ARTIFACT


def run_file(run_id: int, name: str) -> Path | None:
    """The downloaded file `name` of the run, or None if it is not there or `name` would
    lead outside the run's folder (`../x`, an absolute path, a symlink out)."""
    folder = (get_settings().runs_dir() / str(run_id)).resolve()
    path = (folder / name).resolve()
    if not path.is_relative_to(folder) or path == folder or not path.is_file():
        return None
    return path


def available(run_id: int, results: dict[str, Any] | None) -> dict[str, str]:
    """Download label -> file name, for the run's files that exist."""
    files = {RESULTS_FILE: RESULTS_FILE, "artifact": artifact_name(results)}
    return {label: name for label, name in files.items() if run_file(run_id, name) is not None}
