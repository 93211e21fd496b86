"""The `local` provider: the pod is this machine and commands are subprocesses.

The embedded default and the test double of a GPU pod. Commands run with a scrubbed
environment so that the worker's settings (CADDIE_*) never reach the trainer.
"""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session

from server.models import Pod, utcnow
from server.states import PodStatus
from worker.errors import CommandTimeout, RemoteError
from worker.providers import Provider
from worker.remote import CommandResult, Remote

# The only variables a pod command inherits from the worker.
PASSED_ENV = ("PATH", "HOME", "LANG", "TMPDIR")


class LocalRemote:
    """Implements `worker.remote.Remote` on this machine."""

    host_key: str | None = None

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        try:
            done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=timeout_s,
                                  env=env, stdin=subprocess.DEVNULL, check=False)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"local command took longer than {timeout_s:g} s") from None
        return CommandResult(done.returncode, done.stdout.decode(errors="replace"),
                             done.stderr.decode(errors="replace"))

    def put_bytes(self, data: bytes, path: str) -> str:
        tmp = Path(f"{path}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        expected = hashlib.sha256(data).hexdigest()
        actual = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        if actual != expected:
            raise RemoteError(f"upload of {Path(path).name} is corrupt (sha256 {actual}, expected {expected})")
        return expected

    def get(self, path: str, local_path: str) -> int:
        tmp = f"{local_path}.tmp"
        try:
            shutil.copyfile(path, tmp)
        except FileNotFoundError:
            raise RemoteError(f"{path} does not exist on the local pod") from None
        Path(tmp).replace(local_path)
        return Path(local_path).stat().st_size

    def read_from(self, path: str, offset: int, limit: int) -> bytes:
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                return handle.read(limit)
        except FileNotFoundError:
            return b""

    def exists(self, path: str) -> bool:
        return Path(path).exists()

    def close(self) -> None:
        pass


class LocalProvider(Provider):
    name = "local"

    @property
    def workdir(self) -> str:
        return str((self.settings.data_dir / "pods").resolve())

    @property
    def python(self) -> str:
        return self.settings.local_python or sys.executable

    @property
    def cpu_threads(self) -> int | None:
        # Several seeds share this machine's cores; torch's default of one thread per core
        # in every process oversubscribes them and slows all runs several times over.
        return self.settings.local_threads

    def assign_host(self, session: Session, pod: Pod) -> bool:
        pod.host, pod.status, pod.updated_at = "localhost", PodStatus.ready.value, utcnow()
        session.add(pod)
        session.commit()
        return True

    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        return LocalRemote()

    def release(self, pod: Pod) -> PodStatus:
        return PodStatus.terminated  # nothing was rented
