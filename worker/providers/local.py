"""The `local` provider: the pod is this machine and commands are subprocesses.

For one person's machine and the test double of a GPU pod; off unless the operator turns it
on (CADDIE_LOCAL_PROVIDER). Commands run with a scrubbed environment so that the worker's
settings (CADDIE_*) never reach the trainer. A participant's script runs as another,
unprivileged account (CADDIE_LOCAL_RUN_USER) that can read nothing of the data dir but its
run's own folder (docs/security.md).
"""

import hashlib
import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session, col, select

from server.models import Pod
from server.states import LIVE_POD_STATUSES, PodStatus
from worker.errors import CommandTimeout, RemoteError, StepFailed
from worker.providers import Placement, Provider
from worker.remote import CommandResult, Remote, copy_to_local, read_slice

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
        return copy_to_local(shutil.copyfile, path, local_path, "the local pod")

    def read_from(self, path: str, offset: int, limit: int) -> bytes:
        return read_slice(lambda: open(path, "rb"), offset, limit)

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

    @property
    def max_runs(self) -> int:
        """Runs at once on this machine: CADDIE_LOCAL_MAX_RUNS, else as many as its cores hold."""
        return self.settings.local_max_runs or max(1, (os.cpu_count() or 1) // self.settings.local_threads)

    def place(self, session: Session, pod: Pod) -> Placement | None:
        """This machine, while fewer than max_runs runs hold it; the rest wait in pod order."""
        running, ahead = self._line(session, pod)
        if running + ahead >= self.max_runs:
            return None
        return Placement(PodStatus.ready, host="localhost")

    def displaced(self, session: Session, pod: Pod) -> bool:
        # Two workers may admit two runs at once: the later pod gives its place back.
        return self._line(session, pod, before_only=True)[0] >= self.max_runs

    def wait_reason(self, session: Session, pod: Pod) -> str | None:
        running, ahead = self._line(session, pod)
        return (f"waiting for a local slot: {running} local runs are running (the cap is {self.max_runs}, "
                f"CADDIE_LOCAL_MAX_RUNS); number {ahead + 1} in line")

    def _line(self, session: Session, pod: Pod, *, before_only: bool = False) -> tuple[int, int]:
        """(local pods holding this machine, local pods waiting ahead of `pod`); with
        before_only, holders counted only among pods older than `pod`."""
        live = select(Pod).where(Pod.provider == self.name, col(Pod.status).in_(LIVE_POD_STATUSES),
                                 Pod.id != pod.id)
        pods = list(session.exec(live).all())
        holders = [p for p in pods if p.host is not None and (not before_only or p.id < pod.id)]
        ahead = [p for p in pods if p.host is None and p.id < pod.id]
        return len(holders), len(ahead)

    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        Path(self.workdir).mkdir(parents=True, exist_ok=True)
        seal_data_dir(self.settings.data_dir, keep_open=Path(self.workdir))
        return LocalRemote()

    def script_user(self) -> str | None:
        user = self.settings.local_run_user
        if user and os.geteuid() == 0:
            _ensure_account(user)
            return user
        if self.settings.local_scripts_unisolated:
            return None  # the operator accepted scripts running as the worker itself
        why = "the worker does not run as root" if user else "CADDIE_LOCAL_RUN_USER is empty"
        raise StepFailed(f"scripts on the local provider run as their own account, but {why}, so this one "
                         f"cannot be switched to CADDIE_LOCAL_RUN_USER={user!r}; run the worker as root, or set "
                         "CADDIE_LOCAL_SCRIPTS_UNISOLATED=true to accept scripts running as the worker's own user")

    def release(self, pod: Pod) -> PodStatus:
        return PodStatus.terminated  # nothing was rented


def seal_data_dir(data_dir: Path, *, keep_open: Path) -> None:
    """Nobody but the worker's own account may read the data dir (database, csrf.key, keys,
    run files): it becomes 0711 (passable, not listable) and each entry in it 0700/0600, but
    the pods folder `keep_open` (0711), whose run folders belong to their runs."""
    root = data_dir.resolve()
    keep = keep_open.resolve()
    root.chmod(0o711)
    for entry in root.iterdir():
        if entry.resolve() == keep or entry.is_symlink():
            continue
        entry.chmod(0o700 if entry.is_dir() else 0o600)
    if keep.parent == root:
        keep.chmod(0o711)


def _ensure_account(user: str) -> None:
    """Create the unprivileged account scripts run as, where it is missing (the worker is root)."""
    try:
        pwd.getpwnam(user)
        return
    except KeyError:
        pass
    made = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                           "--shell", "/usr/sbin/nologin", user], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        raise StepFailed(f"could not create the account CADDIE_LOCAL_RUN_USER={user!r} for scripts: "
                         f"{made.stderr.strip()[-200:]}")
