"""Alembic migrations of Caddie's tables; `server.migrate.upgrade_head()` applies them."""
