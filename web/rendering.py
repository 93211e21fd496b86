"""The pages' Jinja2 environment: where templates live and how values are written.

Numbers are formatted here, once, so every page shows a score or a size the same way.
Times are written as ISO 8601 UTC inside `<time datetime=...>`; static/app.js rewrites
them in the viewer's locale, and without JavaScript the UTC text stays.
"""

from datetime import UTC, datetime
from pathlib import Path

from fastapi.templating import Jinja2Templates
from markupsafe import Markup

from server.eligibility import (
    MAX_BYTES_TOTAL,
    MAX_EVAL_SECONDS,
    MAX_TRAIN_SECONDS,
    RECORD_GPU_COUNT,
    RECORD_GPU_NAME,
)
from server.waiver import granted_rule

WEB_DIR = Path(__file__).parent
STATIC_DIR = WEB_DIR / "static"
MISSING = "—"

templates = Jinja2Templates(directory=WEB_DIR / "templates")


def score(value: float | None) -> str:
    """A val_bpb (bits per byte) or val_loss (nats per token), 5 decimals as records print."""
    return MISSING if value is None else f"{value:.5f}"


def count(value: int | None) -> str:
    """An integer with thousands separators: bytes, tokens, steps."""
    return MISSING if value is None else f"{value:,}"


def dollars(value: float | None) -> str:
    """US dollars to the cent ($0.004 shows as $0.00, which is what it is)."""
    return MISSING if value is None else f"${value:,.2f}"


def seconds(value: float | None) -> str:
    return MISSING if value is None else f"{value:.1f} s"


def duration(value: float | None) -> str:
    """Seconds as the largest sensible units: 45 s, 3 min 05 s, 2 h 01 min."""
    if value is None:
        return MISSING
    total = round(value)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def as_utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time we store is UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def timestamp(value: datetime | None) -> Markup | str:
    """`<time datetime="2026-05-01T12:00:00Z">2026-05-01 12:00:00 UTC</time>`."""
    if value is None:
        return MISSING
    moment = as_utc(value).replace(microsecond=0)
    iso = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return Markup('<time datetime="{}">{}</time>').format(
        iso, moment.strftime("%Y-%m-%d %H:%M:%S UTC"))


templates.env.filters.update(score=score, count=count, seconds=seconds, duration=duration,
                             timestamp=timestamp, dollars=dollars,
                             waived=granted_rule)  # the systems-only waiver's rule, if granted
# The challenge's limits, for the pages that state them (their owner: server/eligibility.py).
templates.env.globals.update(MAX_BYTES_TOTAL=MAX_BYTES_TOTAL, MAX_TRAIN_SECONDS=MAX_TRAIN_SECONDS,
                             MAX_EVAL_SECONDS=MAX_EVAL_SECONDS, RECORD_GPU_COUNT=RECORD_GPU_COUNT,
                             RECORD_GPU_NAME=RECORD_GPU_NAME)
