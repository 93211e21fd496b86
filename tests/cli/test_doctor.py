"""`caddie doctor` says what is wrong, one line per check, and never prints a secret."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sshd import free_port

REPO = Path(__file__).resolve().parents[2]


def doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CADDIE_")}
    return subprocess.run([sys.executable, "-m", "cli.main", "doctor"], cwd=REPO, env={**base, **env},
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture
def migrated(tmp_path: Path) -> dict[str, str]:
    env = {"CADDIE_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run([sys.executable, "-m", "cli.main", "migrate"], cwd=REPO,
                          env={**os.environ, **env}, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return env


def line(out: str, check: str) -> str:
    (found,) = [text for text in out.splitlines() if text[5:].startswith(f"{check}:")]
    return found


def test_a_healthy_setup_passes_every_check(migrated: dict[str, str], key_file: Path) -> None:
    done = doctor({**migrated, "CADDIE_SSH_HOSTS": "root@127.0.0.1:22", "CADDIE_SSH_KEY_FILE": str(key_file)})
    assert done.returncode == 0, done.stdout
    assert line(done.stdout, "database").startswith("ok   database: sqlite at migration")
    assert line(done.stdout, "ssh provider") == f"ok   ssh provider: 1 host(s), key {key_file} loads"
    assert key_file.read_text().splitlines()[1] not in done.stdout  # the key's contents


def test_each_problem_is_named(migrated: dict[str, str], key_file: Path, tmp_path: Path) -> None:
    key_file.chmod(0o644)
    done = doctor({**migrated, "CADDIE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
                   "CADDIE_SSH_HOSTS": "root@127.0.0.1:22", "CADDIE_SSH_KEY_FILE": str(key_file)})
    assert done.returncode == 1
    assert line(done.stdout, "broker").startswith("FAIL broker: Redis at CADDIE_REDIS_URL does not answer")
    assert "chmod 600" in line(done.stdout, "ssh provider")
    assert line(done.stdout, "database").startswith("ok")


def test_an_unmigrated_database_and_a_bad_host(tmp_path: Path) -> None:
    done = doctor({"CADDIE_DATA_DIR": str(tmp_path / "empty"), "CADDIE_SSH_HOSTS": "gpu-box"})
    assert done.returncode == 1
    assert "caddie migrate" in line(done.stdout, "database")
    assert "'gpu-box' is not of the form user@host:port" in line(done.stdout, "ssh provider")


def test_a_bad_setting_names_the_variable(tmp_path: Path) -> None:
    done = doctor({"CADDIE_DATA_DIR": str(tmp_path), "CADDIE_POLL_INTERVAL_S": "-1"})
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL settings:") and "poll_interval_s" in done.stdout
