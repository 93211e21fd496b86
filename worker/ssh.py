"""A pod reached over SSH (paramiko): commands with deadlines, SFTP files, pinned host keys.

Host keys are trusted on first use *per run*: the first connection of a run records the
host's key fingerprint on the run row, and every later connection of that run must present
the same key. Nothing is read from or written to ~/.ssh.
"""

import hashlib
import logging
import posixpath
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from worker.errors import CommandTimeout, ConnectError, HostKeyMismatch, RemoteError
from worker.remote import CommandResult, copy_to_local, read_slice

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0  # TCP connect
BANNER_TIMEOUT_S = 20.0  # sshd that has just started may be slow to greet
AUTH_TIMEOUT_S = 20.0
CHANNEL_TIMEOUT_S = 20.0  # waiting for a channel-open answer
KEEPALIVE_S = 15
MAX_OUTPUT_BYTES = 8 * 1024 * 1024  # per stream of one command; more is cut off


@dataclass(frozen=True)
class SSHTarget:
    user: str
    host: str
    port: int = 22

    @classmethod
    def parse(cls, text: str, *, name: str = "ssh host") -> "SSHTarget":
        """'user@host:port' (port optional, default 22)."""
        user, at, rest = text.strip().rpartition("@")
        host, colon, port = rest.rpartition(":") if ":" in rest else (rest, "", "22")
        if not at or not user or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{name} {text!r} is not of the form user@host:port")
        return cls(user=user, host=host, port=int(port))

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def fingerprint(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.fingerprint}"


def load_key(path: Path) -> paramiko.PKey:
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise ConnectError(f"SSH key file {path} does not exist") from None
    except (paramiko.SSHException, ValueError, OSError) as exc:
        raise ConnectError(f"SSH key file {path} cannot be read: {type(exc).__name__}") from None


class _PinnedHostKey(paramiko.MissingHostKeyPolicy):
    """Accept the first key seen when nothing is pinned; otherwise demand the pinned one."""

    def __init__(self, pinned: str | None) -> None:
        self.pinned = pinned
        self.seen: str | None = None

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        seen = fingerprint(key)
        if self.pinned is not None and seen != self.pinned:
            raise HostKeyMismatch(
                f"host key of {hostname} changed: this run pinned {self.pinned}, the host offered {seen}"
            )
        self.seen = seen


class SSHRemote:
    """One SSH connection to a pod; implements `worker.remote.Remote`."""

    def __init__(self, client: paramiko.SSHClient, target: SSHTarget, host_key: str | None) -> None:
        self._client = client
        self._sftp: paramiko.SFTPClient | None = None
        self.target = target
        self.host_key = host_key

    @classmethod
    def connect(cls, target: SSHTarget, key_file: Path, *, pinned_host_key: str | None) -> "SSHRemote":
        """One connection attempt; ConnectError says why it failed (never with key material)."""
        pkey = load_key(key_file)
        policy = _PinnedHostKey(pinned_host_key)
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(policy)
        try:
            client.connect(
                target.host, port=target.port, username=target.user, pkey=pkey,
                timeout=CONNECT_TIMEOUT_S, banner_timeout=BANNER_TIMEOUT_S,
                auth_timeout=AUTH_TIMEOUT_S, channel_timeout=CHANNEL_TIMEOUT_S,
                allow_agent=False, look_for_keys=False,
            )
        except HostKeyMismatch:
            client.close()
            raise
        except Exception as exc:
            client.close()
            raise ConnectError(f"cannot connect to {target}: {_why(exc)}") from None
        transport = client.get_transport()
        assert transport is not None
        transport.set_keepalive(KEEPALIVE_S)
        return cls(client, target, policy.seen or pinned_host_key)

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self._client.close()

    def run(self, command: str, *, timeout_s: float) -> CommandResult:
        transport = self._client.get_transport()
        if transport is None or not transport.is_active():
            raise RemoteError(f"SSH connection to {self.target} is closed")
        channel = transport.open_session(timeout=CHANNEL_TIMEOUT_S)
        try:
            channel.exec_command(command)
            out, err = _drain(channel, deadline=time.monotonic() + timeout_s)
            if out is None:
                raise CommandTimeout(f"command on {self.target} took longer than {timeout_s:g} s")
            code = channel.recv_exit_status()  # ready: _drain saw exit_status_ready()
        finally:
            channel.close()
        return CommandResult(code, out.decode(errors="replace"), err.decode(errors="replace"))

    def put_bytes(self, data: bytes, path: str) -> str:
        tmp = f"{path}.tmp"
        sftp = self._sftp_client()
        with sftp.open(tmp, "wb") as handle:
            handle.write(data)
        sftp.posix_rename(tmp, path)
        expected = hashlib.sha256(data).hexdigest()
        # Read back over SFTP rather than exec sha256sum: uploads are small (code, config) and
        # a command costs a shell start on the pod, which login scripts can make slow.
        with sftp.open(path, "rb") as handle:
            actual = hashlib.sha256(handle.read()).hexdigest()
        if actual != expected:
            raise RemoteError(f"upload of {posixpath.basename(path)} to {self.target} is corrupt "
                              f"(sha256 {actual or 'unknown'}, expected {expected})")
        return expected

    def get(self, path: str, local_path: str) -> int:
        return copy_to_local(lambda pod, local: self._sftp_client().get(pod, local), path, local_path,
                             str(self.target))

    def read_from(self, path: str, offset: int, limit: int) -> bytes:
        return read_slice(lambda: self._sftp_client().open(path, "rb"), offset, limit)

    def exists(self, path: str) -> bool:
        try:
            self._sftp_client().stat(path)
        except FileNotFoundError:
            return False
        return True

    def _sftp_client(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            self._sftp = self._client.open_sftp()
            channel = self._sftp.get_channel()
            assert channel is not None  # open_sftp opened it; paramiko's types leave it optional
            channel.settimeout(CHANNEL_TIMEOUT_S)
        return self._sftp


def _drain(channel: paramiko.Channel, *, deadline: float) -> tuple[bytes | None, bytes]:
    """Read stdout and stderr together until the command exits and its output ends
    (reading both as they come avoids the deadlock of a full window).

    Returns (None, b"") when the deadline passes first: recv_exit_status() has no timeout.
    """
    out, err = bytearray(), bytearray()
    while True:
        got = False
        while channel.recv_ready():
            out += channel.recv(65536)[: max(0, MAX_OUTPUT_BYTES - len(out))] or b""
            got = True
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)[: max(0, MAX_OUTPUT_BYTES - len(err))] or b""
            got = True
        # sshd may send the exit status before the last of the output: wait for EOF as well.
        ended = channel.exit_status_ready() and channel.eof_received
        if ended and not channel.recv_ready() and not channel.recv_stderr_ready():
            return bytes(out), bytes(err)
        if time.monotonic() > deadline:
            return None, b""
        if not got:
            select.select([channel], [], [], 0.05)


def _why(exc: BaseException) -> str:
    """A short, secret-free cause of a failed connect."""
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        refused = all(isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == 111
                      for e in exc.errors.values())
        return "connection refused" if refused else "no route to the host"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
        return "no SSH banner (is sshd up?)"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__

