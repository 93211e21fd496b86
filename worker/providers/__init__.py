"""Where runs get their pods. Every provider hands the director the same `Remote` operations,
so the director never knows which one lent the pod.

- `local`: the pod is this machine; commands are subprocesses.
- `ssh`: a pool of hosts the operator owns (settings.ssh_hosts); one run per host at a time.
- `runpod`: pods rented from RunPod's API (worker.providers.runpod).
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session

from server.config import Settings
from server.models import Pod
from server.states import PodStatus
from worker.errors import ConnectError, StepFailed
from worker.remote import Remote


class RetryLater(ConnectError):
    """The provider cannot do it now (no capacity, 5xx, timeout, sshd still booting).

    The director tries the step again after `backoff_s`, doubling, and fails the run with
    this reason after `attempts` tries.
    """

    def __init__(self, reason: str, *, attempts: int, backoff_s: float) -> None:
        super().__init__(reason)
        self.attempts = attempts
        self.backoff_s = backoff_s


@dataclass(frozen=True)
class ListedPod:
    """A pod as the provider lists it."""

    external_id: str
    name: str
    status: str


@dataclass(frozen=True)
class Placement:
    """What a provider found for a pod; the director writes it to the pod's row (server.pods).

    `starting`: rented, not reachable yet (external_id names it; deadline_at, when set, is the
    deadline its provider fixed at creation). `ready`: reachable at host:port as username, at
    cost_per_hour dollars an hour. `note`: what the run's events should say, once per run:
    a note whose start `note_key` an event of the run already has is not said again.
    """

    status: PodStatus
    host: str | None = None
    port: int | None = None
    username: str | None = None
    external_id: str | None = None
    cost_per_hour: float | None = None
    deadline_at: datetime | None = None
    note: str | None = None
    note_key: str | None = None

    def fields(self) -> dict[str, Any]:
        """The pod columns this placement sets (those it knows)."""
        names = ("host", "port", "username", "external_id", "cost_per_hour", "deadline_at")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


class Provider(ABC):
    name: str
    # True where pods are rented and billed: their number is capped (settings.max_pods).
    rents: bool = False

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
    def data_dir(self) -> str:
        """Folder on the pod that holds the official data (datasets/, tokenizers/) for every run."""
        configured = getattr(self.settings, f"{self.name}_data_dir", "")
        return configured or f"{self.workdir}/data"

    @property
    def cpu_threads(self) -> int | None:
        """Threads per trainer process (OMP_NUM_THREADS) where runs share CPU cores; None: leave it."""
        return None

    def script_user(self) -> str | None:
        """The account a participant's script is switched to on the pod; None: it runs as the
        account the worker logs in with (a pod of its own, or a host the operator lends)."""
        return None

    @abstractmethod
    def place(self, session: Session, pod: Pod) -> Placement | None:
        """Find the pod a host, renting one where the provider rents; None while none is free
        or up yet. Reads rows and writes none: the caller writes what it returns."""

    def displaced(self, session: Session, pod: Pod) -> bool:
        """Once the pod's placement is written: whether older pods fill its host (two workers
        placed two pods at once), so that this one gives the host back and waits."""
        return False

    def wait_reason(self, session: Session, pod: Pod) -> str | None:
        """What a run whose pod got no host (place None) waits for, shown as its reason."""
        return None

    @abstractmethod
    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        """Open a connection to the pod; raises ConnectError."""

    @abstractmethod
    def release(self, pod: Pod) -> PodStatus:
        """Give the pod back; returns the pod's new status (released or terminated).

        Raises when the provider has not confirmed that a rented pod is gone: the pod row
        stays active and the reconciler tries again.
        """

    @property
    def deadline_file(self) -> str | None:
        """File on the pod holding its deadline (unix seconds) for the watchdog; None: no watchdog."""
        return None

    def watchdog_script(self, pod: Pod, seconds: float) -> str | None:
        """A shell script the pod runs detached: it ends the pod after `seconds`. None: no such stop."""
        return None

    def price_per_hour(self, pod: Pod | None = None) -> float | None:
        """Dollars per hour: of the pod, as the provider names it once the pod is up, or
        (pod None) the estimate for a new one. None: pods of this provider cost nothing."""
        return None

    def stop_at(self, pod: Pod) -> datetime | None:
        """When the provider itself ends the pod, fixed when it was made; None: no such stop."""
        return None

    def forget(self, pod: Pod) -> None:
        """Drop what this worker kept for a pod that is gone (its SSH key, say)."""
        return None

    def list_pods(self) -> list[ListedPod] | None:
        """Every pod the account holds, ours or not; None where the provider cannot list."""
        return None

    def terminate(self, external_id: str) -> bool:
        """End a pod by the provider's id; True once the provider confirms it is gone."""
        raise NotImplementedError(f"the {self.name} provider rents no pods")


def get_provider(name: str, settings: Settings) -> Provider:
    from worker.providers.local import LocalProvider
    from worker.providers.runpod import RunPodProvider
    from worker.providers.ssh import SSHProvider

    providers: dict[str, type[Provider]] = {"local": LocalProvider, "ssh": SSHProvider,
                                            "runpod": RunPodProvider}
    if name not in providers:
        raise StepFailed(f"unknown provider {name!r} (known: {', '.join(sorted(providers))})")
    return providers[name](settings)
