"""Keep secrets out of logs: a logging filter that replaces known secret values.

Secrets (provider API keys, SSH private keys) should never reach a log line in the first
place; this is the net under that rule, for a message or traceback that carries one anyway.
"""

import logging
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from server.config import Settings

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 8  # shorter values would redact ordinary words


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
        return text

    def filter(self, record: logging.LogRecord) -> bool:
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
