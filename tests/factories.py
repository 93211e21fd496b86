"""Rows for tests, written straight to the database (status included: this is setup,
not the state machine under test).

Each factory commits and leaves no transaction open: on SQLite every transaction takes
the write lock, so an open one would block the API under test. Use a session with
`expire_on_commit=False` so the returned rows stay readable.
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session

from server import tracks
from server.config import Settings, get_settings
from server.experiments import finalize_experiment
from server.models import Experiment, LogChunk, Pod, Run, RunEvent

RECORD_GPU = "NVIDIA H100 80GB HBM3"
SP1024_VAL_TOKENS = 62_021_632
# val_loss / val_bpb of the runs made here: ln 2 × bytes per token, roughly sp1024's (2.44).
LOSS_PER_BPB = 1.69
POD_START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # when a finished experiment's priced pods began
QUEUE_NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # the moment the queue tests read the line at


def make_experiment(
    session: Session,
    *,
    name: str = "baseline 9x512",
    author: str = "ada",
    preset: str = "baseline",
    provider: str = "local",
    seeds: Sequence[int] = (1337, 42, 7),
    config: dict[str, Any] | None = None,
    reference_bpb: float | None = 2.0,
    **fields: Any,
) -> Experiment:
    """An experiment with no runs yet (see make_run). Its default reference, 2.0 bpb, is one
    that every score in these tests beats by far, so that tests of the other rules see no
    significance reason; tests of the significance rule pass their own."""
    experiment = Experiment(name=name, author=author, preset=preset, provider=provider,
                            seeds=list(seeds), config=config or {}, reference_bpb=reference_bpb,
                            **fields)
    session.add(experiment)
    session.commit()
    return experiment


def make_run(session: Session, experiment: Experiment, *, seed: int, status: str = "queued",
             **fields: Any) -> Run:
    run = Run(experiment_id=experiment.id, seed=seed, status=status, **fields)
    session.add(run)
    session.flush()
    session.add(RunEvent(run_id=run.id, from_status=None, to_status="queued"))
    session.commit()
    return run


def make_scored_run(session: Session, experiment: Experiment, *, seed: int, val_bpb: float,
                    status: str = "succeeded", **fields: Any) -> Run:
    """A run as the worker leaves it after verifying: measured, eligible unless told."""
    measured: dict[str, Any] = {
        "val_bpb": val_bpb,
        "val_loss": val_bpb * LOSS_PER_BPB,
        "bytes_total": 15_800_000,
        "code_bytes": 50_000,
        "model_bytes": 15_750_000,
        "train_time_s": 599.0,
        "eval_time_s": 120.0,
        "val_tokens": SP1024_VAL_TOKENS,
        "gpu_name": RECORD_GPU,
        "gpu_count": 8,
        "eligible": True,
        "reasons": [],
    }
    return make_run(session, experiment, seed=seed, status=status, **(measured | fields))


def make_finished_experiment(session: Session, scores: Sequence[float], *,
                             cost_per_hour: float | None = None,
                             run_fields: dict[str, Any] | None = None, **fields: Any) -> Experiment:
    """An experiment whose seeds 1..n all succeeded with `scores` (val_bpb), finalized for
    real, on the track a submission of its preset gets (the tiny preset has no training cap:
    non-record). `fields` go to make_experiment, `run_fields` to every make_scored_run; with
    `cost_per_hour`, each seed had a pod at that price for one hour from POD_START."""
    seeds = list(range(1, len(scores) + 1))
    fields.setdefault("track", tracks.from_limits(
        kind="trainer", preset=fields.get("preset", "baseline"), config=fields.get("config") or {},
        env={}, gpu_count=None))
    experiment = make_experiment(session, seeds=seeds, **fields)
    for seed, score in zip(seeds, scores, strict=True):
        run = make_scored_run(session, experiment, seed=seed, val_bpb=score, **(run_fields or {}))
        if cost_per_hour is not None:
            make_pod(session, run, cost_per_hour=cost_per_hour, created_at=POD_START,
                     terminated_at=POD_START + timedelta(hours=1))
    assert experiment.id is not None and finalize_experiment(session, experiment.id)
    session.refresh(experiment)
    session.commit()  # ends the read: on SQLite an open transaction holds the write lock
    return experiment


def make_log(session: Session, run: Run, chunks: Sequence[str]) -> list[LogChunk]:
    """Store `chunks` (each whole lines) back to back as the run's train.log."""
    rows = []
    offset = run.log_offset
    for text in chunks:
        nbytes = len(text.encode("utf-8"))
        rows.append(LogChunk(run_id=run.id, offset=offset, nbytes=nbytes, text=text))
        offset += nbytes
    session.add_all(rows)
    run.log_offset = offset
    session.add(run)
    session.commit()
    return rows


def make_pod(session: Session, run: Run | None, *, cost_per_hour: float | None = None,
             status: str = "terminated", **fields: Any) -> Pod:
    """A pod of `run` (None: of no run, e.g. one an experiment shares); the run points at it."""
    pod = Pod(run_id=run.id if run else None, provider="runpod",
              name=f"caddie-run-{run.id if run else 'shared'}", status=status,
              cost_per_hour=cost_per_hour, **fields)
    session.add(pod)
    session.flush()
    if run is not None:
        run.pod_id = pod.id
        session.add(run)
    session.commit()
    return pod


def make_rerun(session: Session, record: Experiment, claimed: Sequence[float],
               measured: Sequence[float | None] = (), **fields: Any) -> Experiment:
    """A re-run of `record` (`reproduces_id`) whose seeds 1..n claim `claimed` bpb; the first
    len(measured) seeds succeeded with those scores (None: still running)."""
    claims = [{"seed": seed, "val_bpb": bpb, "val_loss": bpb * LOSS_PER_BPB, "bytes_total": 15_800_000,
               "train_time_s": 599.0, "eval_time_s": 120.0} for seed, bpb in enumerate(claimed, 1)]
    rerun = make_experiment(session, name=f"re-run: {record.name}", kind="script", seeds=range(1, len(claimed) + 1),
                            reproduces_id=record.id, source={"reproduce": {"claims": claims}}, **fields)
    for seed, bpb in enumerate(measured, 1):
        if bpb is None:
            make_run(session, rerun, seed=seed, status="running")
        else:
            make_scored_run(session, rerun, seed=seed, val_bpb=bpb)
    return rerun


def make_submitted(session: Session, name: str, minutes_ago: int, *, priority: int = 0,
                   provider: str = "runpod", run_seeds: Sequence[int] = (1,), run_status: str = "queued",
                   **fields: Any) -> Experiment:
    """An experiment in the queue's order: submitted `minutes_ago` before QUEUE_NOW, with one run
    per seed of `run_seeds`, each in `run_status` (none with `run_seeds=()`)."""
    experiment = make_experiment(session, name=name, priority=priority, provider=provider,
                                 created_at=QUEUE_NOW - timedelta(minutes=minutes_ago), **fields)
    for seed in run_seeds:
        make_run(session, experiment, seed=seed, status=run_status)
    return experiment


def make_busy_pod(session: Session, run: Run, *, frees_in: timedelta, life: timedelta) -> Pod:
    """A rented pod up for `run`, planned to live `life`, ending `frees_in` after QUEUE_NOW."""
    return make_pod(session, run, status="busy", host="10.0.0.1", external_id=f"x{run.id}",
                    deadline_at=QUEUE_NOW + frees_in, created_at=QUEUE_NOW + frees_in - life)


def settings_with(**update: Any) -> Settings:
    """The test settings with `update`'s fields replaced (caps, budgets)."""
    return get_settings().model_copy(update=update)
