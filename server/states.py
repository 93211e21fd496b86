"""Run and pod states, and which moves between them are legal."""

from enum import StrEnum


class RunStatus(StrEnum):
    queued = "queued"
    provisioning = "provisioning"
    connecting = "connecting"
    uploading = "uploading"
    running = "running"
    collecting = "collecting"
    verifying = "verifying"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


FINAL_RUN_STATUSES = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled})

# The happy path, in order; any live state may also go to failed or cancelled.
RUN_PATH = (
    RunStatus.queued,
    RunStatus.provisioning,
    RunStatus.connecting,
    RunStatus.uploading,
    RunStatus.running,
    RunStatus.collecting,
    RunStatus.verifying,
    RunStatus.succeeded,
)


def allowed_next(status: RunStatus) -> frozenset[RunStatus]:
    if status in FINAL_RUN_STATUSES:
        return frozenset()
    following = RUN_PATH[RUN_PATH.index(status) + 1]
    return frozenset({following, RunStatus.failed, RunStatus.cancelled})


class PodStatus(StrEnum):
    requested = "requested"
    starting = "starting"
    ready = "ready"
    busy = "busy"
    released = "released"
    terminated = "terminated"


# Pods that exist (or are being asked for) at their provider: they bill and count toward caps.
LIVE_POD_STATUSES = (PodStatus.requested, PodStatus.starting, PodStatus.ready, PodStatus.busy)
LIVE_POD_STATUS_VALUES = tuple(s.value for s in LIVE_POD_STATUSES)  # as stored, for SQL


class ExperimentStatus(StrEnum):
    queued = "queued"
    running = "running"
    finished = "finished"
    cancelled = "cancelled"
