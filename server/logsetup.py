"""How the API server, the worker and beat write their log lines (CADDIE_LOG_FORMAT).

`text`: one line per record for people, `2026-01-02 03:04:05,678 INFO worker.director: ...`,
with ` [run_id=3 pod_id=5]` at the end while a run's work is in hand.

`json`: one JSON object per line for a log collector, e.g.
`{"time": "2026-01-02T03:04:05.678Z", "level": "INFO", "logger": "worker.director",
"message": "...", "run_id": 3, "pod_id": 5}`; an exception is one more field,
`"exception"`, holding the traceback as a string, so a record never spans lines.

The ids come from context variables: the worker binds them around each task (`work`), the
director adds the pod once it knows it (`bind`), the API binds those of the path
(`bind_path_ids`). Every handler also carries the secret redactor (server/redaction.py).
"""

import contextvars
import json
import logging
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from starlette.requests import Request

from server import redaction
from server.config import Settings, get_settings

# The ids a record carries, in the order they are written.
IDS = ("run_id", "pod_id", "experiment_id")
_CONTEXT: dict[str, contextvars.ContextVar[int | None]] = {
    name: contextvars.ContextVar(f"caddie_{name}", default=None) for name in IDS}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Loggers that get handlers of their own from the process that hosts us (uvicorn); their
# handlers get our formatter and filters too. Any other logger propagates to the root's.
HOSTED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def bind(**ids: int | None) -> None:
    """Set ids of the work in hand for the rest of the current context (task or request)."""
    for name, value in ids.items():
        _CONTEXT[name].set(value)


def bound() -> dict[str, int]:
    """The ids set now, e.g. {"run_id": 3}."""
    return {name: value for name, var in _CONTEXT.items() if (value := var.get()) is not None}


@contextmanager
def work(**ids: int | None) -> Iterator[None]:
    """Bind ids for one unit of work (a Celery task) and forget every id on the way out,
    including those bound inside it, so the next task of this process starts clean."""
    tokens = [(var, var.set(ids.get(name))) for name, var in _CONTEXT.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Stamps each record with the ids bound where it was logged (record.run_id, ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _CONTEXT.items():
            if not hasattr(record, name):
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in IDS:
            if (value := getattr(record, name, None)) is not None:
                entry[name] = value
        # The redactor has already turned exc_info into a cleaned exc_text; else format it here.
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # ASCII only: no U+2028 or other character a line reader could split on.
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        ids = " ".join(f"{name}={value}" for name in IDS
                       if (value := getattr(record, name, None)) is not None)
        line = super().formatMessage(record)
        return f"{line} [{ids}]" if ids else line


def formatter(settings: Settings) -> logging.Formatter:
    return JsonFormatter() if settings.log_format == "json" else TextFormatter()


class _OurHandler(logging.StreamHandler[IO[str]]):
    """The root handler `configure` installs; a second call replaces it instead of adding one."""


def configure(settings: Settings, *, level: int | str = logging.INFO, stream: IO[str] | None = None,
              filename: str | None = None) -> logging.Handler:
    """Send every record at `level` or above through one root handler in the chosen format.

    Writes to `filename`, else `stream`, else the process's real stderr (never a replaced
    sys.stderr, which Celery may have pointed back at the logger).
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
        old.close()
    # sys.__stderr__ is None only in a process started without one; logging then uses sys.stderr.
    target: IO[str] = (open(filename, "a", encoding="utf-8") if filename  # noqa: SIM115
                       else (stream or sys.__stderr__ or sys.stderr))
    handler = _OurHandler(target)
    _dress(handler, settings)
    root.addHandler(handler)
    root.setLevel(level)
    for name in HOSTED_LOGGERS:
        for hosted in logging.getLogger(name).handlers:
            # Text keeps the host's own format (uvicorn's access lines); json needs ours.
            _dress(hosted, settings, reformat=settings.log_format == "json")
    return handler


def _dress(handler: logging.Handler, settings: Settings, *, reformat: bool = True) -> None:
    if reformat:
        handler.setFormatter(formatter(settings))
    for kind in (redaction.SecretRedactor, ContextFilter):
        for old in [f for f in handler.filters if isinstance(f, kind)]:
            handler.removeFilter(old)
    # The redactor first: it turns a traceback into cleaned text before it is formatted.
    handler.addFilter(redaction.SecretRedactor(redaction.secret_values(settings)))
    handler.addFilter(ContextFilter())


async def bind_path_ids(request: Request) -> None:
    """An app-wide dependency: bind the ids named in a request's path (/api/runs/{run_id})."""
    for name in IDS:
        value = request.path_params.get(name)
        if isinstance(value, str) and value.isascii() and value.isdigit():  # not "¹"
            _CONTEXT[name].set(int(value))


@asynccontextmanager
async def api_lifespan(_app: object) -> AsyncIterator[None]:
    """Configure the API process's logging while it serves (not when it is imported)."""
    root = logging.getLogger()
    level = root.level
    handler = configure(get_settings())
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
