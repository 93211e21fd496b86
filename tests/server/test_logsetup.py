"""Log lines (CADDIE_LOG_FORMAT): one JSON object per line with the ids of the work in hand,
secrets redacted, and the API binding the ids of the request's path."""

import io
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.main import create_app
from server import logsetup, redaction
from server.config import Settings, get_settings

API_KEY = "rpa_LOGTESTKEY0123456789"
HOOK = "https://hooks.example.com/services/T000/B000/hooktoken42"


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Leave the root logger as the test found it."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def this_thread(handler: logging.Handler) -> None:
    """Keep only this thread's records: under pytest -n, threads an earlier test in the same
    process left running may still log through the root logger."""
    handler.addFilter(lambda record: record.thread == threading.get_ident())


def json_settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, log_format="json", runpod_api_key=SecretStr(API_KEY),
                    webhook_url=SecretStr(HOOK))


def records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_each_record_is_one_json_line_with_the_ids_bound(root_logging: None, tmp_path: Path) -> None:
    out = io.StringIO()
    this_thread(logsetup.configure(json_settings(tmp_path), stream=out))
    log = logging.getLogger("worker.director")
    log.info("outside any task")
    with logsetup.work(run_id=3):
        logsetup.bind(pod_id=5, experiment_id=2)
        log.warning("run %s: line\nwith a break", 3)
    log.info("after the task")
    first, second, third = records(out.getvalue())
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "worker.director"
    assert str(first["time"]).endswith("Z") and "T" in str(first["time"])
    assert second["message"] == "run 3: line\nwith a break"
    assert (second["run_id"], second["pod_id"], second["experiment_id"]) == (3, 5, 2)
    assert "run_id" not in third and "pod_id" not in third  # the task's ids died with it


def test_an_exception_is_a_field_and_secrets_are_redacted(root_logging: None, tmp_path: Path) -> None:
    out = io.StringIO()
    this_thread(logsetup.configure(json_settings(tmp_path), stream=out))
    log = logging.getLogger("worker.providers.runpod")
    with logsetup.work(run_id=9):
        try:
            raise RuntimeError(f"RunPod refused key {API_KEY}")
        except RuntimeError:
            log.exception("posting to %s failed with key %s", HOOK, API_KEY)
    (line,) = out.getvalue().splitlines()
    (record,) = records(line)
    assert API_KEY not in line and "hooktoken42" not in line
    assert record["message"] == "posting to [redacted] failed with key [redacted]"
    exception = str(record["exception"])
    assert exception.startswith("Traceback (most recent call last)")
    assert "RuntimeError: RunPod refused key [redacted]" in exception
    assert record["run_id"] == 9 and record["level"] == "ERROR"


def test_a_traceback_another_handler_formatted_first_is_still_redacted(root_logging: None,
                                                                       tmp_path: Path) -> None:
    out = io.StringIO()
    this_thread(logsetup.configure(json_settings(tmp_path), stream=out))
    log = logging.getLogger("worker.providers.elsewhere")
    first = logging.StreamHandler(io.StringIO())  # e.g. one whose redactor knows other secrets
    first.addFilter(redaction.SecretRedactor([]))
    log.addHandler(first)
    try:
        try:
            raise RuntimeError(f"refused {API_KEY}")
        except RuntimeError:
            log.exception("it failed")
    finally:
        log.removeHandler(first)
    (record,) = records(out.getvalue())
    assert str(record["exception"]).endswith("RuntimeError: refused [redacted]")


def test_text_lines_carry_the_ids(root_logging: None, tmp_path: Path) -> None:
    out = io.StringIO()
    this_thread(logsetup.configure(Settings(data_dir=tmp_path), stream=out))
    with logsetup.work(run_id=4, experiment_id=1):
        logging.getLogger("worker.director").info("run 4 failed: it broke")
    (line,) = out.getvalue().splitlines()
    assert line.endswith(" INFO worker.director: run 4 failed: it broke [run_id=4 experiment_id=1]")


def test_configuring_twice_keeps_one_handler(root_logging: None, tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    logsetup.configure(json_settings(tmp_path), stream=first)
    this_thread(logsetup.configure(json_settings(tmp_path), stream=second))
    logging.getLogger("server").warning("once")
    assert first.getvalue() == "" and len(records(second.getvalue())) == 1


def test_the_api_logs_json_with_the_ids_of_its_path(settings_env: None, monkeypatch: pytest.MonkeyPatch,
                                                    capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CADDIE_LOG_FORMAT", "json")
    monkeypatch.setenv("CADDIE_RUNPOD_API_KEY", API_KEY)
    get_settings.cache_clear()
    app = create_app()

    @app.get("/api/runs/{run_id}/explode")
    def explode(run_id: int) -> None:
        logging.getLogger("server.api.runs").info("looking at run %s", run_id)
        raise RuntimeError(f"it broke with {API_KEY}")

    capfd.readouterr()
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/api/runs/41/explode")
    assert response.status_code == 500 and response.json() == {"detail": "internal error"}
    err = capfd.readouterr().err
    assert API_KEY not in err
    lines = [record for record in records(err) if record.get("run_id") == 41]
    assert [r["message"] for r in lines] == ["looking at run 41", "unhandled error on GET /api/runs/41/explode"]
    assert "RuntimeError: it broke with [redacted]" in str(lines[1]["exception"])
