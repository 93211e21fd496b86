"""The challenge's tracks: the 10-minute record track and the non-record track (both 16 MB).

An imported record's track is its folder's parent (`records/<track>/<folder>`); our own
experiment's comes from its limits at submission: a training cap of at most 600 s on 8 GPUs
(the record hardware) is the record track, anything else the non-record track.
"""

from typing import Any

from server import presets
from server.eligibility import MAX_TRAIN_SECONDS, RECORD_GPU_COUNT

RECORD_TRACK = "track_10min_16mb"
NON_RECORD_TRACK = "track_non_record_16mb"
TRACKS = (RECORD_TRACK, NON_RECORD_TRACK)
# A participant's script runs with the rules' training cap unless its env sets MAX_WALLCLOCK_SECONDS.
SCRIPT_DEFAULT_WALLCLOCK_S = MAX_TRAIN_SECONDS


def from_folder(parent_name: str) -> str:
    """An imported folder's track: its parent folder's name when it is a known track; a
    folder outside `records/<track>/` counts as the non-record track (no claim of a record)."""
    return parent_name if parent_name in TRACKS else NON_RECORD_TRACK


def from_limits(*, kind: str, preset: str, config: dict[str, Any], env: dict[str, str],
                gpu_count: int | None) -> str:
    """Our own experiment's track: training cap (seconds) <= 600 and 8 GPUs (None: the
    providers' default, 8) make the record track."""
    cap = training_cap_s(kind=kind, preset=preset, config=config, env=env)
    gpus = RECORD_GPU_COUNT if gpu_count is None else gpu_count
    record = cap is not None and 0 < cap <= MAX_TRAIN_SECONDS and gpus == RECORD_GPU_COUNT
    return RECORD_TRACK if record else NON_RECORD_TRACK


def training_cap_s(*, kind: str, preset: str, config: dict[str, Any],
                   env: dict[str, str]) -> float | None:
    """The training cap in seconds the run will stop at; None or 0 means no cap."""
    raw: Any
    if kind == "script":
        raw = env.get("MAX_WALLCLOCK_SECONDS", str(SCRIPT_DEFAULT_WALLCLOCK_S))
    else:
        raw = presets.resolved_config(preset, config).get("max_wallclock_seconds")
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None
