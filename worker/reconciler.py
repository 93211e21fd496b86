"""The periodic look over all runs (Celery beat → `caddie.reconcile`).

Wakes runs whose next check is due and whose lease is free, gives back pods of runs that
ended without releasing them (a worker died in between), ends rented pods the database does
not expect or that are past their deadline, and finalizes experiments whose runs have all
ended. Safe to run twice at once: every action is conditional on the row, and ending a pod
twice is harmless.
"""

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from server import notify
from server.errors import InvalidTransition
from server.models import Experiment, Pod, Run, as_utc, table_of, utcnow
from server.pods import move_pod
from server.states import (
    FINAL_RUN_STATUSES,
    LIVE_POD_STATUSES,
    OPEN_EXPERIMENT_STATUSES,
    PodStatus,
)
from worker.director import RunDirector
from worker.providers import ListedPod, Provider, get_provider

log = logging.getLogger(__name__)

# Providers whose pods are rented and can be listed; each is asked once per pass.
RENTING_PROVIDERS = ("runpod",)
# Listed statuses of pods that no longer exist (nothing to end, nothing billed).
_GONE = ("TERMINATED",)


def reconcile(director: RunDirector, *, enqueue: Callable[[int], object]) -> list[int]:
    """One pass; returns the ids of the runs it woke."""
    woken = wake_due_runs(director, enqueue=enqueue)
    release_stray_pods(director)
    end_unexpected_pods(director)
    finalize_ended_experiments(director)
    return woken


def wake_due_runs(director: RunDirector, *, enqueue: Callable[[int], object]) -> list[int]:
    """Enqueue a step for each live run that is due, and hold off its next wake meanwhile.

    The hold (a few reconcile intervals) keeps a queue that is slower than beat from filling
    with copies of the same wake; a step that runs sets next_check_at itself.
    """
    settings = director.settings
    now = utcnow()
    hold = now + timedelta(seconds=max(30.0, 6 * settings.reconcile_interval_s))
    table = table_of(Run)
    due = (
        table.c.status.notin_(FINAL_RUN_STATUSES),
        or_(table.c.next_check_at.is_(None), table.c.next_check_at <= now),
        or_(table.c.lease_owner.is_(None), table.c.lease_expires_at < now),
    )
    woken: list[int] = []
    with Session(director.engine) as session:
        ids = session.execute(select(table.c.id).where(*due).order_by(table.c.id)).scalars().all()
        for run_id in ids:
            claimed = session.execute(update(table).where(table.c.id == run_id, *due)
                                      .values(next_check_at=hold))
            session.commit()
            if claimed.rowcount == 1:  # type: ignore[attr-defined]  # a DML statement's Result is a CursorResult
                enqueue(run_id)
                woken.append(run_id)
    return woken


def release_stray_pods(director: RunDirector) -> None:
    with Session(director.engine) as session:
        query = select(Pod).join(Run, col(Pod.run_id) == Run.id).where(
            col(Pod.status).in_(LIVE_POD_STATUSES), col(Run.status).in_(FINAL_RUN_STATUSES))
        waiting = _waiting_experiments(session)
        run_ids = sorted({p.run_id for p in session.exec(query).all()
                          if p.run_id is not None and not _handed_over(p, waiting)})
    for run_id in run_ids:
        log.info("run %s ended but its pod was not given back; releasing it", run_id)
        try:
            director.finish(run_id)
        except Exception:
            log.exception("run %s: releasing its pod failed", run_id)


def end_unexpected_pods(director: RunDirector) -> list[str]:
    """Terminate every rented pod with our name prefix that no live run expects, or that is
    past its deadline; returns the provider ids it asked to end."""
    ended: list[str] = []
    for name in RENTING_PROVIDERS:
        provider = get_provider(name, director.settings)
        try:
            listed = provider.list_pods()
        except Exception as exc:
            log.warning("cannot list %s pods: %s", name, getattr(exc, "reason", type(exc).__name__))
            continue
        if listed is not None:
            ended += _end_pods(director, provider, listed)
    return ended


def _end_pods(director: RunDirector, provider: Provider, listed: list[ListedPod]) -> list[str]:
    prefix = director.settings.pod_prefix
    ours = [p for p in listed if p.name.startswith(prefix) and p.status not in _GONE]
    with Session(director.engine) as session:
        rows = list(session.exec(select(Pod).where(Pod.provider == provider.name,
                                                   col(Pod.status).in_(LIVE_POD_STATUSES))).all())
        live_runs = set(session.exec(select(Run.id).where(col(Run.status).notin_(FINAL_RUN_STATUSES))).all())
        waiting = _waiting_experiments(session)
    now = utcnow()
    expected = {}
    for row in rows:
        wanted = row.run_id in live_runs or _handed_over(row, waiting)
        if wanted and (row.deadline_at is None or as_utc(row.deadline_at) > now):
            expected[row.name] = row.external_id
    doomed = [p for p in ours if p.name not in expected
              or expected[p.name] not in (None, p.external_id)]
    listed_ids = {p.external_id for p in ours}
    # Rows the provider no longer lists: confirm they are gone so the run stops waiting on them.
    vanished = [r.external_id for r in rows if r.external_id and r.external_id not in listed_ids]
    ended = []
    for external_id, why in [(p.external_id, f"{p.name} ({p.status})") for p in doomed] + \
                            [(e, "no longer listed") for e in vanished]:
        ended.append(external_id)
        log.warning("ending %s pod %s %s: no live run expects it or it is past its deadline",
                    provider.name, external_id, why)
        if _terminate(director, provider, external_id):  # confirmed once: one message per pod
            notify.pod_terminated(provider.name, external_id, why, _stop_reason(why, rows, live_runs, now))
    return ended


def _stop_reason(why: str, rows: list[Pod], live_runs: set[int], now: datetime) -> str:
    """Which safety stop ended the pod, in words for the operator's notification."""
    if why == "no longer listed":
        return "the provider no longer lists it (its provider deadline or its watchdog ended it)"
    name = why.rsplit(" (", 1)[0]
    if any(r.name == name and r.run_id in live_runs and r.deadline_at is not None and as_utc(r.deadline_at) <= now
           for r in rows):
        return "it is past its deadline"
    return "no live run expects it"


def _waiting_experiments(session: Session) -> set[int]:
    """Experiments with a live seed that has not asked to be cancelled."""
    query = select(Run.experiment_id).where(col(Run.status).notin_(FINAL_RUN_STATUSES), col(Run.cancel_requested).is_(False))
    return set(session.exec(query).all())


def _handed_over(pod: Pod, waiting: set[int]) -> bool:
    """A shared pod between two seeds: free (ready), its experiment's next seed about to take it."""
    return pod.experiment_id is not None and pod.status == PodStatus.ready.value and pod.experiment_id in waiting


def _terminate(director: RunDirector, provider: Provider, external_id: str) -> bool:
    """Ask the provider to end the pod; mark its row terminated only once the provider confirms.
    True when it confirmed."""
    try:
        confirmed = provider.terminate(external_id)
    except Exception as exc:
        log.warning("ending pod %s failed (tried again next pass): %s", external_id,
                    getattr(exc, "reason", type(exc).__name__))
        return False
    if not confirmed:
        return False
    with Session(director.engine) as session:
        for pod in session.exec(select(Pod).where(Pod.external_id == external_id,
                                                  col(Pod.status).in_(LIVE_POD_STATUSES))).all():
            try:
                move_pod(session, pod, PodStatus.terminated, why="the provider confirmed it is gone")
            except InvalidTransition as exc:  # released meanwhile by its run: nothing is left to end
                log.info("%s", exc)
                continue
            provider.forget(pod)
    return True


def finalize_ended_experiments(director: RunDirector) -> None:
    with Session(director.engine) as session:
        live = select(Run.experiment_id).where(col(Run.status).notin_(FINAL_RUN_STATUSES))
        has_runs = select(Run.experiment_id)
        query = select(Experiment.id).where(col(Experiment.status).in_(OPEN_EXPERIMENT_STATUSES),
                                            col(Experiment.id).in_(has_runs),
                                            col(Experiment.id).notin_(live))
        experiment_ids = list(session.exec(query).all())
        for experiment_id in experiment_ids:
            try:
                director.finalize(session, experiment_id)
            except Exception:
                session.rollback()
                log.exception("experiment %s: finalizing failed", experiment_id)
