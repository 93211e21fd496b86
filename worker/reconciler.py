"""The periodic look over all runs (Celery beat → `caddie.reconcile`).

Wakes runs whose next check is due and whose lease is free, gives back pods of runs that
ended without releasing them (a worker died in between), and finalizes experiments whose
runs have all ended. Safe to run twice at once: every action is conditional on the row.
"""

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from server.models import Experiment, Pod, Run, utcnow
from server.states import FINAL_RUN_STATUSES, ExperimentStatus
from worker.director import RunDirector
from worker.providers import ACTIVE_POD_STATUSES

log = logging.getLogger(__name__)

_FINAL = [s.value for s in FINAL_RUN_STATUSES]


def reconcile(director: RunDirector, *, enqueue: Callable[[int], object]) -> list[int]:
    """One pass; returns the ids of the runs it woke."""
    woken = wake_due_runs(director, enqueue=enqueue)
    release_stray_pods(director)
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
    table = Run.__table__  # type: ignore[attr-defined]
    due = (
        table.c.status.notin_(_FINAL),
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
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                enqueue(run_id)
                woken.append(run_id)
    return woken


def release_stray_pods(director: RunDirector) -> None:
    with Session(director.engine) as session:
        query = select(Pod.run_id).join(Run, col(Pod.run_id) == Run.id).where(
            col(Pod.status).in_([s.value for s in ACTIVE_POD_STATUSES]), col(Run.status).in_(_FINAL))
        run_ids = sorted({r for r in session.exec(query).all() if r is not None})
    for run_id in run_ids:
        log.info("run %s ended but its pod was not given back; releasing it", run_id)
        try:
            director.finish(run_id)
        except Exception:
            log.exception("run %s: releasing its pod failed", run_id)


def finalize_ended_experiments(director: RunDirector) -> None:
    open_statuses = [ExperimentStatus.queued.value, ExperimentStatus.running.value]
    with Session(director.engine) as session:
        live = select(Run.experiment_id).where(col(Run.status).notin_(_FINAL))
        has_runs = select(Run.experiment_id)
        query = select(Experiment.id).where(col(Experiment.status).in_(open_statuses),
                                            col(Experiment.id).in_(has_runs),
                                            col(Experiment.id).notin_(live))
        experiment_ids = list(session.exec(query).all())
        for experiment_id in experiment_ids:
            try:
                director.finalize(session, experiment_id)  # type: ignore[arg-type]
            except Exception:
                session.rollback()
                log.exception("experiment %s: finalizing failed", experiment_id)
