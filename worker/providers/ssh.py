"""The `ssh` provider: a pool of hosts the operator owns, reached over SSH.

settings.ssh_hosts lists them ("user@host:port,..."). A host belongs to at most one run
at a time: the one whose Pod row holds it in an active state. Two workers that pick the
same free host at once both see it after committing; the lower pod id keeps it.
"""

from pathlib import Path

from sqlmodel import Session, col, select

from server.models import Pod
from server.states import LIVE_POD_STATUSES, PodStatus
from worker.errors import StepFailed
from worker.providers import Placement, Provider
from worker.remote import Remote
from worker.ssh import SSHRemote, SSHTarget


class SSHProvider(Provider):
    name = "ssh"

    @property
    def workdir(self) -> str:
        return self.settings.ssh_workdir

    @property
    def python(self) -> str:
        return self.settings.remote_python

    def targets(self) -> list[SSHTarget]:
        hosts = [h for h in self.settings.ssh_hosts.split(",") if h.strip()]
        if not hosts:
            raise StepFailed("the ssh provider has no hosts: set CADDIE_SSH_HOSTS")
        try:
            return [SSHTarget.parse(h, name="CADDIE_SSH_HOSTS entry") for h in hosts]
        except ValueError as exc:
            raise StepFailed(str(exc)) from None

    def key_file(self) -> Path:
        if self.settings.ssh_key_file is None:
            raise StepFailed("the ssh provider has no key: set CADDIE_SSH_KEY_FILE")
        return self.settings.ssh_key_file

    def place(self, session: Session, pod: Pod) -> Placement | None:
        taken = {(p.host, p.port) for p in self._holders(session, exclude=pod.id)}
        free = [t for t in self.targets() if (t.host, t.port) not in taken]
        if not free:
            return None
        target = free[0]
        return Placement(PodStatus.ready, host=target.host, port=target.port, username=target.user)

    def displaced(self, session: Session, pod: Pod) -> bool:
        """Two workers that picked the same free host at once both see it: the lower pod id keeps it."""
        return any(p.id < pod.id for p in self._holders(session, exclude=pod.id)
                   if (p.host, p.port) == (pod.host, pod.port))

    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        target = SSHTarget(user=pod.username or "root", host=pod.host or "", port=pod.port or 22)
        return SSHRemote.connect(target, self.key_file(), pinned_host_key=pinned_host_key)

    def release(self, pod: Pod) -> PodStatus:
        return PodStatus.released  # the host stays up and goes back to the pool

    def _holders(self, session: Session, *, exclude: int | None) -> list[Pod]:
        query = select(Pod).where(
            Pod.provider == self.name,
            col(Pod.status).in_(LIVE_POD_STATUSES),
            col(Pod.host).is_not(None),
            Pod.id != exclude,
        )
        return list(session.exec(query).all())
