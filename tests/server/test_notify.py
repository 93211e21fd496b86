"""Webhook notifications: queued when a run or experiment ends, posted by the worker's task."""

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from sqlmodel import Session

from server.config import get_settings
from server.dispatch import NOTIFY
from server.experiments import finalize_experiment
from server.runs import transition
from server.states import RunStatus
from tests.factories import make_experiment, make_run
from tests.server.broker import queued_tasks


class Webhook:
    """A local HTTP server standing in for Slack's incoming webhook."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict[str, object]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                webhook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook_env(setting: Callable[[str, str], None]) -> None:
    setting("CADDIE_WEBHOOK_URL", "http://127.0.0.1:9/hook")


def notifications(data_dir: Path) -> list[dict[str, object]]:
    return [args[0] for name, args in queued_tasks(data_dir) if name == NOTIFY]  # type: ignore[misc]


def test_an_ended_run_and_experiment_are_announced(webhook_env: None, session: Session,
                                                   data_dir: Path) -> None:
    experiment = make_experiment(session, name="wd-sweep", seeds=[7])
    run = make_run(session, experiment, seed=7, status="verifying")
    assert run.id is not None and experiment.id is not None
    transition(session, run.id, RunStatus.failed, fence=None, reason="trainer exited with code 1")
    assert finalize_experiment(session, experiment.id)

    run_note, experiment_note = notifications(data_dir)
    assert run_note["event"] == "run.ended" and run_note["status"] == "failed"
    assert f"run {run.id}" in str(run_note["text"]) and "exited with code 1" in str(run_note["text"])
    assert experiment_note["event"] == "experiment.ended"
    assert "'wd-sweep' finished" in str(experiment_note["text"]) and experiment_note["eligible"] is False


def test_nothing_is_queued_without_a_webhook(settings_env: None, session: Session, data_dir: Path) -> None:
    experiment = make_experiment(session, seeds=[7])
    run = make_run(session, experiment, seed=7, status="queued")
    assert run.id is not None
    transition(session, run.id, RunStatus.cancelled, fence=None, reason="cancelled by user")
    assert notifications(data_dir) == []


def test_the_worker_posts_the_payload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from worker.tasks import WebhookFailed, send_notification

    hook = Webhook()
    monkeypatch.setenv("CADDIE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("CADDIE_WEBHOOK_URL", hook.url)
    get_settings.cache_clear()
    try:
        send_notification.run({"text": "Caddie run 3 succeeded", "event": "run.ended"})
        assert hook.bodies == [{"text": "Caddie run 3 succeeded", "event": "run.ended"}]

        failing = Webhook(status=500)
        monkeypatch.setenv("CADDIE_WEBHOOK_URL", failing.url + "?token=hooksecret123")
        get_settings.cache_clear()
        with pytest.raises(WebhookFailed) as raised:  # Celery retries it with backoff
            send_notification.run({"text": "x"})
        # The URL carries the webhook's credential: the error Celery logs must not name it.
        assert str(raised.value) == "the webhook answered 500"
        assert raised.value.__cause__ is None and raised.value.__suppress_context__
    finally:
        get_settings.cache_clear()


def test_names_cannot_ping_or_link_in_slack(webhook_env: None, session: Session,
                                            data_dir: Path) -> None:
    experiment = make_experiment(session, name="<!channel> & <https://evil.example|docs>",
                                 seeds=[7])
    run = make_run(session, experiment, seed=7, status="verifying")
    assert run.id is not None and experiment.id is not None
    transition(session, run.id, RunStatus.failed, fence=None, reason="crashed <!here>")
    assert finalize_experiment(session, experiment.id)

    texts = [str(note["text"]) for note in notifications(data_dir)]
    assert all("<" not in text and ">" not in text for text in texts)
    assert "crashed &lt;!here&gt;" in texts[0]
    assert "'&lt;!channel&gt; &amp; &lt;https://evil.example|docs&gt;'" in texts[1]
