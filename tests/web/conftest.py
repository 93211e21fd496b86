"""Fixtures for the pages: a TestClient on the server's app with the pages included, and the
app on a real uvicorn (the database fixtures are the root conftest's)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.web.live import LiveServer


@pytest.fixture
def client(settings_env: None, admin_token: str) -> Iterator[TestClient]:
    """A browser-like client signed in as an admin."""
    with TestClient(create_app(), headers={"accept": "text/html"},
                    cookies={"caddie_token": admin_token}) as client:
        yield client


@pytest.fixture
def live_server(settings_env: None) -> Iterator[LiveServer]:
    """The app on a real uvicorn (streams need a real server) over the test's database."""
    server = LiveServer().start()
    try:
        yield server
    finally:
        server.stop()
