"""The whole path with real processes: REST submit → Celery worker → provider → trainer on CPU
→ log chunks in the database → verification → leaderboard.

Twice: on PostgreSQL + Redis with the `ssh` provider to a real sshd, and on the embedded
default (SQLite + Celery's filesystem transport, no server) with the `local` provider. The
stack is the one `caddie up` starts (API server, worker, one beat), each a real process.
"""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlmodel import Session, create_engine, select

from cli.stack import Stack
from server.auth import create_token
from server.config import Settings
from server.db import make_engine
from server.migrate import upgrade_head
from server.models import LogChunk
from tests.databases import postgres_database, redis_url
from tests.sshd import Sshd, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
E2E_REDIS_DB = 13  # a database of its own on the shared Redis, flushed before use
RUN_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A small corpus → `python -m trainer data build` → tokenizer and shards."""
    from cli.corpus import write_corpus

    root = tmp_path_factory.mktemp("dataset")
    corpus = write_corpus(root / "text", limit_bytes=300_000)
    built = subprocess.run(
        [sys.executable, "-m", "trainer", "data", "build", "--text", str(corpus), "--out",
         str(root / "data"), "--vocab-size", "512", "--val-docs", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    tokenizer, data_path = built.stdout.split()
    return {"tokenizer_path": tokenizer, "data_path": data_path}


def api(url: str, body: dict[str, Any] | None = None, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body else None,
                                     method="POST" if body else "GET", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{url} -> {error.code} {error.read().decode()}") from None


def start_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> Stack:
    for name, value in {"CADDIE_DATA_DIR": str(tmp_path / "data"), "CADDIE_POLL_INTERVAL_S": "0.5",
                        "CADDIE_RECONCILE_INTERVAL_S": "1", **env}.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    upgrade_head(settings.resolved_database_url())
    stack = Stack(settings, port=free_port(), log_dir=tmp_path / "logs")
    stack.start()
    try:
        stack.wait_healthy()
    except BaseException:
        stack.stop()
        raise
    return stack


def member_token(database_url: str) -> str:
    engine = make_engine(database_url)
    with Session(engine) as session:
        token = create_token(session, name="e2e-user")[1]
    engine.dispose()
    return token


def submit_and_wait(stack: Stack, dataset: dict[str, str], provider: str) -> dict[str, Any]:
    spec = {"name": f"e2e-{provider}", "author": "e2e", "preset": "tiny", "provider": provider,
            "seeds": [11], "config": {**dataset, "iterations": 12, "train_log_every": 1}}
    token = member_token(stack.settings.resolved_database_url())
    experiment = api(f"{stack.url}/api/experiments", spec, token)
    assert experiment["owner"] == "e2e-user"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        stack.check_alive()
        experiment = api(f"{stack.url}/api/experiments/{experiment['id']}")
        if experiment["status"] in {"finished", "cancelled"}:
            return experiment
        time.sleep(0.5)
    raise AssertionError(f"experiment not finished in {RUN_TIMEOUT_S} s: {experiment}")


def stored_log(database_url: str, run_id: int) -> bytes:
    engine = create_engine(database_url)
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id)
                              .order_by(LogChunk.offset)).all()  # type: ignore[arg-type]
    engine.dispose()
    expected_offset = 0
    for chunk in chunks:  # contiguous: nothing lost, nothing repeated
        assert chunk.offset == expected_offset
        expected_offset += chunk.nbytes
    return "".join(chunk.text for chunk in chunks).encode("utf-8")


def check_verified_and_ranked(stack: Stack, experiment: dict[str, Any], pod_log: Path) -> None:
    (run,) = experiment["runs"]
    assert run["status"] == "succeeded", run
    assert 0 < run["val_bpb"] < 10 and run["steps"] == 12
    artifact = Path(stack.settings.runs_dir()) / str(run["id"]) / "final_model.int8.ptz"
    assert run["bytes_total"] == run["code_bytes"] + artifact.stat().st_size
    log = api(f"{stack.url}/api/runs/{run['id']}/log?offset=0&limit=4194304")
    assert log["text"].encode() == pod_log.read_bytes()

    # The tiny preset trains without the 600 s cap, so it ranks on the non-record board.
    board = api(f"{stack.url}/api/leaderboard?author=e2e&track={experiment['track']}")
    (entry,) = board["data"]
    assert entry["experiment_id"] == experiment["id"] and entry["n"] == 1
    assert entry["mean_val_bpb"] == pytest.approx(run["val_bpb"])
    (seed,) = entry["seeds"]
    assert seed["eligible"] is False
    assert any("hardware" in r and "8×H100" in r for r in seed["reasons"])
    assert any("val_tokens" in r for r in seed["reasons"])
    assert entry["eligible"] is False and entry["reasons"]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.sshd
def test_postgres_redis_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd,
                            dataset: dict[str, str]) -> None:
    broker = redis_url(E2E_REDIS_DB)
    redis.Redis.from_url(broker).flushdb()
    with postgres_database("caddie_e2e") as database_url:
        stack = start_stack(monkeypatch, tmp_path, {
            "CADDIE_DATABASE_URL": database_url, "CADDIE_REDIS_URL": broker,
            "CADDIE_SSH_HOSTS": sshd.target, "CADDIE_SSH_KEY_FILE": str(sshd.key_path),
            "CADDIE_SSH_WORKDIR": str(tmp_path / "pod"), "CADDIE_REMOTE_PYTHON": sys.executable,
        })
        try:
            experiment = submit_and_wait(stack, dataset, "ssh")
        finally:
            stack.stop()
        run_id = experiment["runs"][0]["id"]
        pod_log = tmp_path / "pod" / f"run-{run_id}" / "train.log"
        assert stored_log(database_url, run_id) == pod_log.read_bytes()
        stack.start()  # the API again, to read what the stopped stack left behind
        try:
            stack.wait_healthy()
            check_verified_and_ranked(stack, experiment, pod_log)
        finally:
            stack.stop()


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          dataset: dict[str, str]) -> None:
    monkeypatch.delenv("CADDIE_DATABASE_URL", raising=False)
    monkeypatch.delenv("CADDIE_REDIS_URL", raising=False)
    stack = start_stack(monkeypatch, tmp_path, {"CADDIE_LOCAL_PROVIDER": "members"})
    try:
        assert stack.settings.resolved_database_url().startswith("sqlite:///")
        assert stack.settings.broker_url() == "caddiefs://"
        experiment = submit_and_wait(stack, dataset, "local")
        run_id = experiment["runs"][0]["id"]
        pod_log = Path(stack.settings.data_dir) / "pods" / f"run-{run_id}" / "train.log"
        assert stored_log(stack.settings.resolved_database_url(), run_id) == pod_log.read_bytes()
        check_verified_and_ranked(stack, experiment, pod_log)
    finally:
        stack.stop()
