"""The one pod of a `share_pods` experiment, which its seeds take in turns.

The experiment's first waiting seed rents the pod as any run does (its Pod row carries the
experiment's id). When a seed ends, `hand_over` says whether the pod stays up for the next
one; a seed that finds it free (ready, its holder ended) takes it with `claim`, a
conditional update on the holder it saw, so two seeds never both get it. Each seed moves
the pod's deadline on by its own life.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from server.models import Pod, Run, as_utc, table_of, utcnow
from server.states import (
    FINAL_RUN_STATUSES,
    LIVE_POD_STATUSES,
    PodStatus,
    RunStatus,
)
from worker.providers import Provider

log = logging.getLogger(__name__)


def turn(session: Session, run: Run, experiment_id: int, life_s: float) -> Pod | str | None:
    """The run's turn on the experiment's pod: the Pod when it holds it now (renting done),
    a reason while it waits for it, None when this run rents it (the usual provisioning).
    `life_s`: the most seconds the run keeps the pod."""
    pods = list(session.exec(select(Pod).where(Pod.experiment_id == experiment_id,
                                               col(Pod.status).in_(LIVE_POD_STATUSES)).order_by(col(Pod.id))).all())
    pod = next((p for p in pods if p.run_id == run.id), None)
    if pod is not None and pod.host is None:
        return None  # it is renting the pod
    for free in pods if pod is None else []:
        if free.status == PodStatus.ready.value and _ended(session, free.run_id):
            pod = claim(session, run, free, life_s)
            if pod is not None:
                break
    if pod is not None:
        return pod
    if not pods and _first_waiting(session, experiment_id) == run.id:
        return None
    return (f"waiting for the experiment's pod {pods[0].name}: its seeds take turns on one pod"
            if pods else "waiting for the experiment's first seed to rent its pod")


def claim(session: Session, run: Run, pod: Pod, life_s: float) -> Pod | None:
    """Make the run the holder of a free shared pod and move its deadline on; None when
    another seed took it first (the update is conditional on the holder it saw)."""
    table = table_of(Pod)
    deadline_at = max(as_utc(pod.deadline_at), utcnow() + timedelta(seconds=life_s)) if pod.deadline_at else None
    claimed = session.execute(update(table).where(table.c.id == pod.id, table.c.run_id == pod.run_id,
                                                  table.c.status == PodStatus.ready.value)
                              .values(run_id=run.id, deadline_at=deadline_at, updated_at=utcnow()))
    session.commit()
    if claimed.rowcount != 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
        return None
    session.refresh(pod)
    log.info("run %s takes the experiment's pod %s from run %s", run.id, pod.name, pod.run_id)
    return pod


def hand_over(session: Session, run: Run, pod: Pod, provider: Provider, seed_life_s: Callable[[], float]) -> bool:
    """Whether an ended run's shared pod stays up for the experiment's next seed: one is
    waiting, and the pod got as far as this run's files (a pod that failed its preflight
    or could not be reached is given back). `seed_life_s`: the seconds a next seed needs
    of the pod, asked only when the pod could stay."""
    if pod.experiment_id is None or run.remote_dir is None or pod.status == PodStatus.requested.value:
        return False
    if pod.deadline_at is not None and as_utc(pod.deadline_at) <= utcnow():
        return False
    # A seed must not outlive the provider's own stop (RunPod's terminateAfter, fixed at creation):
    # then the pod is given back and the next seed rents a new one.
    stop_at = provider.stop_at(pod)
    if stop_at is not None and utcnow() + timedelta(seconds=seed_life_s()) > stop_at:
        log.info("run %s: pod %s ends at %s, too soon for another seed", run.id, pod.name, stop_at)
        return False
    waiting = select(Run.id).where(Run.experiment_id == pod.experiment_id, Run.id != run.id,
                                   col(Run.status).notin_(FINAL_RUN_STATUSES),
                                   col(Run.cancel_requested).is_(False))
    return session.exec(waiting).first() is not None


def _ended(session: Session, run_id: int | None) -> bool:
    run = session.get(Run, run_id) if run_id is not None else None
    return run is None or run.status in FINAL_RUN_STATUSES


def _first_waiting(session: Session, experiment_id: int) -> int | None:
    """The experiment's earliest seed that has no pod yet: the one that rents the shared pod."""
    waiting = [RunStatus.queued, RunStatus.provisioning]
    query = select(Run.id).where(Run.experiment_id == experiment_id, col(Run.status).in_(waiting),
                                 col(Run.cancel_requested).is_(False)).order_by(col(Run.id))
    return session.exec(query).first()
