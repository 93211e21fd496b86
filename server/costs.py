"""What rented pods cost: per run, per experiment, in all, and whether a new pod fits the caps.

A pod's price ($/hour) is the one its provider named when the pod came up: `Pod.cost_per_hour`,
or, for pods made before that column, results["worker"]["pod"]["cost_per_hour"] of its run;
pods of `local` and `ssh` cost nothing here. A pod is billed from its row's creation to its
confirmed termination (a little early: the row is made just before the provider is asked), or
to now while it lives. A pod belongs to the experiment it is shared by (`Pod.experiment_id`),
else to its run's.

`experiment_costs()` is the same sum as `spend(...).spent` written in SQL, one row per
experiment, so the leaderboard can show and sort by cost in the query that pages it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Float, Integer, cast, func, literal, or_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.expression import ColumnElement, FunctionElement, Subquery, case
from sqlalchemy.types import DateTime
from sqlmodel import Session, col, select

from server import presets
from server.config import Settings
from server.eligibility import MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS
from server.models import Pod, Run, as_utc, utcnow
from server.states import LIVE_POD_STATUSES
from server.workerfacts import WorkerFacts


@dataclass(frozen=True)
class Spend:
    """Dollars: `spent` so far (ended pods and live pods up to now), and `committed`, which
    counts each live pod until its deadline, the most it can still cost."""

    spent: float
    committed: float


def price_of(run: Run | None, pod: Pod | None = None) -> float | None:
    """$/hour of the run's pod: the pod's own column, else what the run's results kept."""
    if pod is not None and pod.cost_per_hour is not None:
        return pod.cost_per_hour
    return WorkerFacts.from_results(run.results if run else None).pod.cost_per_hour


def pod_cost(pod: Pod, price: float | None, now: datetime | None = None) -> tuple[float, float]:
    """(spent, committed) dollars of one pod at `price` $/hour."""
    if not price:
        return 0.0, 0.0
    now = now or utcnow()
    start = as_utc(pod.created_at)
    live = pod.status in LIVE_POD_STATUSES
    end = now if live else as_utc(pod.terminated_at or pod.updated_at)
    spent = price * max(0.0, (end - start).total_seconds()) / 3600
    if not live or pod.deadline_at is None:
        return spent, spent
    until = max(end, as_utc(pod.deadline_at))
    return spent, price * (until - start).total_seconds() / 3600


def spend(session: Session, *, experiment_id: int | None = None, now: datetime | None = None) -> Spend:
    """Spend of every pod with a known price, or of one experiment's pods."""
    spent = committed = 0.0
    for pod, run in session.exec(_pods_of(experiment_id)).all():
        s, c = pod_cost(pod, price_of(run, pod), now)
        spent, committed = spent + s, committed + c
    return Spend(round(spent, 6), round(committed, 6))


def run_cost(session: Session, run: Run, now: datetime | None = None) -> float | None:
    """Dollars the run's pod has cost so far; None when its price is unknown, it had none, or
    it shares its experiment's pod (that pod's cost is the experiment's, not one seed's)."""
    pod = session.get(Pod, run.pod_id) if run.pod_id is not None else None
    return _own_cost(run, pod, now)


def run_costs(session: Session, runs: Sequence[Run], now: datetime | None = None,
              ) -> dict[int | None, float | None]:
    """`run_cost` of each of `runs`, by run id, reading their pods in one query."""
    pod_ids = [run.pod_id for run in runs if run.pod_id is not None]
    pods: dict[int | None, Pod] = {pod.id: pod for pod in session.exec(select(Pod).where(col(Pod.id).in_(pod_ids)))} \
        if pod_ids else {}
    return {run.id: _own_cost(run, pods.get(run.pod_id), now) for run in runs}


def _own_cost(run: Run, pod: Pod | None, now: datetime | None) -> float | None:
    price = price_of(run, pod)
    if price is None or pod is None or pod.experiment_id is not None:
        return None
    return round(pod_cost(pod, price, now)[0], 6)


def _pods_of(experiment_id: int | None) -> Any:
    """(Pod, its Run or None) of one experiment, or of all when `experiment_id` is None."""
    query = select(Pod, Run).outerjoin(Run, col(Pod.run_id) == Run.id)
    return query if experiment_id is None else query.where(_experiment_of_pod() == experiment_id)


def costs_by_experiment(session: Session, experiment_ids: Sequence[int | None],
                        now: datetime | None = None) -> dict[int, float | None]:
    """`experiment_cost` of each experiment that had a pod, in one query."""
    if not experiment_ids:
        return {}
    spent = experiment_costs(now, experiment_ids)
    return {experiment_id: round(cost, 6) if cost is not None else None
            for experiment_id, cost in session.exec(select(spent.c.experiment_id, spent.c.cost_usd))}


def experiment_costs(now: datetime | None = None,
                     experiment_ids: Sequence[int | None] | None = None) -> Subquery:
    """Columns `experiment_id` and `cost_usd`: dollars spent so far on each experiment's pods
    with a known price (NULL when none has one), as `spend(...).spent` counts them; of every
    experiment, or of those in `experiment_ids` (and perhaps a few more)."""
    now_value = literal(now or utcnow(), DateTime(timezone=True))
    live = col(Pod.status).in_(LIVE_POD_STATUSES)
    end = case((live, now_value), else_=func.coalesce(Pod.terminated_at, Pod.updated_at))
    seconds = _epoch_seconds(end) - _epoch_seconds(col(Pod.created_at))
    price = func.coalesce(col(Pod.cost_per_hour),
                          col(Run.results)[("worker", "pod", "cost_per_hour")].as_float())
    cost = price * case((seconds > 0, seconds), else_=0.0) / 3600
    # Cast: a bare COALESCE has no type affinity, and SQLite then builds no index on the
    # grouped result for the join it goes into, scanning it once per experiment.
    experiment_id = cast(_experiment_of_pod(), Integer).label("experiment_id")
    query = (select(experiment_id, func.sum(cost).label("cost_usd"))
             .select_from(Pod).outerjoin(Run, col(Pod.run_id) == Run.id).group_by(experiment_id))
    if experiment_ids is not None:
        # Both columns are indexed; the COALESCE is not.
        query = query.where(or_(col(Run.experiment_id).in_(experiment_ids),
                                col(Pod.experiment_id).in_(experiment_ids)))
    return query.subquery("experiment_costs")


def _experiment_of_pod() -> ColumnElement[int]:
    return func.coalesce(col(Pod.experiment_id), col(Run.experiment_id))


class _epoch_seconds(FunctionElement[float]):  # noqa: N801 (an SQL function's name)
    """Seconds since 1970 of a timestamp column, in each dialect's own words."""

    type = Float()
    inherit_cache = True


@compiles(_epoch_seconds)
def _epoch_seconds_default(element: _epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    return f"EXTRACT(EPOCH FROM {compiler.process(element.clauses, **kw)})"


@compiles(_epoch_seconds, "sqlite")
def _epoch_seconds_sqlite(element: _epoch_seconds, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLAlchemy stores SQLite datetimes as UTC text; julianday counts days since 4714 BC.
    return f"((julianday({compiler.process(element.clauses, **kw)}) - 2440587.5) * 86400.0)"


def estimate(price_per_hour: float, seconds: float) -> float:
    """Dollars a pod at that price costs if it lives `seconds`: the figure shown before launch."""
    return round(price_per_hour * seconds / 3600, 6)


class Estimate(BaseModel):
    """What an experiment may cost before it is submitted: each seed's pod for as long as it
    may live (training cap + evaluation cap + CADDIE_RUN_GRACE_S + CADDIE_POD_MARGIN_S, the
    life the budget caps charge a new pod), at the price the provider is expected to ask."""

    preset: str
    provider: str
    seeds: int
    arms: int  # the control and each ablation variant run every seed
    runs: int  # seeds x arms
    gpu_count: int
    seconds_per_seed: float  # at most: training cap + evaluation cap + grace + pod margin
    usd_per_seed: float
    total_seconds: float
    total_usd: float
    price_per_hour: float  # dollars for `gpu_count` GPUs
    price_source: str  # where the price comes from


def estimate_experiment(settings: Settings, *, preset: str, provider: str, seeds: int,
                        arms: int = 1, gpu_count: int | None = None,
                        max_wallclock_seconds: float | None = None) -> Estimate:
    """The estimate for `seeds` runs in each of `arms` (an ablation's control and variants) of
    `preset` (or a training cap of `max_wallclock_seconds`) on `provider` with `gpu_count`
    GPUs (None: the provider's default)."""
    wallclock = max_wallclock_seconds or _preset_wallclock(preset)
    seconds = wallclock + MAX_EVAL_SECONDS + settings.run_grace_s + settings.pod_margin_s
    if provider == "runpod":
        gpus = gpu_count or settings.runpod_gpu_count
        price = settings.runpod_price_per_hour * gpus / settings.runpod_gpu_count
        source = (f"CADDIE_RUNPOD_PRICE_PER_HOUR: ${settings.runpod_price_per_hour:,.2f}/hour "
                  f"for {settings.runpod_gpu_count} GPUs")
        if gpus != settings.runpod_gpu_count:
            source += f", scaled to {gpus}"
    else:
        gpus, price = gpu_count or 1, 0.0
        source = f"{provider} hosts are the operator's own: no charge"
    runs = seeds * arms
    return Estimate(
        preset=preset, provider=provider, seeds=seeds, arms=arms, runs=runs, gpu_count=gpus,
        seconds_per_seed=seconds, usd_per_seed=round(estimate(price, seconds), 2),
        total_seconds=seconds * runs, total_usd=round(estimate(price, seconds) * runs, 2),
        price_per_hour=round(price, 4), price_source=source)


def _preset_wallclock(preset: str) -> float:
    """The preset's training cap in seconds (0, "no cap" to the trainer, counts as the rule's)."""
    schema = presets.load_schema()
    field = schema["fields"].get("max_wallclock_seconds", {})
    value = schema["presets"][preset].get("max_wallclock_seconds", field.get("default"))
    return float(value) if isinstance(value, (int, float)) and value > 0 else MAX_TRAIN_SECONDS


def over_budget(session: Session, *, cap: float | None, cost: float, experiment_id: int | None = None,
                what: str = "the budget") -> tuple[str, bool] | None:
    """None when a new pod of `cost` dollars fits the cap; else (reason, final): final when it
    can never fit (what is spent already leaves no room), not final when live pods may yet
    come in under their worst case and free room (the run waits)."""
    if cap is None:
        return None
    now = spend(session, experiment_id=experiment_id)
    if now.committed + cost <= cap:
        return None
    reason = (f"a pod estimated at ${cost:,.2f} would pass {what} of ${cap:,.2f} "
              f"(${now.spent:,.2f} spent, ${now.committed:,.2f} committed)")
    return reason, now.spent + cost > cap


