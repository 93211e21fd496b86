"""Liveness and database reachability, for load balancers and `caddie up`."""

from fastapi import APIRouter
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server.api.deps import SessionDep
from server.errors import CaddieError

router = APIRouter(tags=["health"])


class DatabaseUnavailable(CaddieError):
    status_code = 503


@router.get("/healthz")
def read_health(session: SessionDep) -> dict[str, str]:
    """Answer ok when the database answers."""
    try:
        session.connection().execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable("database unavailable") from exc
    return {"status": "ok"}
