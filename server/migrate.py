"""Bring a database to the newest schema, as `alembic upgrade head` does.

Works from a checkout and from an installed package alike: the migrations are found
beside the `migrations` package, not through alembic.ini.
"""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

import migrations


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for our migrations; `url` None: Settings' database URL."""
    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if url is not None:
        # Config values are %-interpolated; a URL-encoded password must survive that.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade_head(url: str | None = None) -> None:
    command.upgrade(alembic_config(url), "head")


def head_revision() -> str | None:
    """The newest migration's revision id (what a ready database is at)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()
