"""worker.ssh against a real OpenSSH sshd on a loopback port."""

import hashlib
import re
import time
from pathlib import Path

import pytest

from tests.sshd import Sshd, free_port
from worker.errors import CommandTimeout, ConnectError, HostKeyMismatch, RemoteError
from worker.ssh import SSHRemote, SSHTarget

pytestmark = pytest.mark.sshd


def connect(sshd: Sshd, *, pinned: str | None = None, key: Path | None = None) -> SSHRemote:
    return SSHRemote.connect(SSHTarget.parse(sshd.target), key or sshd.key_path, pinned_host_key=pinned)


def test_run_returns_exit_code_and_both_streams(sshd):
    remote = connect(sshd)
    try:
        result = remote.run("echo out; echo err >&2; exit 7", timeout_s=10)
        assert (result.exit_code, result.stdout, result.stderr) == (7, "out\n", "err\n")
        # More than the channel window on both streams at once must not deadlock.
        big = remote.run("head -c 3000000 /dev/zero | tr '\\0' a; head -c 3000000 /dev/zero | tr '\\0' b >&2",
                         timeout_s=30)
        assert big.ok and len(big.stdout) == 3_000_000 and len(big.stderr) == 3_000_000
    finally:
        remote.close()


def test_run_gives_up_at_its_deadline(sshd):
    remote = connect(sshd)
    try:
        started = time.monotonic()
        with pytest.raises(CommandTimeout, match="longer than 0.5 s"):
            remote.run("sleep 20", timeout_s=0.5)
        assert time.monotonic() - started < 5
        assert remote.run("echo still usable", timeout_s=10).stdout == "still usable\n"
    finally:
        remote.close()


def test_put_get_and_read_from_an_offset(sshd, tmp_path):
    remote = connect(sshd)
    data = bytes(range(256)) * 1000
    path = str(tmp_path / "pod" / "blob.bin")
    (tmp_path / "pod").mkdir()
    try:
        assert remote.put_bytes(data, path) == hashlib.sha256(data).hexdigest()
        assert Path(path).read_bytes() == data and not Path(f"{path}.tmp").exists()
        assert remote.read_from(path, 1000, 10) == data[1000:1010]
        assert remote.read_from(path, len(data) - 3, 100) == data[-3:]
        assert remote.read_from(str(tmp_path / "pod" / "missing"), 0, 10) == b""
        assert remote.exists(path) and not remote.exists(path + ".nope")
        assert remote.get(path, str(tmp_path / "copy.bin")) == len(data)
        assert (tmp_path / "copy.bin").read_bytes() == data
        with pytest.raises(RemoteError, match="does not exist"):
            remote.get(path + ".nope", str(tmp_path / "x"))
    finally:
        remote.close()


def test_put_refuses_an_upload_whose_checksum_differs(sshd, tmp_path, monkeypatch):
    remote = connect(sshd)
    sftp = remote._sftp_client()
    real_rename = sftp.posix_rename

    def rename_then_corrupt(src: str, dst: str) -> None:  # a disk or transfer fault on the pod
        real_rename(src, dst)
        Path(dst).write_bytes(b"other bytes")

    monkeypatch.setattr(sftp, "posix_rename", rename_then_corrupt)
    try:
        with pytest.raises(RemoteError, match="upload of f to .* is corrupt"):
            remote.put_bytes(b"payload", str(tmp_path / "f"))
    finally:
        remote.close()


def test_host_key_is_pinned_on_first_use_and_a_changed_key_is_refused(sshd):
    first = connect(sshd)
    pinned = first.host_key
    first.close()
    assert pinned == sshd.host_key_fingerprint()
    connect(sshd, pinned=pinned).close()
    sshd.new_host_key()
    sshd.restart()
    with pytest.raises(HostKeyMismatch, match=re.escape(
            f"host key of [127.0.0.1]:{sshd.port} changed: this run pinned {pinned}, the host offered")) as refused:
        connect(sshd, pinned=pinned)
    assert not refused.value.retryable


def test_connection_refused_is_named(tmp_path, sshd):
    target = SSHTarget("root", "127.0.0.1", free_port())
    with pytest.raises(ConnectError, match=rf"cannot connect to root@127.0.0.1:{target.port}: connection refused"):
        SSHRemote.connect(target, sshd.key_path, pinned_host_key=None)


def test_a_key_the_host_does_not_know_fails_authentication(sshd, tmp_path):
    other = Sshd(tmp_path)  # only used for its freshly made client key
    with pytest.raises(ConnectError, match="authentication failed") as failed:
        connect(sshd, key=other.key_path)
    assert "PRIVATE" not in str(failed.value)


def test_a_missing_or_unreadable_key_file_is_named(sshd, tmp_path):
    with pytest.raises(ConnectError, match=f"SSH key file {tmp_path}/nope does not exist"):
        connect(sshd, key=tmp_path / "nope")
    (tmp_path / "garbage").write_text("not a key")
    with pytest.raises(ConnectError, match=f"SSH key file {tmp_path}/garbage cannot be read"):
        connect(sshd, key=tmp_path / "garbage")


@pytest.mark.parametrize("text", ["host:22", "root@", "root@host:port", "root@host:70000", ""])
def test_a_malformed_target_names_the_setting(text):
    with pytest.raises(ValueError, match="CADDIE_SSH_HOSTS entry .* is not of the form user@host:port"):
        SSHTarget.parse(text, name="CADDIE_SSH_HOSTS entry")


def test_target_port_defaults_to_22():
    assert SSHTarget.parse("ubuntu@gpu-1") == SSHTarget("ubuntu", "gpu-1", 22)
