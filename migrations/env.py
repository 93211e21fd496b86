"""Alembic environment: the URL comes from Settings unless the Alembic config sets one."""

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

import server.models  # noqa: F401  (registers every table on SQLModel.metadata)
from server.config import get_settings
from server.db import make_engine

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url()


def run_migrations_offline() -> None:
    url = database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def ensure_sqlite_folder(url: str) -> None:
    # The embedded default lives in CADDIE_DATA_DIR, which may not exist on a first start.
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


def run_migrations_online() -> None:
    url = database_url()
    ensure_sqlite_folder(url)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                compare_type=True,
                # SQLite alters tables by copying them; batch mode writes migrations that way.
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
