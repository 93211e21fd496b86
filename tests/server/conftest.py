"""Fixtures of the API tests: a TestClient signed in as an admin, and one with no token.
The database, settings and session fixtures are the root conftest's (tests/conftest.py)."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.main import create_app


@pytest.fixture
def client(settings_env: None, admin_token: str) -> Iterator[TestClient]:
    """A client signed in as an admin (every change needs a token)."""
    with TestClient(create_app(), headers={"Authorization": f"Bearer {admin_token}"}) as client:
        yield client


@pytest.fixture
def anonymous(settings_env: None) -> Iterator[TestClient]:
    """A client with no token."""
    with TestClient(create_app()) as client:
        yield client
