"""What one member may ask for: submissions per hour, runs not yet ended, and priority.

Admins are not limited. A member over a limit gets a 429 naming the setting and its value;
a member setting a priority gets a 403 naming `priority` (every member's experiments queue
at priority 0, in submission order, so no one can jump the queue).
"""

from datetime import timedelta

from sqlalchemy import func
from sqlmodel import Session, col, select

from server.auth import Principal
from server.config import get_settings
from server.errors import CaddieError, Forbidden
from server.models import Experiment, Run, utcnow
from server.states import FINAL_RUN_STATUSES


class QuotaExceeded(CaddieError):
    status_code = 429


def check_submission(session: Session, principal: Principal, *, runs: int,
                     priority: int = 0) -> None:
    """Before a member's new experiment of `runs` runs (seeds x arms) is stored."""
    if principal.is_admin:
        return
    if priority != 0:
        raise Forbidden("priority: only an admin may set a priority; members' experiments "
                        "queue at 0, in order of submission")
    limit = get_settings().member_experiments_per_hour
    recent = session.exec(select(func.count()).select_from(Experiment).where(
        Experiment.owner == principal.name,
        col(Experiment.created_at) >= utcnow() - timedelta(hours=1))).one()
    if recent >= limit:
        raise QuotaExceeded(f"{principal.name} submitted {recent} experiments in the last hour; "
                            f"CADDIE_MEMBER_EXPERIMENTS_PER_HOUR={limit}")
    check_more_runs(session, principal, runs)


def check_more_runs(session: Session, principal: Principal, runs: int) -> None:
    """Before `runs` more runs of a member's are queued (a new experiment, added seeds)."""
    if principal.is_admin:
        return
    limit = get_settings().member_max_active_runs
    active = session.exec(select(func.count()).select_from(Run).join(
        Experiment, col(Experiment.id) == col(Run.experiment_id)).where(
        Experiment.owner == principal.name,
        col(Run.status).not_in(FINAL_RUN_STATUSES))).one()
    session.commit()  # end the read: SQLite's writers wait on open transactions
    if active + runs > limit:
        raise QuotaExceeded(f"{principal.name} has {active} runs not ended and asks for {runs} "
                            f"more; CADDIE_MEMBER_MAX_ACTIVE_RUNS={limit}")
