"""`caddie doctor` says what is wrong, one line per check, and never prints a secret."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.sshd import free_port
from tests.worker.runpod_standin import RunPodStandIn

RUNPOD_KEY = "rpa_doctor_test_key_0123456789"

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


@pytest.fixture
def runpod_api():
    """The RunPod stand-in (its pods would be an sshd; doctor never makes one)."""
    standin = RunPodStandIn(SimpleNamespace(), RUNPOD_KEY)  # type: ignore[arg-type]
    standin.start()
    yield standin
    standin.stop()


def runpod_env(standin: RunPodStandIn, **more: str) -> dict[str, str]:
    return {"CADDIE_RUNPOD_API_KEY": RUNPOD_KEY, "CADDIE_RUNPOD_API_URL": f"{standin.url}/v2",
            "CADDIE_RUNPOD_GRAPHQL_URL": f"{standin.url}/graphql", **more}


def test_runpod_lines_say_key_balance_limit_stock_and_image_without_spending(migrated, runpod_api) -> None:
    done = doctor({**migrated, **runpod_env(runpod_api, CADDIE_RUNPOD_DATA_CENTERS="EU-RO-1,US-KS-2")})
    assert done.returncode == 0, done.stdout
    assert line(done.stdout, "runpod key") == ("ok   runpod key: RunPod accepts the key from "
                                               "CADDIE_RUNPOD_API_KEY (read-only query `myself`)")
    assert line(done.stdout, "runpod balance").startswith("ok   runpod balance: $256.19, spending $0.00/hour now; "
                                                          "one run's pod costs at most $19.73")
    assert line(done.stdout, "runpod spend limit") == ("ok   runpod spend limit: $80.00/hour holds 3 pod(s) at "
                                                       "$21.52/hour; CADDIE_MAX_PODS is 3")
    assert line(done.stdout, "runpod gpu") == ("ok   runpod gpu: 8 x NVIDIA H100 80GB HBM3 on SECURE cloud: "
                                               "EU-RO-1: High; US-KS-2: Low")
    assert line(done.stdout, "runpod image") == ("ok   runpod image: runpod/pytorch:2.8.0-py3.11-cuda12.8.1-"
                                                 "cudnn-devel-ubuntu22.04: torch 2.8.0, CUDA 12.8.1, Python 3.11")
    assert RUNPOD_KEY not in done.stdout + done.stderr
    assert runpod_api.deploys() == [] and runpod_api.count("POST", "/v2/pods") == 0  # nothing rented
    assert all(r.method in ("GET", "POST") and (r.path == "/graphql" or r.method == "GET")
               for r in runpod_api.requests)


def test_each_runpod_problem_is_its_own_line(migrated, runpod_api) -> None:
    runpod_api.balance, runpod_api.spend_limit = 5.0, 15.0
    runpod_api.stock = {"EU-RO-1": "High"}
    done = doctor({**migrated, **runpod_env(runpod_api, CADDIE_RUNPOD_DATA_CENTERS="US-TX-3",
                                            CADDIE_RUNPOD_IMAGE="runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04")})
    assert done.returncode == 1
    assert line(done.stdout, "runpod key").startswith("ok")
    assert "below one run's pod at most ($19.73" in line(done.stdout, "runpod balance")
    assert line(done.stdout, "runpod spend limit").startswith("FAIL runpod spend limit: $15.00/hour is below one pod")
    assert line(done.stdout, "runpod gpu") == ("FAIL runpod gpu: 8 x NVIDIA H100 80GB HBM3 on SECURE cloud: none "
                                               "free now (US-TX-3: none free; CADDIE_RUNPOD_DATA_CENTERS)")
    assert "torch 2.4.0, CUDA 12.4.1" in line(done.stdout, "runpod image")
    assert "the trainer needs torch >= 2.5" in line(done.stdout, "runpod image")


def test_a_refused_runpod_key_is_said_without_the_key(migrated, runpod_api) -> None:
    done = doctor({**migrated, **runpod_env(runpod_api, CADDIE_RUNPOD_API_KEY="rpa_wrong_key_123",
                                            CADDIE_RUNPOD_GPU_TYPE="NVIDIA H100 80GB HBM3")})
    assert done.returncode == 1
    assert line(done.stdout, "runpod key").startswith("FAIL runpod key: RunPod refused the API key")
    assert line(done.stdout, "runpod balance").startswith("FAIL runpod balance: not asked: RunPod refused")
    assert sum(r.path == "/graphql" and b"myself" in r.body for r in runpod_api.requests) == 1
    assert "rpa_wrong_key_123" not in done.stdout + done.stderr


def test_without_a_runpod_key_one_line_says_the_provider_is_off(migrated) -> None:
    done = doctor(migrated)
    assert line(done.stdout, "runpod").startswith("ok   runpod: no API key (CADDIE_RUNPOD_API_KEY")
