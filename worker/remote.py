"""The operations the director performs on a pod, whichever provider lent it.

A `Remote` is one open connection to a pod: the local machine (a subprocess) or a
host over SSH. Paths are POSIX paths on the pod.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from worker.errors import RemoteError, StepFailed


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Remote(Protocol):
    # Fingerprint of the host's key as "<type> SHA256:<base64>"; None where there is no host key.
    host_key: str | None

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        """Run a shell command; raise CommandTimeout after timeout_s seconds."""
        ...

    def put_bytes(self, data: bytes, path: str) -> str:
        """Write data to path via a temp name and a rename; check and return its sha256."""
        ...

    def get(self, path: str, local_path: str) -> int:
        """Copy a pod file to local_path (via a temp name); return its size in bytes."""
        ...

    def read_from(self, path: str, offset: int, limit: int) -> bytes:
        """Up to `limit` bytes of path from byte `offset`; b"" if the file does not exist."""
        ...

    def exists(self, path: str) -> bool: ...

    def close(self) -> None: ...


def run_or_fail(remote: Remote, command: str) -> None:
    """Run a short command (a minute at most) that must succeed; StepFailed says which failed."""
    result = remote.run(command, timeout_s=60)
    if not result.ok:
        raise StepFailed(f"command on the pod failed ({command.split()[0]}): {result.stderr.strip()[-200:]}")


def copy_to_local(copy: Callable[[str, str], object], path: str, local_path: str, where: str) -> int:
    """`Remote.get` given the transport's `copy(pod path, local path)`: copy to a temp name, then
    rename; RemoteError naming the pod (`where`) if the file is not there."""
    tmp = f"{local_path}.tmp"
    try:
        copy(path, tmp)
    except FileNotFoundError:
        raise RemoteError(f"{path} does not exist on {where}") from None
    Path(tmp).replace(local_path)
    return Path(local_path).stat().st_size


def read_slice(open_file: Callable[[], AbstractContextManager[Any]], offset: int, limit: int) -> bytes:
    """`Remote.read_from` given how to open the pod file for binary reading."""
    try:
        with open_file() as handle:
            handle.seek(offset)
            return handle.read(limit)
    except FileNotFoundError:
        return b""
