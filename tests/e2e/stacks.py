"""What the end-to-end modules share: starting the stack `caddie up` starts (API server, worker,
one beat, each a real process) with a provider's settings, the pods' data folders, tokens, the
REST client and the waits for an experiment's end or a re-run's verdict."""

import json
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlmodel import Session, create_engine, select

from cli.stack import Stack
from server.auth import Role, create_token
from server.config import Settings
from server.db import make_engine
from server.migrate import upgrade_head
from server.models import LogChunk
from tests.databases import postgres_database, redis_url
from tests.sshd import Sshd, free_port

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 300
# The worker's wait between looks at a pod (seconds; 2 by default): a tiny run lasts seconds.
# Not shorter: on the `ssh` provider each look is a new SSH connection.
WORKER_POLL_S = 0.5
# The tests' wait between looks at the API (seconds).
POLL_S = 0.25


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
    """The stack on a free port, its data and logs under `tmp_path`, healthy; `env` on top of
    the tests' short intervals."""
    for name, value in {"CADDIE_DATA_DIR": str(tmp_path / "data"), "CADDIE_POLL_INTERVAL_S": str(WORKER_POLL_S),
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


def embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stack's default: SQLite and the filesystem broker in its data dir, no server."""
    monkeypatch.delenv("CADDIE_DATABASE_URL", raising=False)
    monkeypatch.delenv("CADDIE_REDIS_URL", raising=False)


@contextmanager
def postgres_and_redis(name: str, redis_db: int) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and the shared Redis's database `redis_db`, flushed (each
    module keeps to its own: others may run at the same time under pytest -n); the stack's
    settings for them."""
    broker = redis_url(redis_db)
    redis.Redis.from_url(broker).flushdb()
    with postgres_database(name) as database_url:
        yield {"CADDIE_DATABASE_URL": database_url, "CADDIE_REDIS_URL": broker}


def ssh_provider(sshd: Sshd, workdir: Path, python: str = sys.executable) -> dict[str, str]:
    """The `ssh` provider's settings for one pod: the test's sshd, runs under `workdir`."""
    return {"CADDIE_SSH_HOSTS": sshd.target, "CADDIE_SSH_KEY_FILE": str(sshd.key_path),
            "CADDIE_SSH_WORKDIR": str(workdir), "CADDIE_REMOTE_PYTHON": python}


def ssh_scripts(sshd: Sshd, tmp_path: Path) -> dict[str, str]:
    """The `ssh` provider on the test's sshd, its pod's data folder holding the official
    layout's tiny shards (`official_data`), of which a run checks the first training shard."""
    return {**ssh_provider(sshd, tmp_path / "pod"),
            "CADDIE_SSH_DATA_DIR": str(official_data(tmp_path / "pod-data")), "CADDIE_POD_TRAIN_SHARDS": "1"}


def local_scripts(pod_data: Path) -> dict[str, str]:
    """The `local` provider open to members, running a submitted script with `pod_data` as the
    pod's data folder (its first training shard only)."""
    return {"CADDIE_LOCAL_PROVIDER": "members", "CADDIE_LOCAL_DATA_DIR": str(pod_data),
            "CADDIE_POD_TRAIN_SHARDS": "1",
            # The script runs as the worker's own user: pytest's tmp_path (0700) is closed to the
            # unprivileged account, and isolation is tests/worker/test_isolation.py's subject.
            "CADDIE_LOCAL_RUN_USER": "", "CADDIE_LOCAL_SCRIPTS_UNISOLATED": "true"}


def official_data(root: Path) -> Path:
    """A pod data folder holding one tiny sp1024 validation and training shard each (the
    shard format: 256 int32 header words — magic, version, token count — then uint16
    tokens), so the pod's data check passes without a download."""
    shards = root / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin"):
        tokens = list(range(1, 65))
        header = struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253))
        (shards / name).write_bytes(header + struct.pack(f"<{len(tokens)}H", *tokens))
    return root


def challenge_layout(root: Path, dataset: dict[str, str]) -> Path:
    """A pod data folder with `dataset` (the small sp512 set) at the challenge's paths."""
    (root / "datasets").mkdir(parents=True)
    (root / "tokenizers").mkdir()
    (root / "datasets" / "fineweb10B_sp512").symlink_to(dataset["data_path"])
    (root / "tokenizers" / "fineweb_512_bpe.model").symlink_to(dataset["tokenizer_path"])
    return root


def member_token(database_url: str, name: str = "e2e-user") -> str:
    engine = make_engine(database_url)
    with Session(engine) as session:
        token = create_token(session, name=name)[1]
    engine.dispose()
    return token


def admin_token(database_url: str) -> str:
    engine = make_engine(database_url)
    with Session(engine) as session:
        token = create_token(session, name="reviewer", role=Role.admin)[1]
    engine.dispose()
    return token


def wait_finished(stack: Stack, experiment_id: int, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The experiment once it is finished or cancelled; fails if a process of the stack died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        experiment = api(f"{stack.url}/api/experiments/{experiment_id}")
        if experiment["status"] in {"finished", "cancelled"}:
            return experiment
        time.sleep(POLL_S)
    raise AssertionError(f"experiment {experiment_id} not finished in {timeout_s} s: {experiment}")


def wait_verdict(stack: Stack, experiment_id: int, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The re-run's verdict once it is no longer "running"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        found = api(f"{stack.url}/api/experiments/{experiment_id}/verdict")["verdict"]
        if found["outcome"] != "running":
            return found
        time.sleep(POLL_S)
    raise AssertionError(f"re-run {experiment_id} not judged in {timeout_s} s: {found}\n{stall(stack, found)}")


def stall(stack: Stack, verdict: dict[str, Any]) -> str:
    """Where the unfinished seeds stand: their status changes, and the worker's last lines."""
    lines = []
    for row in verdict["seeds"]:
        if row["status"] not in ("succeeded", "failed", "cancelled"):
            events = api(f"{stack.url}/api/runs/{row['run_id']}")["events"]
            lines += [f"run {row['run_id']}: {e['created_at']} {e['from_status']} -> {e['to_status']} {e['reason'] or ''}"
                      for e in events]
    assert stack.log_dir is not None
    worker = (stack.log_dir / "worker.log").read_text(errors="replace").splitlines()
    return "\n".join(lines + ["worker.log:"] + worker[-60:])


def stored_log(database_url: str, run_id: int) -> bytes:
    """The run's log as the database holds it, checked contiguous: nothing lost or repeated."""
    engine = create_engine(database_url)
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id)
                              .order_by(LogChunk.offset)).all()  # type: ignore[arg-type]
    engine.dispose()
    expected_offset = 0
    for chunk in chunks:
        assert chunk.offset == expected_offset
        expected_offset += chunk.nbytes
    return "".join(chunk.text for chunk in chunks).encode("utf-8")
