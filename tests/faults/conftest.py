"""Fault-test fixtures: real processes that the tests kill and restart.

- `redis_server`: a redis-server of the test's own on a free loopback port (append-only file,
  fsync always, as a broker that must survive a restart is run);
- `fault_stack`: PostgreSQL (a throwaway database, migrated), a Celery worker
  (tests.faults.celery_worker: the real worker with the fake trainer) and one beat, both
  against that Redis, with the `ssh` provider pointed at the test's sshd.
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.db import make_engine
from server.migrate import upgrade_head
from server.models import Run
from tests.databases import postgres_database
from tests.factories import make_experiment, make_run
from tests.sshd import Sshd, free_port

REPO = Path(__file__).resolve().parents[2]
REDIS = "/usr/bin/redis-server"


class RedisServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        log = open(self.folder / "redis.log", "ab")
        self.process = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_for(lambda: _answers(self.port), what=f"redis on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None


class FaultStack:
    """A worker and a beat, each in its own process group so a test can kill one whole."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.worker: subprocess.Popen[bytes] | None = None
        self.beat: subprocess.Popen[bytes] | None = None
        self.workers_started = 0

    def start_worker(self) -> None:
        self.workers_started += 1
        self.worker = self._spawn("worker", [
            sys.executable, "-m", "tests.faults.celery_worker", "worker", "--pool", "prefork",
            "--concurrency", "1", "--loglevel", "INFO",
            "--hostname", f"faults-{os.getpid()}-{self.workers_started}@%h"])

    def start_beat(self) -> None:
        self.beat = self._spawn("beat", [
            sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel", "INFO",
            "--schedule", str(self.log_dir / "celerybeat-schedule")])

    def kill_worker(self) -> None:
        """kill -9 of the worker's whole process group (main process and pool children)."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=10)

    def stop(self) -> None:
        for process in (self.worker, self.beat):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def _spawn(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        out = open(self.log_dir / f"{name}.log", "ab")
        return subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def fault_db() -> Iterator[tuple[str, Engine]]:
    with postgres_database("caddie_faults") as url:
        upgrade_head(url)
        engine = make_engine(url)
        try:
            yield url, engine
        finally:
            engine.dispose()


@pytest.fixture
def fault_stack(tmp_path: Path, sshd: Sshd, redis_server: RedisServer,
                fault_db: tuple[str, Engine]) -> Iterator[FaultStack]:
    url, _ = fault_db
    env = {**os.environ, "CADDIE_DATA_DIR": str(tmp_path / "data"), "CADDIE_DATABASE_URL": url,
           "CADDIE_REDIS_URL": redis_server.url, "CADDIE_SSH_HOSTS": sshd.target,
           "CADDIE_SSH_KEY_FILE": str(sshd.key_path), "CADDIE_SSH_WORKDIR": str(tmp_path / "pod"),
           "CADDIE_REMOTE_PYTHON": sys.executable, "CADDIE_POLL_INTERVAL_S": "0.3",
           "CADDIE_RECONCILE_INTERVAL_S": "0.5", "CADDIE_LEASE_S": "3", "CADDIE_RUN_GRACE_S": "60",
           "CADDIE_SSH_CONNECT_ATTEMPTS": "8"}
    stack = FaultStack(env, tmp_path)
    stack.start_worker()
    stack.start_beat()
    try:
        yield stack
    finally:
        stack.stop()


def new_ssh_run(engine: Engine, **config: object) -> int:
    with Session(engine) as session:
        experiment = make_experiment(session, preset="tiny", provider="ssh", seeds=[7], config=config)
        run = make_run(session, experiment, seed=7)
        assert run.id is not None
        return run.id


def wait_run(engine: Engine, run_id: int, done: object, *, timeout_s: float = 90.0) -> Run:
    """Poll the row until `done(run)` is true."""
    deadline = time.monotonic() + timeout_s
    while True:
        with Session(engine) as session:
            run = session.get(Run, run_id)
            assert run is not None
            session.expunge(run)
        if done(run):  # type: ignore[operator]
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run.status} after {timeout_s:g} s (reason: {run.reason})")
        time.sleep(0.1)


def _answers(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(7).startswith(b"+PONG")
    except OSError:
        return False


def _wait_for(check: object, *, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start in {timeout_s:g} s")
        time.sleep(0.05)
