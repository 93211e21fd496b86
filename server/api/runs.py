"""Runs: read one with its events, read or follow its log, cancel it."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from fastapi.exceptions import RequestValidationError
from fastapi.sse import EventSourceResponse, ServerSentEvent

from server import auth, experiments, runlog, runlog_stream
from server.api.deps import MAX_ID, ApiPrincipalDep, IdPath, SessionDep
from server.db import get_engine
from server.models import RunPublic, RunPublicWithEvents
from server.runlog import LogSlice

router = APIRouter(prefix="/runs", tags=["runs"])

RECONNECT_MS = 1000  # how soon a browser reconnects a dropped log stream (SSE `retry`)


@router.get("/{run_id}")
def read_run(session: SessionDep, run_id: IdPath) -> RunPublicWithEvents:
    """Read a run with its status changes."""
    return experiments.run_with_events(session, run_id)


@router.get("/{run_id}/log")
def read_run_log(
    session: SessionDep,
    run_id: IdPath,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="byte offset in train.log")] = 0,
    limit: Annotated[int, Query(ge=1, le=runlog.MAX_READ_BYTES, description="bytes at most")] = (
        runlog.DEFAULT_READ_BYTES
    ),
) -> LogSlice:
    """Read the run's train.log from a byte offset; continue from `next_offset`."""
    return runlog.read_log(session, run_id, offset=offset, limit=limit)


def stream_offset(
    run_id: IdPath,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="byte offset to start from")] = 0,
    last_event_id: Annotated[str | None, Header(
        description="the `id` of the last event received; wins over `offset`")] = None,
) -> int:
    """Where the stream starts: `Last-Event-ID` (sent by a reconnecting EventSource), else
    `offset`. Checked before the stream opens, so a bad one is a 404/422, not an event."""
    where, start = ("query", "offset"), offset
    if last_event_id is not None:
        where = ("header", "last-event-id")
        if not last_event_id.isascii() or not last_event_id.isdigit() or int(last_event_id) > MAX_ID:
            raise _invalid(where, f"must be a byte offset (0 to {MAX_ID}), got {last_event_id!r}")
        start = int(last_event_id)
    try:
        runlog_stream.check_offset(get_engine(), run_id, start)
    except ValueError as exc:
        raise _invalid(where, str(exc)) from None
    return start


def _invalid(loc: tuple[str, str], message: str) -> RequestValidationError:
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


@router.get("/{run_id}/logs/stream", response_class=EventSourceResponse)
async def stream_run_log(
    run_id: IdPath, start: Annotated[int, Depends(stream_offset)]
) -> AsyncIterator[ServerSentEvent]:
    """Follow the run's train.log as Server-Sent Events.

    `log` events: data `{"offset", "next", "text"}` (bytes [offset, next) of train.log),
    `id` = `next`. An `end` event (data `{"status", "offset"}`) follows once the run has
    ended and all of its log was sent. Resume with `Last-Event-ID` or `?offset=`.
    """
    retry: int | None = RECONNECT_MS  # sent once per connection
    async for event in runlog_stream.log_events(get_engine(), run_id, start):
        yield ServerSentEvent(event=event.kind, data=event.data, id=event.id, retry=retry)
        retry = None


@router.post("/{run_id}/cancel")
def cancel_run(session: SessionDep, principal: ApiPrincipalDep, run_id: IdPath) -> RunPublic:
    """Cancel a run: a queued one ends now, a live one is stopped by the worker."""
    auth.authorize_run(session, principal, run_id)
    return RunPublic.model_validate(experiments.cancel_run(session, run_id))
