"""Fixtures for the pages: the server's database fixtures (SQLite and PostgreSQL), a
TestClient on the server's app with the pages included, and the app on a real uvicorn."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from server.main import create_app
from tests.server.conftest import (  # noqa: F401  (fixtures, found by name)
    data_dir,
    database_url,
    engine,
    postgres_url,
    session,
    settings_env,
    sqlite_template,
)
from tests.web.live import LiveServer
from web.pages import include_pages


@pytest.fixture
def client(settings_env: None) -> Iterator[TestClient]:  # noqa: F811
    app = create_app()
    include_pages(app)
    with TestClient(app, headers={"accept": "text/html"}) as client:
        yield client


@pytest.fixture
def live_server(settings_env: None) -> Iterator[LiveServer]:  # noqa: F811
    """The app on a real uvicorn (streams need a real server) over the test's database."""
    server = LiveServer().start()
    try:
        yield server
    finally:
        server.stop()
