"""Keep secrets out of logs: a logging filter that replaces known secret values.

Secrets (provider API keys, SSH private keys) should never reach a log line in the first
place; this is the net under that rule, for a message or traceback that carries one anyway.
Caddie's own API tokens (`cad_...`) are not known values but have a shape: any of them is
redacted too, e.g. in an access-log line of a URL carrying `?token=cad_...`.
"""

import logging
import re
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from server.config import Settings

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter values would redact ordinary words
# server.auth.TOKEN_PREFIX + secrets.token_urlsafe(32) (43 characters); 16 on catches cut ones.
API_TOKEN = re.compile(r"cad_[A-Za-z0-9_-]{16,}")
API_TOKEN_REDACTED = "cad_" + REDACTED


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings point at: SecretStr fields, and the key files' contents."""
    values: list[str] = []
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            values.append(value.get_secret_value())
        elif name.endswith(("_key_file", "_api_key_file")) and isinstance(value, Path):
            values += _file_secrets(value)
    return sorted({v for v in values if len(v) >= MIN_SECRET_CHARS}, key=len, reverse=True)


def _file_secrets(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return []
    # A PEM key is logged, if ever, a line at a time as often as whole: redact both.
    lines = [line.strip() for line in text.splitlines() if line.strip() and "-----" not in line]
    return [text.strip(), *lines]


class SecretRedactor(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return API_TOKEN.sub(API_TOKEN_REDACTED, text)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            # Arguments one by one first: formatters such as uvicorn's access-log one read
            # the tuple back (client, method, path, version, status).
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in record.args)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format call must not raise into the caller
            # Logged as text from here on: logging's own error report would print the raw args.
            message, record.args = f"{record.msg} (bad log arguments: {record.args!r})", None
            record.msg = message
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        # Also when another handler's filter or formatter already turned the traceback into text.
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def install(settings: Settings, logger: logging.Logger | None = None) -> SecretRedactor:
    """Put the redactor on every handler of `logger` (the root logger by default)."""
    redactor = SecretRedactor(secret_values(settings))
    target = logger or logging.getLogger()
    for handler in target.handlers:
        handler.addFilter(redactor)
    return redactor
