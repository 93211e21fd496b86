"""Fixtures for the pages: the server's database fixtures (SQLite and PostgreSQL), a
TestClient on the server's app with the pages included, and the app on a real uvicorn."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.server.conftest import (  # noqa: F401  (fixtures, found by name)
    admin_token,
    data_dir,
    database_url,
    engine,
    postgres_url,
    session,
    settings_env,
    sqlite_template,
)
from tests.web.live import LiveServer


@pytest.fixture
def client(settings_env: None, admin_token: str) -> Iterator[TestClient]:  # noqa: F811
    """A browser-like client signed in as an admin."""
    with TestClient(create_app(), headers={"accept": "text/html"},
                    cookies={"caddie_token": admin_token}) as client:
        yield client


@pytest.fixture
def live_server(settings_env: None) -> Iterator[LiveServer]:  # noqa: F811
    """The app on a real uvicorn (streams need a real server) over the test's database."""
    server = LiveServer().start()
    try:
        yield server
    finally:
        server.stop()
