"""The machine's shared test services: throwaway PostgreSQL databases (127.0.0.1:5432, trust
auth) and numbered Redis databases (127.0.0.1:6379). Both addresses can be moved with
`CADDIE_TEST_POSTGRES_URL` and `CADDIE_TEST_REDIS_URL`, so that two checkouts can run their
tests at once without sharing a Redis database."""

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, make_url, text

POSTGRES_ADMIN_URL = os.environ.get("CADDIE_TEST_POSTGRES_URL",
                                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_SERVER_URL = os.environ.get("CADDIE_TEST_REDIS_URL", "redis://127.0.0.1:6379").rstrip("/")


def redis_url(db: int) -> str:
    """The URL of database `db` of the shared test Redis."""
    return f"{REDIS_SERVER_URL}/{db}"


@contextmanager
def postgres_database(prefix: str) -> Iterator[str]:
    """A new empty database named `<prefix>_<random>`; yields its URL and drops it after."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
