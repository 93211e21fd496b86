"""Fixtures shared by every test folder: an sshd, and a migrated database (SQLite file or a
fresh PostgreSQL database) with settings pointing at it and a session. Tests taking
`database_url` run on both."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.auth import Role, create_token
from server.config import get_settings
from server.db import get_engine
from server.dispatch import get_producer
from server.migrate import upgrade_head
from tests.databases import postgres_database
from tests.sshd import Sshd


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    """A running OpenSSH sshd on a free loopback port; stopped after the test."""
    server = Sshd(Path(tmp_path_factory.mktemp("sshd")))
    server.start()
    try:
        yield server
    finally:
        server.stop()


TABLES = ("runevent", "logchunk", "pod", "run", "experiment", "apitoken")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade_head(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test session, dropped after."""
    with postgres_database("caddie_test") as url:
        upgrade_head(url)
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        path = tmp_path / "caddie.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url = request.getfixturevalue("postgres_url")
    yield url
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture
def setting(settings_env: None, monkeypatch: pytest.MonkeyPatch) -> Callable[[str, str], None]:
    """`setting(NAME, value)`: one more variable over settings_env's, the cached settings dropped
    (settings_env drops them again when the test ends)."""

    def set_one(name: str, value: str) -> None:
        monkeypatch.setenv(name, value)
        get_settings.cache_clear()

    return set_one


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings_env(database_url: str, data_dir: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings for this test: its database, the filesystem broker in its data_dir, and a
    standing record of 9.0 bpb that every score in these tests beats by far, so that only
    tests of the record test see its reasons."""
    monkeypatch.setenv("CADDIE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("CADDIE_RECORD_BPB", "9.0")
    monkeypatch.setenv("CADDIE_DATABASE_URL", database_url)
    monkeypatch.setenv("CADDIE_REDIS_URL", "")
    monkeypatch.setenv("CADDIE_LOCAL_PROVIDER", "members")  # most tests submit to local; it is off by default
    _clear_caches()
    yield
    get_engine().dispose()
    _clear_caches()


def _clear_caches() -> None:
    get_settings.cache_clear()
    get_engine.cache_clear()
    get_producer.cache_clear()


@pytest.fixture
def engine(settings_env: None) -> Engine:
    return get_engine()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    # Rows stay readable after commit without a new transaction (see tests/factories.py).
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def admin_token(engine: Engine) -> str:
    with Session(engine) as session:
        return create_token(session, name="admin", role=Role.admin)[1]
