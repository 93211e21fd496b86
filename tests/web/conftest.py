"""Fixtures for the pages: the server's database fixtures (SQLite and PostgreSQL), and a
TestClient on the server's app with the pages included."""

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
from web.pages import include_pages


@pytest.fixture
def client(settings_env: None) -> Iterator[TestClient]:  # noqa: F811
    app = create_app()
    include_pages(app)
    with TestClient(app, headers={"accept": "text/html"}) as client:
        yield client
