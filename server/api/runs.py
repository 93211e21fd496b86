"""Runs: read one with its events, read its log, cancel it."""

from typing import Annotated

from fastapi import APIRouter, Query

from server import experiments, logs
from server.api.deps import MAX_ID, IdPath, SessionDep
from server.experiments import RunPublic, RunPublicWithEvents
from server.logs import LogSlice

router = APIRouter(prefix="/runs", tags=["runs"])


@router.get("/{run_id}")
def read_run(session: SessionDep, run_id: IdPath) -> RunPublicWithEvents:
    """Read a run with its status changes."""
    return experiments.run_with_events(session, run_id)


@router.get("/{run_id}/log")
def read_run_log(
    session: SessionDep,
    run_id: IdPath,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="byte offset in train.log")] = 0,
    limit: Annotated[int, Query(ge=1, le=logs.MAX_READ_BYTES, description="bytes at most")] = (
        logs.DEFAULT_READ_BYTES
    ),
) -> LogSlice:
    """Read the run's train.log from a byte offset; continue from `next_offset`."""
    return logs.read_log(session, run_id, offset=offset, limit=limit)


@router.post("/{run_id}/cancel")
def cancel_run(session: SessionDep, run_id: IdPath) -> RunPublic:
    """Cancel a run: a queued one ends now, a live one is stopped by the worker."""
    return RunPublic.model_validate(experiments.cancel_run(session, run_id))
