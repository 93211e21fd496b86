"""Who holds a TCP port: asked before `caddie up` or `caddie demo` starts its API server.

Read from /proc (Linux: /proc/net/tcp{,6} for the listening socket's inode, /proc/<pid>/fd for
the process that has it open), so a fresh Debian without `ss` or `lsof` still gets an answer.
"""

import errno
import socket
from pathlib import Path

PROC = Path("/proc")
LISTEN = "0A"  # the TCP state of a listening socket in /proc/net/tcp


def port_is_free(host: str, port: int) -> bool:
    """Whether this process could listen on host:port, binding as uvicorn does (SO_REUSEADDR:
    a closed connection in TIME_WAIT does not count as busy)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port(host: str) -> int:
    """A port the system has free on host now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def holder(port: int) -> str:
    """Which process listens on the port, as `PID 123 (python3 -m http.server 8765)`; a
    process of another user (whose fds cannot be read) is named by its socket's owner uid."""
    owners: list[str] = []
    for inode, uid in _listening_inodes(port):
        pid = _pid_with_socket(inode)
        if pid is not None:
            owners.append(f"PID {pid} ({_command(pid)})")
        else:
            owners.append(f"a process of uid {uid} that this user cannot inspect")
    return ", ".join(dict.fromkeys(owners)) or "another process (not found in /proc)"


def busy_message(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use by {holder(port)}: stop it, or pick another "
            f"port with --port (e.g. --port {free_port(host)})")


def _listening_inodes(port: int) -> list[tuple[str, str]]:
    """(inode, uid) of each listening socket on the port, IPv4 and IPv6."""
    found = []
    for table in ("tcp", "tcp6"):
        try:
            lines = (PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # fields: sl, local "ADDR:PORT" (hex), remote, state, queues, tr, retrnsmt, uid, timeout, inode
            if len(fields) > 9 and fields[3] == LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                found.append((fields[9], fields[7]))
    return found


def _pid_with_socket(inode: str) -> int | None:
    target = f"socket:[{inode}]"
    for proc in PROC.iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if fd.readlink().as_posix() == target:
                    return int(proc.name)
        except OSError:  # another user's process, or one that just ended
            continue
    return None


def _command(pid: int) -> str:
    try:
        words = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(w.decode(errors="replace") for w in words if w)
    return " ".join(text.split())[:120] or "?"  # one line, even for `python -c` with a script
