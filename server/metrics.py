"""Prometheus metrics, read from the database on each scrape (the database is the truth).

Exposition is the plain-text format (version 0.0.4); no client library is needed for gauges.
"""

from collections.abc import Iterable

from sqlalchemy import func
from sqlmodel import Session, col, select

from server import costs
from server.models import LogChunk, Pod, Run, as_utc, utcnow
from server.states import LIVE_POD_STATUSES, RunStatus

RUNNING = RunStatus.running


def runs_by_state(session: Session) -> dict[str, int]:
    counts = dict(session.exec(select(Run.status, func.count()).group_by(Run.status)).all())
    return {state.value: int(counts.get(state.value, 0)) for state in RunStatus}


def pods_alive(session: Session) -> dict[str, int]:
    rows = session.exec(
        select(Pod.provider, func.count())
        .where(col(Pod.status).in_(LIVE_POD_STATUSES))
        .group_by(Pod.provider)
    ).all()
    return {provider: int(n) for provider, n in rows}


def spend(session: Session) -> tuple[float, float]:
    """($/hour of the pods alive now, dollars spent on every pod so far).

    A pod's price is the one its provider named (Pod.cost_per_hour), else the one kept on its
    run (server/costs.py); pods of no known price (local, ssh) cost nothing.
    """
    rows = session.exec(select(Pod, Run).join(Run, col(Pod.run_id) == Run.id, isouter=True)).all()
    now = utcnow()
    per_hour = spent = 0.0
    for pod, run in rows:
        price = pod.cost_per_hour if pod.cost_per_hour is not None else (costs.price_of(run) if run else None)
        if not price:
            continue
        if pod.status in LIVE_POD_STATUSES:
            per_hour += price
        spent += costs.pod_cost(pod, price, now)[0]
    return round(per_hour, 6), round(spent, 6)


def log_lag_seconds(session: Session) -> float:
    """Seconds since the newest stored log line of any running run (0 when none runs).

    A running trainer logs every few seconds; a growing lag means the worker stopped
    pulling logs or the pod stopped writing them.
    """
    newest = session.exec(
        select(Run.id, func.max(LogChunk.created_at))
        .join(LogChunk, col(LogChunk.run_id) == Run.id, isouter=True)
        .where(Run.status == RUNNING)
        .group_by(col(Run.id))
    ).all()
    now = utcnow()
    lags = [(now - as_utc(seen)).total_seconds() for _, seen in newest if seen is not None]
    return max(lags, default=0.0)


def render(session: Session) -> str:
    """The metrics page: one HELP and TYPE line per metric, then its samples."""
    lines: list[str] = []
    states = runs_by_state(session)
    _gauge(lines, "caddie_runs", "Runs by lifecycle state.",
           ((f'state="{state}"', n) for state, n in states.items()))
    _gauge(lines, "caddie_queue_depth", "Runs waiting for a pod.", [("", states[RunStatus.queued])])
    alive = pods_alive(session)
    _gauge(lines, "caddie_pods_alive", "Pods not yet released or terminated, by provider.",
           ((f'provider="{p}"', n) for p, n in sorted(alive.items())) if alive else [("", 0)])
    per_hour, spent = spend(session)
    _gauge(lines, "caddie_spend_dollars_per_hour", "Dollars per hour of the pods alive now.",
           [("", per_hour)])
    _gauge(lines, "caddie_spent_dollars", "Dollars spent on pods so far (live pods up to now).",
           [("", spent)])
    _gauge(lines, "caddie_log_lag_seconds",
           "Seconds since the newest stored log line of any running run.",
           [("", round(log_lag_seconds(session), 3))])
    return "\n".join(lines) + "\n"


def _gauge(lines: list[str], name: str, help_text: str, samples: Iterable[tuple[str, float]]) -> None:
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} gauge")
    for labels, value in samples:
        lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")

