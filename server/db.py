"""Engine and sessions. SQLite (the embedded default) and PostgreSQL are both supported.

On SQLite a transaction that may write begins with `BEGIN IMMEDIATE`, taking the one write
lock up front: a deferred transaction that reads and then writes fails at once (without
waiting) when another writer committed in between. A transaction that only reads begins
with a plain (deferred) `BEGIN`: under WAL it reads a snapshot and never holds or waits for
the write lock, so readers (pages, GETs, log streams) neither block writers nor each other.
A session reads only when it says so: through `reader()` or `read_session()`.
"""

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from fastapi import Request
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from server.config import get_settings

READ_ONLY = "caddie_read_only"  # execution option of the engine that `reader()` returns
_READ_METHODS = frozenset({"GET", "HEAD"})


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        # Let SQLAlchemy emit BEGIN so that a writer's BEGIN IMMEDIATE takes the lock up front.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True)


def _sqlite_begin(conn: Connection) -> None:
    read_only = conn.get_execution_options().get(READ_ONLY, False)
    conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the server read while the worker writes; the driver must not open
    # transactions itself, so that the "begin" hook above decides how they start.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def reader(engine: Engine) -> Engine:
    """The same engine (and pool) for transactions that only read: deferred on SQLite."""
    return engine.execution_options(**{READ_ONLY: True})


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().resolved_database_url())


def read_session() -> Session:
    return Session(reader(get_engine()))


def get_session(request: Request) -> Iterator[Session]:
    """The request's session: a reader for GET and HEAD, which change nothing."""
    engine = get_engine()
    with Session(reader(engine) if request.method in _READ_METHODS else engine) as session:
        yield session
