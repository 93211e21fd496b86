"""A run's stored train.log as a stream of Server-Sent Events, resumable by byte offset.

Each `log` event carries the text of bytes [offset, next) of train.log as JSON
(`{"offset", "next", "text"}`; JSON because raw SSE data cannot hold a lone "\\r") and has
`id` = `next`, so a client that reconnects with `Last-Event-ID` continues from the first
byte it has not seen: nothing lost, nothing repeated. When the run has ended and every
stored byte was sent, an `end` event (`{"status", "offset"}`) closes the stream.

The database is the source of truth. Redis pub/sub is only a wake-up: the worker calls
`publish_log` after it commits log chunks, and listeners re-read the database at once
instead of at their next check. A lost or stray message costs at most one interval.
"""

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.config import get_settings
from server.logs import read_log
from server.runs import get_run
from server.states import FINAL_RUN_STATUSES, RunStatus

log = logging.getLogger(__name__)

EVENT_BYTES = 64 * 1024  # of train.log per `log` event at most
POLL_S = 0.5  # seconds between database checks without Redis
RECHECK_S = 5.0  # with Redis: a database check this often even when no message came
CHANNEL_PREFIX = "caddie:log:"  # + run id; a message's body is the stored offset


@dataclass(frozen=True)
class LogEvent:
    kind: str  # "log" or "end"
    data: dict[str, Any]
    id: str | None  # byte offset the next event starts from; None for "end"


def channel(run_id: int) -> str:
    return f"{CHANNEL_PREFIX}{run_id}"


@lru_cache
def _publisher(url: str) -> redis.Redis:
    # Short timeouts: a slow Redis must not hold up the worker's step.
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)


def publish_log(run_id: int, offset: int) -> None:
    """Tell listeners that the run's log is stored up to byte `offset`. Never raises:
    without Redis, or with Redis down, listeners still find the bytes at their next check."""
    url = get_settings().redis_url
    if not url:
        return
    try:
        _publisher(url).publish(channel(run_id), str(offset))
    except redis.RedisError as exc:
        log.warning("run %s: could not publish log offset %s: %s", run_id, offset, exc)


def check_offset(engine: Engine, run_id: int, offset: int) -> None:
    """404 for an unknown run; ValueError naming the offset when it lies past the stored log."""
    with Session(engine) as session:
        stored = get_run(session, run_id).log_offset
    if offset > stored:
        raise ValueError(f"offset {offset} is past the {stored} bytes of train.log stored")


async def log_events(engine: Engine, run_id: int, offset: int) -> AsyncIterator[LogEvent]:
    """Events of the run's log from byte `offset` until the run has ended and all is sent."""
    async with _Waker(run_id) as waker:
        while True:
            status, piece = await anyio.to_thread.run_sync(_read, engine, run_id, offset)
            if piece is not None:
                offset = piece["next"]
                yield LogEvent("log", piece, str(offset))
                continue
            if status in FINAL_RUN_STATUSES:
                yield LogEvent("end", {"status": status.value, "offset": offset}, None)
                return
            await waker.wait()


def _read(engine: Engine, run_id: int, offset: int) -> tuple[RunStatus, dict[str, Any] | None]:
    """The run's status, then the stored log from `offset` (None when nothing is new).

    In this order: the worker stores the last bytes before it moves a run to a final state,
    so a final status read first means the log read after it is complete.
    """
    with Session(engine) as session:
        status = RunStatus(get_run(session, run_id).status)
        piece = read_log(session, run_id, offset=offset, limit=EVENT_BYTES)
    if piece.next_offset == offset:
        return status, None
    return status, {"offset": offset, "next": piece.next_offset, "text": piece.text}


class _Waker:
    """Waits until the run's log may have grown: a Redis message or the next check."""

    def __init__(self, run_id: int) -> None:
        self.run_id = run_id
        self.url = get_settings().redis_url
        self.client: aioredis.Redis | None = None
        self.pubsub: Any = None

    async def __aenter__(self) -> "_Waker":
        if self.url:
            # Subscribed before the first read, so a message published after it is not missed.
            try:
                self.client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
                self.pubsub = self.client.pubsub()
                await self.pubsub.subscribe(channel(self.run_id))
            except (redis.RedisError, OSError) as exc:
                log.warning("run %s: log stream polls the database; Redis: %s", self.run_id, exc)
                await self._close()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        with anyio.CancelScope(shield=True):  # also when the client went away (cancelled)
            await self._close()

    async def wait(self) -> None:
        if self.pubsub is None:
            await anyio.sleep(POLL_S)
            return
        try:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True,
                                                    timeout=RECHECK_S)
            while message is not None:  # drain: one database read answers them all
                message = await self.pubsub.get_message(ignore_subscribe_messages=True,
                                                        timeout=0)
        except (redis.RedisError, OSError) as exc:
            log.warning("run %s: Redis lost (%s); polling the database", self.run_id, exc)
            await self._close()
            await anyio.sleep(POLL_S)

    async def _close(self) -> None:
        pubsub, client, self.pubsub, self.client = self.pubsub, self.client, None, None
        for closable in (pubsub, client):
            if closable is not None:
                try:
                    await closable.aclose()
                except (redis.RedisError, OSError):
                    pass

