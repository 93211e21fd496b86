"""The processes of one Caddie installation: API server, Celery worker and exactly one beat.

`caddie up` starts them together; with no CADDIE_DATABASE_URL / CADDIE_REDIS_URL they use
SQLite and Celery's filesystem transport in CADDIE_DATA_DIR, so nothing else must run.
"""

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cli.ports import busy_message, port_is_free
from server.config import Settings


class PortBusy(RuntimeError):
    """The API server's port is held by another process; the message names it and --port."""


@dataclass
class Stack:
    settings: Settings
    host: str = "127.0.0.1"
    port: int = 8000
    worker_concurrency: int = 2
    log_dir: Path | None = None  # None: the processes inherit this terminal
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Echoed by this start's /healthz: another server answering on the port is not taken for ours.
    nonce: str = field(default_factory=lambda: secrets.token_hex(16))

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def commands(self) -> dict[str, list[str]]:
        py = sys.executable
        beat_schedule = self.settings.data_dir.resolve() / "celerybeat-schedule"
        # Beat prints its banner before any hook can stop it: with json logs only records may be written.
        quiet = ["--quiet"] if self.settings.log_format == "json" else []
        return {
            "server": [py, "-m", "uvicorn", "app.main:app", "--host", self.host,
                       "--port", str(self.port), "--log-level", "warning"],
            "worker": [py, "-m", "celery", "-A", "worker.app", "worker", "--pool", "prefork",
                       "--concurrency", str(self.worker_concurrency), "--loglevel", "INFO",
                       "--hostname", f"caddie-worker-{os.getpid()}@%h"],
            "beat": [py, "-m", "celery", "-A", "worker.app", *quiet, "beat", "--loglevel", "INFO",
                     "--schedule", str(beat_schedule)],
        }

    def check_port(self) -> None:
        """Raise PortBusy, naming the process that holds the port, before anything starts."""
        if not port_is_free(self.host, self.port):
            raise PortBusy(busy_message(self.host, self.port))

    def start(self) -> None:
        self.check_port()
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CADDIE_DATA_DIR": str(self.settings.data_dir.resolve()),
               "CADDIE_INSTANCE_NONCE": self.nonce}
        for name, command in self.commands().items():
            out = self._output(name)
            self.processes.append(subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def _output(self, name: str) -> int | None:
        if self.log_dir is None:
            return None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return os.open(self.log_dir / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def wait_healthy(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    answer = response.read()
            except OSError:
                time.sleep(0.3)
                continue
            if self._ours(answer):
                return
            raise PortBusy(f"something else answers {self.url}/healthz (not the server started now); "
                           + busy_message(self.host, self.port))
        raise RuntimeError(f"the API server did not answer on {self.url}/healthz in {timeout_s:.0f} s")

    def _ours(self, answer: bytes) -> bool:
        try:
            return bool(json.loads(answer).get("instance") == self.nonce)
        except (ValueError, AttributeError):
            return False

    def check_alive(self) -> None:
        for name, process in zip(self.commands(), self.processes, strict=False):
            if process.poll() is not None:
                where = f" (see {self.log_dir / (name + '.log')})" if self.log_dir else ""
                # uvicorn exits 3 when it cannot bind: someone took the port after check_port.
                taken = ("; " + busy_message(self.host, self.port)
                         if name == "server" and not port_is_free(self.host, self.port) else "")
                raise RuntimeError(f"the {name} process exited with code {process.returncode}{where}{taken}")

    def stop(self, timeout_s: float = 20.0) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
