"""A real OpenSSH sshd on a loopback port with throwaway keys: the "pod" of SSH tests.

Starts `/usr/sbin/sshd -D -e -f <config>` (Debian openssh-server) as the current user,
with host and client ed25519 keys made for the test. `stop()`, `start()` and `restart()`
let fault tests take it away and bring it back on the same port; `new_host_key()` makes
it present a different host key from its next start.
"""

import getpass
import socket
import subprocess
import time
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")
START_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keygen(path: Path) -> None:
    path.unlink(missing_ok=True)
    Path(f"{path}.pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "caddie-test", "-f", str(path)],
                   check=True, capture_output=True)


class Sshd:
    def __init__(self, folder: Path) -> None:
        if not SSHD.exists():
            raise RuntimeError(f"{SSHD} is missing: install the Debian package openssh-server")
        self.folder = folder
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key_path = folder / "host_ed25519"
        self.key_path = folder / "client_ed25519"
        self.log_path = folder / "sshd.log"
        self.process: subprocess.Popen[bytes] | None = None
        _keygen(self.host_key_path)
        _keygen(self.key_path)
        (folder / "authorized_keys").write_text(Path(f"{self.key_path}.pub").read_text())
        self.config_path = folder / "sshd_config"
        self.config_path.write_text(self._config())

    @property
    def target(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    def host_key_fingerprint(self) -> str:
        """As worker.ssh.fingerprint writes it: "<type> SHA256:<base64>"."""
        out = subprocess.run(["ssh-keygen", "-l", "-f", f"{self.host_key_path}.pub"],
                             check=True, capture_output=True, text=True).stdout.split()
        return f"ssh-ed25519 {out[1]}"

    def start(self) -> None:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config_path)],
                                        stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"sshd exited with {self.process.returncode}: {self.log_path.read_text()}")
            if self._greets():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"sshd did not answer on port {self.port}: {self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def new_host_key(self) -> None:
        """Present a different host key from the next (re)start on."""
        _keygen(self.host_key_path)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    def _config(self) -> str:
        f = self.folder
        return "\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key_path}",
            f"PidFile {f / 'sshd.pid'}",
            f"AuthorizedKeysFile {f / 'authorized_keys'}",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "Subsystem sftp internal-sftp",
            "MaxStartups 100",
            "LogLevel VERBOSE",
            "",
        ])
