"""The leaderboard: finished experiments ranked by mean val_bpb, each with every seed.

Two queries per page whatever its size: the page of experiments (plus its count),
then the runs of all of them at once.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy import func
from sqlmodel import Session, col, select

from server.models import Experiment, Run
from server.states import ExperimentStatus, RunStatus

Number = TypeVar("Number", int, float)


class LeaderboardSeed(BaseModel):
    run_id: int
    seed: int
    status: str
    val_bpb: float | None  # bits per byte
    val_loss: float | None  # nats per token
    bytes_total: int | None
    train_time_s: float | None
    eval_time_s: float | None
    eligible: bool | None
    reasons: list[str]


class LeaderboardEntry(BaseModel):
    rank: int | None  # 1 = lowest mean val_bpb; None when no seed was scored
    experiment_id: int
    name: str
    author: str
    preset: str
    provider: str
    finished_at: datetime | None
    n: int  # seeds that succeeded
    mean_val_bpb: float | None
    std_val_bpb: float | None  # sample standard deviation (ddof=1); None below 2 scores
    max_bytes_total: int | None  # over succeeded seeds
    max_train_time_s: float | None
    max_eval_time_s: float | None
    delta_nats: float | None  # mean − reference, nats per byte; the record rule wants <= −0.005
    p: float | None  # one-sided p of the improvement over the reference (server/reference.py)
    eligible: bool
    reasons: list[str]
    seeds: list[LeaderboardSeed]


class LeaderboardPublic(BaseModel):
    data: list[LeaderboardEntry]
    count: int  # matching experiments over all pages


def read_leaderboard(
    session: Session,
    *,
    limit: int,
    offset: int,
    eligible_only: bool = False,
    provider: str | None = None,
    preset: str | None = None,
    author: str | None = None,
) -> LeaderboardPublic:
    conditions = [Experiment.status == ExperimentStatus.finished.value]
    if eligible_only:
        conditions.append(col(Experiment.eligible).is_(True))
    for column, value in ((Experiment.provider, provider), (Experiment.preset, preset),
                          (Experiment.author, author)):
        if value is not None:
            conditions.append(column == value)
    count = session.exec(select(func.count()).select_from(Experiment).where(*conditions)).one()
    mean = col(Experiment.mean_val_bpb)
    experiments = session.exec(
        select(Experiment).where(*conditions)
        .order_by(mean.is_(None), mean, col(Experiment.finished_at), col(Experiment.id))
        .offset(offset).limit(limit)
    ).all()
    runs = _runs_by_experiment(session, [e.id for e in experiments if e.id is not None])
    entries = [
        _entry(experiment, runs[experiment.id], offset + index + 1)
        for index, experiment in enumerate(experiments)
    ]
    return LeaderboardPublic(data=entries, count=count)


def _runs_by_experiment(session: Session, experiment_ids: list[int]) -> dict[int | None, list[Run]]:
    grouped: dict[int | None, list[Run]] = defaultdict(list)
    if experiment_ids:
        for run in session.exec(
            select(Run).where(col(Run.experiment_id).in_(experiment_ids)).order_by(col(Run.id))
        ):
            grouped[run.experiment_id].append(run)
    return grouped


def _entry(experiment: Experiment, runs: list[Run], position: int) -> LeaderboardEntry:
    succeeded = [run for run in runs if run.status == RunStatus.succeeded]
    assert experiment.id is not None
    return LeaderboardEntry(
        rank=position if experiment.mean_val_bpb is not None else None,
        experiment_id=experiment.id,
        name=experiment.name,
        author=experiment.author,
        preset=experiment.preset,
        provider=experiment.provider,
        finished_at=experiment.finished_at,
        n=experiment.n_succeeded,
        mean_val_bpb=experiment.mean_val_bpb,
        std_val_bpb=experiment.std_val_bpb,
        max_bytes_total=_max(run.bytes_total for run in succeeded),
        max_train_time_s=_max(run.train_time_s for run in succeeded),
        max_eval_time_s=_max(run.eval_time_s for run in succeeded),
        delta_nats=_delta_nats(experiment),
        p=(experiment.stats or {}).get("p"),
        eligible=experiment.eligible,
        reasons=experiment.reasons,
        seeds=[_seed(run) for run in runs],
    )


def _delta_nats(experiment: Experiment) -> float | None:
    """Mean minus the reference, in nats per byte (negative: better than the reference)."""
    stats = experiment.stats or {}
    reference = stats.get("reference_mean")
    if reference is None:
        reference = (stats.get("reference") or {}).get("val_bpb")
    if reference is None or experiment.mean_val_bpb is None:
        return None
    return (experiment.mean_val_bpb - reference) * math.log(2)


def _seed(run: Run) -> LeaderboardSeed:
    assert run.id is not None
    return LeaderboardSeed(
        run_id=run.id, seed=run.seed, status=run.status, val_bpb=run.val_bpb,
        val_loss=run.val_loss, bytes_total=run.bytes_total, train_time_s=run.train_time_s,
        eval_time_s=run.eval_time_s, eligible=run.eligible, reasons=run.reasons,
    )


def _max(values: Iterable[Number | None]) -> Number | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
