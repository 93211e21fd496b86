"""The leaderboard: finished experiments ranked by mean val_bpb, each with every seed.

Each track has its own board (`Track`; the record track by default): a non-record run never
ranks among 10-minute records. By default a board holds the finished experiments whose score
Caddie measured itself (`score_source`, below); `unverified` makes it the board of every score,
those a participant's script printed and those an import read from the submission's logs
included (each entry says which). The rank is the place on that board, by mean val_bpb:
filters (author, preset, provider, eligible) hide rows and never renumber them. Experiments
with no succeeded seed have no score and no rank, and are listed only when asked for (`failed`).

Five queries per page whatever its size and order: the count, the page of experiments, then
the runs, the pod costs and the re-runs of all of them at once (and each listed re-run's seeds,
for its verdict). Every order is sorted and paged in SQL: the
page query ranks every matching experiment (a window over mean val_bpb, so an entry keeps its
rank in any order), computes the sorted value (a column, a number of the `stats` JSON, or, for
maxima over seeds and cost, one GROUP BY over runs or pods joined only for that order), sorts
and cuts the page.
"""

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeVar

from pydantic import BaseModel
from sqlalchemy import Select, SQLColumnExpression, and_, case, func
from sqlalchemy.sql.expression import ColumnElement, Subquery
from sqlmodel import Session, col, select

from server import rerun
from server.costs import costs_by_experiment, experiment_costs
from server.models import Experiment, Run
from server.policies import CONTROL, counted_runs
from server.records import IMPORT_PROVIDER
from server.reference import reference_bpb
from server.states import ExperimentStatus, RunStatus
from server.statistics import Units
from server.tracks import NON_RECORD_TRACK, RECORD_TRACK
from server.waiver import granted_rule
from server.workerfacts import WorkerFacts

Number = TypeVar("Number", int, float)


class LeaderboardOrder(StrEnum):
    """What the board is sorted by. Entries without the value go last in either direction;
    ties keep the rank order."""

    rank = "rank"  # mean val_bpb
    delta = "delta"  # Δ nats vs the reference
    p = "p"
    seeds = "seeds"  # seeds that succeeded
    bytes = "bytes"  # max bytes_total
    train = "train"  # max train time
    eval = "eval"  # max eval time
    cost = "cost"  # dollars spent on its pods
    date = "date"  # finished_at
    name = "name"  # case-insensitive
    author = "author"  # case-insensitive


# Where an experiment's val_bpb comes from, as the board and the API name it.
SCORE_MEASURED = "measured by Caddie"  # the bundled trainer, run on a pod the worker verified
SCORE_SCRIPT_LOG = "printed by the participant's script"  # bytes and times measured, score not
SCORE_SUBMISSION_LOGS = "read from the submission's logs"  # an import: nothing re-measured


def score_source(*, kind: str, provider: str) -> str:
    """Who produced the experiment's val_bpb (one of the SCORE_* phrases)."""
    if provider == IMPORT_PROVIDER:
        return SCORE_SUBMISSION_LOGS
    return SCORE_MEASURED if kind == "trainer" else SCORE_SCRIPT_LOG


def _verified() -> ColumnElement[bool]:
    """SQL twin of `score_source(...) == SCORE_MEASURED`."""
    return and_(col(Experiment.kind) == "trainer", col(Experiment.provider) != IMPORT_PROVIDER)


class Track(StrEnum):
    """The boards: each track ranks on its own (server/tracks.py)."""

    record = RECORD_TRACK  # 10 minutes on 8×H100, 16 MB
    non_record = NON_RECORD_TRACK  # 16 MB, any time or hardware


TRACK_LABELS = {Track.record: "record track: 10 minutes on 8×H100, 16 MB",
                Track.non_record: "non-record track: 16 MB, unlimited compute"}


class Against(BaseModel):
    """The reference of a stored test (`stats["reference"]`), as far as it was stored."""

    kind: str | None  # "record" (the track's standing record), "experiment", "value"
    name: str | None  # the reference experiment's name
    experiment_id: int | None
    val_bpb: float | None  # its score, bits per byte
    date: str | None  # its record date, YYYY-MM-DD
    source: str | None  # why this reference, in words
    units: str | None  # of the test: nats_per_token, nats_per_byte or bits_per_byte


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
    pod: str | None  # the pod's name at its provider, e.g. caddie-run-12
    gpu: str | None  # as the worker's nvidia-smi saw it: "8× NVIDIA H100 80GB HBM3"
    superseded: bool  # failed, and a retry or replacement stands in for it


class RerunOutcome(BaseModel):
    """The newest re-run of an entry (`server.rerun`): its experiment and its verdict."""

    experiment_id: int  # the re-run's own experiment
    outcome: str  # reproduced / not reproduced / inconclusive / running
    headline: str  # the outcome and what failed, e.g. "not reproduced: bytes"


class LeaderboardEntry(BaseModel):
    # The place on the board (1 = lowest mean val_bpb; of measured scores, or of every score
    # with `unverified`), whatever the filters; None when unscored.
    rank: int | None
    experiment_id: int
    name: str
    author: str
    preset: str
    provider: str
    track: str  # the board it ranks on (Track)
    kind: str  # "trainer" or "script" (imports are "script")
    verified: bool  # Caddie measured the score itself
    score_source: str  # one of the SCORE_* phrases
    finished_at: datetime | None
    n: int  # seeds that succeeded
    mean_val_bpb: float | None
    std_val_bpb: float | None  # sample standard deviation (ddof=1); None below 2 scores
    max_bytes_total: int | None  # over succeeded seeds
    max_train_time_s: float | None
    max_eval_time_s: float | None
    # The stored test's (the reference chosen at submission, else the track's standing record
    # at its date: `against` says which): mean − reference in nats, per token or per byte as
    # `delta_units` says; a record wants <= −0.005.
    delta_nats: float | None
    delta_units: str | None  # "nats_per_token" or "nats_per_byte"
    p: float | None  # one-sided p of that improvement
    against: Against | None  # what Δ and p are against; None before a test
    cost_usd: float | None  # spent on its pods so far; None when no pod had a price
    eligible: bool  # Caddie's verdict
    accepted: bool | None  # an import: the challenge's (on its leaderboard); None: our own
    reasons: list[str]
    # Eligible by the systems-only waiver (server/waiver.py): its verdict in words; else None.
    waiver: str | None = None
    rerun: RerunOutcome | None  # its newest compliance re-run; None when never re-run
    seeds: list[LeaderboardSeed]


class LeaderboardPublic(BaseModel):
    data: list[LeaderboardEntry]
    count: int  # matching experiments over all pages


def read_leaderboard(
    session: Session,
    *,
    limit: int,
    offset: int,
    track: Track = Track.record,
    eligible_only: bool = False,
    unverified: bool = False,
    failed: bool = False,
    provider: str | None = None,
    preset: str | None = None,
    author: str | None = None,
    order: LeaderboardOrder = LeaderboardOrder.rank,
    desc: bool = False,
) -> LeaderboardPublic:
    """The page [offset, offset + limit) of the `track`'s board in `order`: of scores Caddie
    measured, or of every score with `unverified`; `failed` adds the unscored experiments;
    the other filters hide rows and never change a rank."""
    board_conditions: list[ColumnElement[bool]] = [
        col(Experiment.status) == ExperimentStatus.finished,
        col(Experiment.track) == Track(track).value]
    if not unverified:
        board_conditions.append(_verified())
    conditions = list(board_conditions)
    if not failed:
        conditions.append(col(Experiment.n_succeeded) > 0)
    if eligible_only:
        conditions.append(col(Experiment.eligible).is_(True))
    for column, value in ((Experiment.provider, provider), (Experiment.preset, preset),
                          (Experiment.author, author)):
        if value is not None:
            conditions.append(col(column) == value)
    count = session.exec(select(func.count()).select_from(Experiment).where(*conditions)).one()
    board = _board(board_conditions, conditions, order)
    key = board.c.key
    rows = session.exec(
        select(Experiment, board.c.position)
        .join(board, board.c.id == Experiment.id)
        .order_by(key.is_(None), key.desc() if desc else key, *RANK_ORDER)
        .offset(offset).limit(limit)
    ).all()
    ids = [experiment.id for experiment, _ in rows]
    runs = _runs_by_experiment(session, ids)
    spent = costs_by_experiment(session, ids)
    reruns = rerun.latest_outcomes(session, ids)
    entries = [_entry(experiment, runs[experiment.id], position, spent.get(experiment.id),
                      reruns.get(experiment.id))
               for experiment, position in rows]
    return LeaderboardPublic(data=entries, count=count)


# Lowest mean first; ties: the earlier finish, then the earlier submission.
RANK_ORDER = (col(Experiment.mean_val_bpb).is_(None), col(Experiment.mean_val_bpb),
              col(Experiment.finished_at), col(Experiment.id))


def _board(board_conditions: list[ColumnElement[bool]], conditions: list[ColumnElement[bool]],
           order: LeaderboardOrder) -> Subquery:
    """One row per experiment matching `conditions`: its id, its rank (`position`: its place
    among the scored experiments of the board, `board_conditions`, so no filter renumbers it;
    None when unscored), and `key`, the value it is sorted by. Aggregates over runs or pods are
    joined only when sorted by."""
    ranking = (select(col(Experiment.id).label("id"),
                      func.row_number().over(order_by=RANK_ORDER).label("position"))
               .where(*board_conditions, col(Experiment.mean_val_bpb).is_not(None))
               .subquery("ranking"))
    query: Select[*tuple[Any, ...]] = (select(col(Experiment.id).label("id"), ranking.c.position.label("position"))
             .outerjoin(ranking, ranking.c.id == Experiment.id))
    if order in MAXIMA:
        maxima = (select(col(Run.experiment_id).label("experiment_id"),
                         func.max(MAXIMA[order]).label("value"))
                  .where(col(Run.status) == RunStatus.succeeded, col(Run.variant) == CONTROL,
                         col(Run.superseded).is_(False))
                  .group_by(col(Run.experiment_id)).subquery("maxima"))
        query = query.add_columns(maxima.c.value.label("key")).outerjoin(
            maxima, maxima.c.experiment_id == Experiment.id)
    elif order is LeaderboardOrder.cost:
        spent = experiment_costs()
        query = query.add_columns(spent.c.cost_usd.label("key")).outerjoin(
            spent, spent.c.experiment_id == Experiment.id)
    else:
        query = query.add_columns(_experiment_key(order).label("key"))
    return query.where(*conditions).subquery("board")


# Orders by a maximum over the control's succeeded seeds (as _entry shows them).
MAXIMA: dict[LeaderboardOrder, Any] = {
    LeaderboardOrder.bytes: Run.bytes_total,
    LeaderboardOrder.train: Run.train_time_s,
    LeaderboardOrder.eval: Run.eval_time_s,
}


def _experiment_key(order: LeaderboardOrder) -> SQLColumnExpression[Any]:
    """The sort value of orders read from the experiment's own row."""
    stats = col(Experiment.stats)
    mean = col(Experiment.mean_val_bpb)
    if order is LeaderboardOrder.delta:
        # As _delta_nats: the stored delta, else (older stats) from the means, per byte (the
        # Welch reference's mean, else the reference value).
        reference = func.coalesce(stats["reference_mean"].as_float(),
                                  stats[("reference", "val_bpb")].as_float())
        return func.coalesce(_stored_delta(), (mean - reference) * math.log(2))
    columns: dict[LeaderboardOrder, SQLColumnExpression[Any]] = {
        LeaderboardOrder.rank: mean,
        LeaderboardOrder.p: stats["p"].as_float(),
        LeaderboardOrder.seeds: col(Experiment.n_succeeded),
        LeaderboardOrder.date: col(Experiment.finished_at),
        LeaderboardOrder.name: func.lower(Experiment.name),
        LeaderboardOrder.author: func.lower(Experiment.author),
    }
    return columns[order]


def _stored_delta() -> ColumnElement[Any]:
    """The `delta` stored in `stats`, in nats (bits per byte × ln 2)."""
    stats = col(Experiment.stats)
    delta = stats["delta"].as_float()
    bits = stats["units"].as_string() == Units.BITS_PER_BYTE.value
    return case((bits, delta * math.log(2)), else_=delta)


def _runs_by_experiment(session: Session, experiment_ids: list[int]) -> dict[int, list[Run]]:
    grouped: dict[int, list[Run]] = defaultdict(list)
    if experiment_ids:
        for run in session.exec(
            select(Run).where(col(Run.experiment_id).in_(experiment_ids)).order_by(col(Run.id))
        ):
            grouped[run.experiment_id].append(run)
    return grouped


def _entry(experiment: Experiment, runs: list[Run], position: int | None,
           cost_usd: float | None, latest_rerun: dict[str, Any] | None = None) -> LeaderboardEntry:
    """`position`: the rank (None off the ranking). The seeds are the control's (ablation
    variants are on the experiment's page)."""
    runs = [run for run in runs if run.variant == CONTROL]
    succeeded = [run for run in counted_runs(runs) if run.status == RunStatus.succeeded]
    source = score_source(kind=experiment.kind, provider=experiment.provider)
    test = experiment.stats or {}
    delta, delta_units = _delta_nats(test, experiment.mean_val_bpb)
    assert experiment.id is not None
    return LeaderboardEntry(
        rank=position,
        experiment_id=experiment.id,
        name=experiment.name,
        author=experiment.author,
        preset=experiment.preset,
        provider=experiment.provider,
        track=experiment.track,
        kind=experiment.kind,
        verified=source == SCORE_MEASURED,
        score_source=source,
        finished_at=experiment.finished_at,
        n=experiment.n_succeeded,
        mean_val_bpb=experiment.mean_val_bpb,
        std_val_bpb=experiment.std_val_bpb,
        max_bytes_total=_max(run.bytes_total for run in succeeded),
        max_train_time_s=_max(run.train_time_s for run in succeeded),
        max_eval_time_s=_max(run.eval_time_s for run in succeeded),
        delta_nats=delta,
        delta_units=delta_units,
        p=_number(test.get("p")),
        against=against(test),
        cost_usd=cost_usd,
        eligible=experiment.eligible,
        accepted=experiment.accepted,
        reasons=experiment.reasons,
        waiver=granted_rule(experiment.stats),
        rerun=RerunOutcome(experiment_id=latest_rerun["rerun_id"], outcome=latest_rerun["outcome"],
                           headline=latest_rerun["headline"]) if latest_rerun else None,
        seeds=[_seed(run) for run in runs],
    )


def against(test: dict[str, Any]) -> Against | None:
    """What `test` was against, from its stored reference; None before a test."""
    reference = test.get("reference")
    if not isinstance(reference, dict):
        return None
    score = reference.get("val_bpb")
    if score is None and reference.get("kind") != "value":
        score = test.get("reference_mean")

    def text(key: str) -> str | None:
        value = reference.get(key)
        return str(value) if value is not None else None

    experiment_id = reference.get("experiment_id")
    return Against(kind=text("kind"), name=text("name"), date=text("date"),
                   experiment_id=experiment_id if isinstance(experiment_id, int) else None,
                   val_bpb=_number(score), source=text("source"), units=_units(test))


def _units(test: dict[str, Any]) -> str | None:
    units = test.get("units")
    return str(units) if units is not None else None


def _delta_nats(test: dict[str, Any], mean: float | None) -> tuple[float | None, str | None]:
    """Mean minus the reference in nats, and per what: the stored `delta` in the test's units
    (bits per byte become nats per byte); a test stored without one: from the means, per
    byte."""
    delta, units = _number(test.get("delta")), _units(test)
    if delta is not None and units in (Units.NATS_PER_TOKEN, Units.NATS_PER_BYTE):
        return delta, units
    if delta is not None and units == Units.BITS_PER_BYTE:
        return delta * math.log(2), Units.NATS_PER_BYTE.value
    reference = reference_bpb(test)
    if reference is None or mean is None:
        return None, None
    return (mean - reference) * math.log(2), Units.NATS_PER_BYTE.value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _seed(run: Run) -> LeaderboardSeed:
    assert run.id is not None
    return LeaderboardSeed(
        run_id=run.id, seed=run.seed, status=run.status, val_bpb=run.val_bpb,
        val_loss=run.val_loss, bytes_total=run.bytes_total, train_time_s=run.train_time_s,
        eval_time_s=run.eval_time_s, eligible=run.eligible, reasons=run.reasons,
        pod=_pod_name(run), gpu=f"{run.gpu_count}× {run.gpu_name}" if run.gpu_name else None,
        superseded=run.superseded,
    )


def _pod_name(run: Run) -> str | None:
    return WorkerFacts.from_results(run.results).pod.name


def _max(values: Iterable[Number | None]) -> Number | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
