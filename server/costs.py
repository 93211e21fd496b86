"""What rented pods cost: per run, per experiment, in all, and whether a new pod fits the caps.

A pod's price ($/hour) is the one its provider named when the pod came up, kept on its run as
results["worker"]["pod"]["cost_per_hour"]; pods of `local` and `ssh` cost nothing here. A pod
is billed from its row's creation to its confirmed termination (a little early: the row is
made just before the provider is asked), or to now while it lives.
"""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session, col, select

from server.models import Pod, Run, utcnow

LIVE_POD_STATUSES = ("requested", "starting", "ready", "busy")


@dataclass(frozen=True)
class Spend:
    """Dollars: `spent` so far (ended pods and live pods up to now), and `committed`, which
    counts each live pod until its deadline, the most it can still cost."""

    spent: float
    committed: float


def price_of(run: Run) -> float | None:
    pod = ((run.results or {}).get("worker") or {}).get("pod") or {}
    price = pod.get("cost_per_hour")
    return float(price) if isinstance(price, (int, float)) and not isinstance(price, bool) else None


def pod_cost(pod: Pod, price: float | None, now: datetime | None = None) -> tuple[float, float]:
    """(spent, committed) dollars of one pod at `price` $/hour."""
    if not price:
        return 0.0, 0.0
    now = now or utcnow()
    start = _utc(pod.created_at)
    live = pod.status in LIVE_POD_STATUSES
    end = now if live else _utc(pod.terminated_at or pod.updated_at)
    spent = price * max(0.0, (end - start).total_seconds()) / 3600
    if not live or pod.deadline_at is None:
        return spent, spent
    until = max(end, _utc(pod.deadline_at))
    return spent, price * (until - start).total_seconds() / 3600


def spend(session: Session, *, experiment_id: int | None = None, now: datetime | None = None) -> Spend:
    """Spend of every pod with a known price, or of one experiment's pods."""
    query: Any = select(Pod, Run).join(Run, col(Pod.run_id) == Run.id)
    if experiment_id is not None:
        query = query.where(Run.experiment_id == experiment_id)
    spent = committed = 0.0
    for pod, run in session.exec(query).all():
        s, c = pod_cost(pod, price_of(run), now)
        spent, committed = spent + s, committed + c
    return Spend(round(spent, 6), round(committed, 6))


def run_cost(session: Session, run: Run, now: datetime | None = None) -> float | None:
    """Dollars the run's pod has cost so far; None when its price is unknown or it had none."""
    price = price_of(run)
    pod = session.get(Pod, run.pod_id) if run.pod_id is not None else None
    if price is None or pod is None:
        return None
    return round(pod_cost(pod, price, now)[0], 6)


def estimate(price_per_hour: float, seconds: float) -> float:
    """Dollars a pod at that price costs if it lives `seconds`: the figure shown before launch."""
    return round(price_per_hour * seconds / 3600, 6)


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


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
