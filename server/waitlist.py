"""The line of experiments waiting for pods: its order, each experiment's place and estimated
start, and the two caps that hold experiments back (pods per provider, running experiments).

The order is priority (higher first), then submission time, then id. The worker's
provisioning step asks `pods_ahead` before it rents a pod, so the line shown is the line served.
"""

import heapq
import statistics
from collections import defaultdict
from datetime import datetime, timedelta

from pydantic import BaseModel
from sqlalchemy import ColumnElement, and_, func, or_
from sqlmodel import Session, col, select

from server.config import Settings, get_settings
from server.models import Experiment, Pod, Run, as_utc, utcnow
from server.states import LIVE_POD_STATUSES, OPEN_EXPERIMENT_STATUSES, RunStatus

RECENT_PODS = 50  # pods whose planned life gives the typical time a run holds a pod
# Providers whose pods are rented: CADDIE_MAX_PODS and CADDIE_MAX_RUNNING_EXPERIMENTS apply.
RENTED_PROVIDERS = ("runpod",)


class QueueEntry(BaseModel):
    position: int  # 1-based place in the line
    experiment_id: int
    name: str
    author: str
    provider: str
    priority: int
    created_at: datetime
    waiting_runs: int  # queued, or provisioning without a host yet
    # When its first waiting run should get a pod if every pod lives to its deadline; None
    # when unknown (no pod's life to go by, or held by the running-experiments cap).
    estimated_start: datetime | None
    held: str | None  # why it waits beyond pods (the running-experiments cap), if it does


def line_key(experiment: Experiment) -> tuple[int, datetime, int]:
    """Sort key of the line: priority (higher first), then submission time, then id."""
    assert experiment.id is not None
    return (-experiment.priority, experiment.created_at, experiment.id)


def queue(session: Session, *, now: datetime | None = None,
          settings: Settings | None = None) -> list[QueueEntry]:
    """Experiments with runs waiting for a pod, in the order they get pods."""
    settings = settings or get_settings()
    now = now or utcnow()
    waiting = _waiting_runs(session)
    experiments = sorted(_experiments(session, set(waiting)), key=line_key)
    held = _held(session, settings)
    starts = _estimated_starts(session, experiments, waiting, held, now, settings)
    return [
        QueueEntry(position=position, experiment_id=e.id, name=e.name, author=e.author,
                   provider=e.provider, priority=e.priority, created_at=e.created_at,
                   waiting_runs=len(waiting[e.id]), estimated_start=starts.get(e.id),
                   held=_held_reason(settings) if e.id in held else None)
        for position, e in enumerate(experiments, start=1) if e.id is not None
    ]


def pods_ahead(session: Session, pod: Pod, settings: Settings | None = None) -> int:
    """Live pods of the pod's provider that are up (asked of the provider) or whose experiment
    is ahead in line; the worker rents `pod` only while this is below CADDIE_MAX_PODS. An
    experiment held by CADDIE_MAX_RUNNING_EXPERIMENTS sees the cap as full."""
    settings = settings or get_settings()
    mine = _pod_experiment(session, pod)
    if mine is not None and not admitted(session, mine, settings):
        return settings.max_pods
    rows = session.exec(
        select(Pod, Experiment)
        .join(Run, col(Run.id) == Pod.run_id, isouter=True)
        # A shared pod names its experiment; a pod of one run, through its run.
        .join(Experiment, col(Experiment.id) == func.coalesce(Pod.experiment_id, Run.experiment_id),
              isouter=True)
        .where(Pod.provider == pod.provider, Pod.id != pod.id,
               col(Pod.status).in_(LIVE_POD_STATUSES))
    ).all()
    return sum(1 for other, experiment in rows if _before(other, experiment, pod, mine))


def admitted(session: Session, experiment: Experiment, settings: Settings | None = None) -> bool:
    """Whether the running-experiments cap lets the experiment's runs take pods."""
    settings = settings or get_settings()
    return experiment.id not in _held(session, settings)


def _before(other: Pod, other_experiment: Experiment | None, pod: Pod,
            mine: Experiment | None) -> bool:
    if other.host is not None or other.external_id is not None:
        return True  # already asked of the provider: it holds a place whatever its priority
    if other_experiment is None or mine is None:
        return (other.id or 0) < (pod.id or 0)
    return (*line_key(other_experiment), other.id or 0) < (*line_key(mine), pod.id or 0)


def _pod_experiment(session: Session, pod: Pod) -> Experiment | None:
    experiment_id = pod.experiment_id
    if experiment_id is None and pod.run_id is not None:
        run = session.get(Run, pod.run_id)
        experiment_id = run.experiment_id if run is not None else None
    return session.get(Experiment, experiment_id) if experiment_id is not None else None


def _waiting_runs(session: Session) -> dict[int, list[Run]]:
    """Runs still waiting for a pod, by experiment: queued, or provisioning with no pod asked
    of the provider yet (no host, no provider id)."""
    rows = session.exec(
        select(Run).join(Pod, col(Pod.id) == Run.pod_id, isouter=True)
        .where(or_(col(Run.status) == RunStatus.queued,
                   and_(col(Run.status) == RunStatus.provisioning, _pod_not_asked())))
        .order_by(col(Run.id))
    ).all()
    grouped: dict[int, list[Run]] = defaultdict(list)
    for run in rows:
        grouped[run.experiment_id].append(run)
    return grouped


def _experiments(session: Session, ids: set[int] | None) -> list[Experiment]:
    query = select(Experiment).where(
        col(Experiment.status).in_(OPEN_EXPERIMENT_STATUSES))
    if ids is not None:
        if not ids:
            return []
        query = query.where(col(Experiment.id).in_(ids))
    return list(session.exec(query).all())


def _held(session: Session, settings: Settings) -> set[int]:
    """Experiments the running-experiments cap holds back: the cap's places go first to
    experiments already holding a pod (waiting for more or not), then down the line. Only
    experiments on a provider that rents pods take or wait for a place."""
    cap = settings.max_running_experiments
    if cap is None:
        return set()
    line = [e for e in sorted(_experiments(session, None), key=line_key)
            if e.provider in RENTED_PROVIDERS]
    if not line:
        return set()
    started = _started(session, [e.id for e in line if e.id is not None])
    places = cap - len(started)
    held = set()
    for experiment in line:
        if experiment.id in started:
            continue
        if places > 0:
            places -= 1
        else:
            assert experiment.id is not None
            held.add(experiment.id)
    return held


def _started(session: Session, experiment_ids: list[int]) -> set[int]:
    """Experiments with a run past waiting: it holds a pod, or has ended."""
    rows = session.exec(
        select(Run.experiment_id).join(Pod, col(Pod.id) == Run.pod_id, isouter=True)
        .where(col(Run.experiment_id).in_(experiment_ids),
               col(Run.status) != RunStatus.queued,
               or_(col(Run.status) != RunStatus.provisioning, ~_pod_not_asked()))
    ).all()
    return set(rows)


def _pod_not_asked() -> ColumnElement[bool]:
    """SQL: the run's pod (joined, maybe absent) has neither a host nor a provider id."""
    return and_(col(Pod.host).is_(None), col(Pod.external_id).is_(None))


def _estimated_starts(session: Session, line: list[Experiment], waiting: dict[int, list[Run]],
                      held: set[int], now: datetime,
                      settings: Settings) -> dict[int, datetime | None]:
    """Hand each provider's pod slots down the line, each waiting run holding its slot for a
    pod's typical planned life; an experiment starts when its first waiting run gets one."""
    starts: dict[int, datetime | None] = {}
    by_provider: dict[str, list[Experiment]] = defaultdict(list)
    for experiment in line:
        by_provider[experiment.provider].append(experiment)
    for provider, experiments in by_provider.items():
        slots = _slots(session, provider, now, settings)
        life = _typical_life(session, provider)
        for experiment in experiments:
            assert experiment.id is not None
            if experiment.id in held:
                starts[experiment.id] = None
                continue
            first: datetime | None = None
            for index, _run in enumerate(waiting[experiment.id]):
                free = _take(slots, life)
                first = free if index == 0 else first
            starts[experiment.id] = first
    return starts


# A slot is (sort key, free at); None = unknown, sorted last.
Slot = tuple[float, datetime | None]


def _slots(session: Session, provider: str, now: datetime,
           settings: Settings) -> list[Slot] | None:
    """When each of the provider's pod slots frees up; None: no cap (every run starts now)."""
    cap = _pod_cap(provider, settings)
    if cap is None:
        return None
    deadlines = session.exec(
        select(Pod.deadline_at).where(
            Pod.provider == provider,
            col(Pod.status).in_(LIVE_POD_STATUSES),
            or_(col(Pod.host).is_not(None), col(Pod.external_id).is_not(None)))
    ).all()
    frees = [max(as_utc(d), now) if d is not None else None for d in deadlines]
    frees += [now] * max(0, cap - len(frees))
    slots = [_slot(free) for free in frees]
    heapq.heapify(slots)
    return slots


def _take(slots: list[Slot] | None, life: timedelta | None) -> datetime | None:
    if slots is None:
        return utcnow()
    if not slots:
        return None
    _key, free = heapq.heappop(slots)
    heapq.heappush(slots, _slot(free + life if free is not None and life is not None else None))
    return free


def _slot(free: datetime | None) -> Slot:
    return (free.timestamp() if free is not None else float("inf"), free)


def _pod_cap(provider: str, settings: Settings) -> int | None:
    """Pods the provider runs at once: rented pods are capped by CADDIE_MAX_PODS, ssh by its
    hosts; the local provider has no cap."""
    if provider == "runpod":
        return settings.max_pods
    if provider == "ssh":
        return len([host for host in settings.ssh_hosts.split(",") if host.strip()])
    return None


def _typical_life(session: Session, provider: str) -> timedelta | None:
    """The median planned life (deadline − creation) of the provider's recent pods."""
    rows = session.exec(
        select(Pod.created_at, Pod.deadline_at)
        .where(Pod.provider == provider, col(Pod.deadline_at).is_not(None))
        .order_by(col(Pod.id).desc()).limit(RECENT_PODS)
    ).all()
    lives = [(as_utc(deadline) - as_utc(created)).total_seconds()
             for created, deadline in rows if deadline is not None]
    return timedelta(seconds=statistics.median(lives)) if lives else None


def _held_reason(settings: Settings) -> str:
    return (f"{settings.max_running_experiments} experiments are running, the cap "
            f"(CADDIE_MAX_RUNNING_EXPERIMENTS)")
