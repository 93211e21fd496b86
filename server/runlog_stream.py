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

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any

import anyio
import redis
import redis.asyncio as aioredis
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.config import get_settings
from server.db import reader
from server.runlog import read_log
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
    with Session(reader(engine)) as session:
        stored = get_run(session, run_id).log_offset
    if offset > stored:
        raise ValueError(f"offset {offset} is past the {stored} bytes of train.log stored")


async def log_events(engine: Engine, run_id: int, offset: int) -> AsyncIterator[LogEvent]:
    """Events of the run's log from byte `offset` until the run has ended and all is sent.

    A client behind the run's shared tail reads its own pieces from the database; once it
    has caught up it takes the tail's pieces, which one read per change fetched for all.
    """
    async with _tail(engine, run_id) as tail:
        while True:
            changed = tail.changed
            piece = tail.piece_at(offset)
            if piece is None and offset < tail.offset:
                _status, piece = await anyio.to_thread.run_sync(_read, engine, run_id, offset)
            if piece is not None:
                offset = piece["next"]
                yield LogEvent("log", piece, str(offset))
                continue
            if tail.final is not None and offset >= tail.offset:
                yield LogEvent("end", {"status": tail.final.value, "offset": offset}, None)
                return
            if closing.is_set():
                return  # the server is stopping; the client resumes from its last id
            await _wait_for(changed)


def _read(engine: Engine, run_id: int, offset: int) -> tuple[RunStatus, dict[str, Any] | None]:
    """The run's status, then the stored log from `offset` (None when nothing is new).

    In this order: the worker stores the last bytes before it moves a run to a final state,
    so a final status read first means the log read after it is complete.
    """
    with Session(reader(engine)) as session:
        status = RunStatus(get_run(session, run_id).status)
        piece = read_log(session, run_id, offset=offset, limit=EVENT_BYTES)
    if piece.next_offset == offset:
        return status, None
    return status, {"offset": offset, "next": piece.next_offset, "text": piece.text}


async def _wait_for(changed: anyio.Event) -> None:
    await changed.wait()


class _Closing:
    """Set when the API server stops: open streams end (an EventSource reconnects and
    resumes from its last id), so a graceful stop does not wait for every run to finish."""

    def __init__(self) -> None:
        self._set = False

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        for tail in list(_tails.values()):
            tail.notify()

    def clear(self) -> None:
        self._set = False


closing = _Closing()


def close_streams() -> None:
    """End every open log stream of this process (call it on the event loop's thread)."""
    closing.set()


@contextmanager
def closed_on_stop() -> Iterator[None]:
    """While the API serves: SIGTERM and SIGINT first end every log stream, then do what
    they did before (uvicorn's graceful stop, which waits for open responses to finish).
    Only the main thread can set signal handlers; elsewhere nothing changes."""
    closing.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def stop(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(close_streams)
        handler = previous[signal.Signals(sig)]
        if callable(handler):
            handler(sig, frame)

    for sig in previous:
        signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Tail:
    """One follower of a run's stored log per run and event loop, shared by its streams.

    It reads the run's status and new log bytes once per change (a Redis wake-up, else
    every POLL_S) and keeps the last pieces it read, so N clients that have caught up cost
    one database read per change, not N.
    """

    KEEP = 32  # pieces of at most EVENT_BYTES kept for clients a little behind

    def __init__(self, engine: Engine, run_id: int) -> None:
        self.engine, self.run_id = engine, run_id
        self.offset = 0  # bytes of train.log the tail has read (its front)
        self.final: RunStatus | None = None  # set once the run ended and all was read
        self.pieces: dict[int, dict[str, Any]] = {}  # by start offset, oldest first
        self.changed = anyio.Event()
        self.listeners = 0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.offset = await anyio.to_thread.run_sync(_stored, self.engine, self.run_id)
        self.task = asyncio.get_running_loop().create_task(self._follow())
        self.notify()  # streams that joined while this read ran look again

    def notify(self) -> None:
        changed, self.changed = self.changed, anyio.Event()
        changed.set()

    def piece_at(self, offset: int) -> dict[str, Any] | None:
        return self.pieces.get(offset)

    async def _follow(self) -> None:
        async with _Waker(self.run_id) as waker:
            while not closing.is_set():
                try:
                    status, piece = await anyio.to_thread.run_sync(
                        _read, self.engine, self.run_id, self.offset)
                except Exception as exc:  # a database hiccup: streams wait, the tail retries
                    log.warning("run %s: log tail could not read: %s", self.run_id, exc)
                    await anyio.sleep(POLL_S)
                    continue
                if piece is not None:
                    self._add(piece)
                elif status in FINAL_RUN_STATUSES:
                    self.final = status
                    self.notify()
                    return
                else:
                    await waker.wait()

    def _add(self, piece: dict[str, Any]) -> None:
        self.pieces[piece["offset"]] = piece
        while len(self.pieces) > self.KEEP:
            del self.pieces[next(iter(self.pieces))]
        self.offset = piece["next"]
        self.notify()


_tails: dict[tuple[int, int, int], _Tail] = {}  # (event loop, engine, run id) -> its tail


def _stored(engine: Engine, run_id: int) -> int:
    with Session(reader(engine)) as session:
        return get_run(session, run_id).log_offset


@asynccontextmanager
async def _tail(engine: Engine, run_id: int) -> AsyncIterator[_Tail]:
    key = (id(asyncio.get_running_loop()), id(engine), run_id)
    tail = _tails.get(key)
    if tail is None:
        tail = _tails[key] = _Tail(engine, run_id)
        try:
            await tail.start()
        except BaseException:
            del _tails[key]
            raise
    tail.listeners += 1
    try:
        yield tail
    finally:
        tail.listeners -= 1
        if tail.listeners == 0 and _tails.get(key) is tail:
            del _tails[key]
            if tail.task is not None:
                tail.task.cancel()


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

