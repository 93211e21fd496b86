"""Run, pod and experiment states, and which moves between them are legal.

Each status has one writer that checks these tables: `server.runs.transition()`,
`server.pods.move_pod()` and `server.experiments.move_experiment()`.
"""

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

# Every move a pod makes. A pod row is made `requested`; a rented pod is `starting` once its
# provider has it; `ready` once it has a host; `busy` while a run's trainer is on it; back to
# `ready` when a shared pod waits for its experiment's next seed. `ready -> requested` is a host
# given back when two workers placed two pods on it at once (the later one waits). Any live pod
# may end: `released` (the host stays up, as an ssh host) or `terminated` (gone at its provider).
POD_MOVES: dict[PodStatus, frozenset[PodStatus]] = {
    PodStatus.requested: frozenset({PodStatus.starting, PodStatus.ready,
                                    PodStatus.released, PodStatus.terminated}),
    PodStatus.starting: frozenset({PodStatus.ready, PodStatus.released, PodStatus.terminated}),
    PodStatus.ready: frozenset({PodStatus.requested, PodStatus.busy,
                                PodStatus.released, PodStatus.terminated}),
    PodStatus.busy: frozenset({PodStatus.ready, PodStatus.released, PodStatus.terminated}),
    PodStatus.released: frozenset(),
    PodStatus.terminated: frozenset(),
}


def pod_sources(status: PodStatus) -> tuple[PodStatus, ...]:
    """The statuses a pod may move to `status` from, for a conditional UPDATE."""
    return tuple(s for s, moves in POD_MOVES.items() if status in moves)


class ExperimentStatus(StrEnum):
    queued = "queued"
    running = "running"
    finished = "finished"
    cancelled = "cancelled"


# An open experiment has seeds to come; an ended one has none, until seeds are added.
OPEN_EXPERIMENT_STATUSES = (ExperimentStatus.queued, ExperimentStatus.running)
ENDED_EXPERIMENT_STATUSES = (ExperimentStatus.finished, ExperimentStatus.cancelled)

# Every move an experiment makes: it runs once a seed leaves the queue, ends finished or
# cancelled when all its runs have ended, and a finished one runs again when seeds are added.
EXPERIMENT_MOVES: dict[ExperimentStatus, frozenset[ExperimentStatus]] = {
    ExperimentStatus.queued: frozenset({ExperimentStatus.running, ExperimentStatus.finished,
                                        ExperimentStatus.cancelled}),
    ExperimentStatus.running: frozenset({ExperimentStatus.finished, ExperimentStatus.cancelled}),
    ExperimentStatus.finished: frozenset({ExperimentStatus.running}),
    ExperimentStatus.cancelled: frozenset(),
}


def experiment_sources(status: ExperimentStatus) -> tuple[ExperimentStatus, ...]:
    """The statuses an experiment may move to `status` from, for a conditional UPDATE."""
    return tuple(s for s, moves in EXPERIMENT_MOVES.items() if status in moves)
