"""Where runs get their pods. Every provider hands the director the same `Remote` operations,
so the director never knows which one lent the pod.

- `local`: the pod is this machine; commands are subprocesses.
- `ssh`: a pool of hosts the operator owns (settings.ssh_hosts); one run per host at a time.
"""

from abc import ABC, abstractmethod

from sqlmodel import Session

from server.config import Settings
from server.models import Pod
from server.states import PodStatus
from worker.errors import StepFailed
from worker.remote import Remote

# Pod states in which a pod (and its host) belongs to a run.
ACTIVE_POD_STATUSES = (PodStatus.requested, PodStatus.starting, PodStatus.ready, PodStatus.busy)


class Provider(ABC):
    name: str

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    @abstractmethod
    def workdir(self) -> str:
        """Directory on the pod under which each run gets `run-<id>/`."""

    @property
    @abstractmethod
    def python(self) -> str:
        """The Python command on the pod that runs the trainer."""

    @property
    def cpu_threads(self) -> int | None:
        """Threads per trainer process (OMP_NUM_THREADS) where runs share CPU cores; None: leave it."""
        return None

    @abstractmethod
    def assign_host(self, session: Session, pod: Pod) -> bool:
        """Give the pod row a host (and commit it); False when none is free yet."""

    @abstractmethod
    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        """Open a connection to the pod; raises ConnectError."""

    @abstractmethod
    def release(self, pod: Pod) -> PodStatus:
        """Give the pod back; returns the pod's new status (released or terminated)."""


def get_provider(name: str, settings: Settings) -> Provider:
    from worker.providers.local import LocalProvider
    from worker.providers.ssh import SSHProvider

    providers: dict[str, type[Provider]] = {"local": LocalProvider, "ssh": SSHProvider}
    if name not in providers:
        raise StepFailed(f"unknown provider {name!r} (known: {', '.join(sorted(providers))})")
    return providers[name](settings)
