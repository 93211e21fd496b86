"""Liveness, readiness and metrics, for load balancers, Prometheus and `caddie up`."""

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server import metrics
from server.api.deps import SessionDep, read_access
from server.errors import CaddieError
from server.migrate import head_revision

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


@router.get("/readyz")
def read_readiness(session: SessionDep) -> dict[str, str]:
    """Answer ok when the database is reachable and migrated to the latest revision."""
    try:
        current = session.connection().execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise DatabaseUnavailable("database unavailable or not migrated") from exc
    if current != head_revision():
        raise DatabaseUnavailable(f"database is at migration {current}, not {head_revision()}")
    return {"status": "ok", "migration": str(current)}


# Metrics name runs and pods: private like every other read when CADDIE_PUBLIC_READ is off
# (Prometheus then scrapes with `authorization: {credentials: <token>}`).
@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(read_access)])
def read_metrics(session: SessionDep) -> PlainTextResponse:
    """Prometheus metrics: runs by state, queue depth, pods alive, log lag."""
    return PlainTextResponse(metrics.render(session), media_type="text/plain; version=0.0.4")
