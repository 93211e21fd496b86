"""Secrets never leave through a log line, whatever tries to log them."""

import io
import logging
import secrets
from pathlib import Path

from uvicorn.logging import AccessFormatter

from server.config import Settings
from server.redaction import REDACTED, install, secret_values

KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW"


def logger_with_handler(name: str) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    logger = logging.getLogger(name)
    logger.handlers = [logging.StreamHandler(stream)]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def make_settings(tmp_path: Path) -> Settings:
    key = tmp_path / "id_ed25519"
    key.write_text(f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----\n")
    return Settings(data_dir=tmp_path, ssh_key_file=key, runpod_api_key="rpa_SECRETSECRET123")


def test_secret_values_come_from_secret_fields_and_key_files(tmp_path: Path) -> None:
    values = secret_values(make_settings(tmp_path))
    assert "rpa_SECRETSECRET123" in values and KEY_BODY in values
    assert not any(len(v) < 8 for v in values)


def test_messages_args_and_tracebacks_are_redacted(tmp_path: Path) -> None:
    logger, stream = logger_with_handler("caddie.test.redaction")
    install(make_settings(tmp_path), logger)
    logger.warning("calling RunPod with key %s", "rpa_SECRETSECRET123")
    logger.error("key line: " + KEY_BODY)
    try:
        raise RuntimeError("auth failed for rpa_SECRETSECRET123")
    except RuntimeError:
        logger.exception("provider error")
    out = stream.getvalue()
    assert "rpa_SECRETSECRET123" not in out and KEY_BODY not in out
    assert out.count(REDACTED) >= 3  # the traceback quotes the raising line too
    assert "calling RunPod with key" in out and "RuntimeError" in out  # the rest stays readable


def test_ordinary_messages_pass_unchanged(tmp_path: Path) -> None:
    logger, stream = logger_with_handler("caddie.test.redaction.plain")
    install(make_settings(tmp_path), logger)
    logger.info("run %d moved to %s", 7, "running")
    assert stream.getvalue() == "run 7 moved to running\n"


def test_a_bad_format_call_is_logged_redacted_not_raised(tmp_path: Path) -> None:
    logger, stream = logger_with_handler("caddie.test.redaction.badformat")
    install(make_settings(tmp_path), logger)
    # One argument too few: logging reports that itself; the filter must not raise into the caller.
    logger.warning("key %s for pod %s", "rpa_SECRETSECRET123")
    text = stream.getvalue()
    assert "rpa_SECRETSECRET123" not in text and REDACTED in text


def test_api_tokens_in_an_access_log_line_are_redacted(tmp_path: Path) -> None:
    """uvicorn logs each request's path with its query: an EventSource given ?token= would
    write the token verbatim. The line keeps its shape (uvicorn's formatter reads the args)."""
    logger, stream = logger_with_handler("caddie.test.access")
    logger.handlers[0].setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" '
                                                    '%(status_code)s', use_colors=False))
    install(make_settings(tmp_path), logger)
    token = "cad_" + secrets.token_urlsafe(32)

    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                f"/api/runs/3/logs/stream?token={token}&offset=0", "1.1", 200)

    assert stream.getvalue() == ('127.0.0.1:5000 - "GET /api/runs/3/logs/stream?token='
                                 f'cad_{REDACTED}&offset=0 HTTP/1.1" 200 OK\n')
