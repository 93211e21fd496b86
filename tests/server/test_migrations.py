"""The migrations create exactly the tables of server/models.py, and run every way we use."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlmodel import SQLModel

import server.models  # noqa: F401  (registers the tables)
from server.config import get_settings
from server.migrate import alembic_config, upgrade_head
from server.models import as_utc

ROOT = Path(__file__).resolve().parents[2]
TABLES = {"alembic_version", "experiment", "experimentfile", "pod", "run", "runevent", "logchunk",
          "apitoken"}


def differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_migrated_schema_matches_the_models(database_url: str) -> None:
    assert table_names(database_url) == TABLES
    assert differences(database_url) == []


def test_downgrade_to_nothing_and_back(database_url: str) -> None:
    command.downgrade(alembic_config(database_url), "base")
    assert table_names(database_url) == {"alembic_version"}
    upgrade_head(database_url)
    assert differences(database_url) == []


def test_upgrade_head_without_url_uses_settings_and_makes_the_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "not" / "there" / "yet"
    monkeypatch.setenv("CADDIE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("CADDIE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        upgrade_head()
        upgrade_head()  # a second start finds the schema current
    finally:
        get_settings.cache_clear()
    assert table_names(f"sqlite:///{data_dir / 'caddie.db'}") == TABLES


def test_alembic_command_line_from_another_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "CADDIE_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert differences(url) == []


def test_verdicts_migration_fills_track_and_date_of_existing_rows(database_url: str) -> None:
    """0005 gives rows made before it a record date (their creation time) and an import of a
    non-record folder its track, read from the source key."""
    command.downgrade(alembic_config(database_url), "0004")
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            for name, provider, key in (("own", "local", None),
                                        ("long", "import", "track_non_record_16mb/2026-03-20_x"),
                                        ("short", "import", "track_10min_16mb/2026-03-19_y")):
                source = None if key is None else json.dumps({"key": key})
                conn.execute(text(
                    "INSERT INTO experiment (name, author, preset, config, seeds, provider, owner,"
                    " status, created_at, n_succeeded, eligible, reasons, source) VALUES (:n, '',"
                    " 'baseline', '{}', '[]', :p, '', 'finished', :c, 0, false, '[]', :s)"),
                    {"n": name, "p": provider, "c": datetime(2026, 3, 19, 12, tzinfo=UTC),
                     "s": source})
        upgrade_head(database_url)
        with engine.connect() as conn:
            rows = {name: (track, as_utc(date) if isinstance(date, datetime) else date)
                    for name, track, date in conn.execute(
                        text("SELECT name, track, record_date FROM experiment"))}
    finally:
        engine.dispose()
    assert rows["long"][0] == "track_non_record_16mb"
    assert rows["short"][0] == rows["own"][0] == "track_10min_16mb"
    assert all(str(date)[:10] == "2026-03-19" for _track, date in rows.values())
