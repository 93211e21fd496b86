"""A participant's own train_gpt.py through the whole stack: REST submit with its files and env →
Celery worker → `ssh` provider (a real sshd) → torchrun → log → scored from the log and
measured by the worker; and a script that exits 1, kept with its reason and last lines."""

import struct
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.databases import postgres_database, redis_url
from tests.e2e.test_submit_to_leaderboard import (
    api,
    member_token,
    start_stack,
    stored_log,
)
from tests.sshd import Sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.sshd]
SCRIPT = (Path(__file__).resolve().parents[1] / "worker" / "byo" / "train_gpt.py").read_text()
TIMEOUT_S = 180
# A database of its own on the shared Redis, flushed before use: the other e2e modules
# (databases 12 and 13) may run at the same time under pytest -n.
BYO_REDIS_DB = 14


def official_data(root: Path) -> Path:
    """A pod data folder holding one tiny sp1024 validation and training shard each (the
    shard format: 256 int32 header words — magic, version, token count — then uint16
    tokens), so the pod's data check passes without a download."""
    shards = root / "datasets" / "fineweb10B_sp1024"
    shards.mkdir(parents=True)
    for name in ("fineweb_val_000000.bin", "fineweb_train_000001.bin"):
        tokens = list(range(1, 65))
        header = struct.pack("<256i", 20240520, 1, len(tokens), *([0] * 253))
        (shards / name).write_bytes(header + struct.pack(f"<{len(tokens)}H", *tokens))
    return root


def submit(url: str, token: str, name: str, env: dict[str, str]) -> int:
    spec = {"name": name, "author": "byo", "kind": "script", "provider": "ssh", "seeds": [5],
            "files": {"train_gpt.py": SCRIPT}, "env": env}
    experiment = api(f"{url}/api/experiments", spec, token)
    assert experiment["files"][0]["nbytes"] == len(SCRIPT.encode())
    return experiment["id"]


def wait_finished(url: str, experiment_id: int) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        experiment = api(f"{url}/api/experiments/{experiment_id}")
        if experiment["status"] in {"finished", "cancelled"}:
            return experiment
        time.sleep(0.5)
    raise AssertionError(f"experiment {experiment_id} not finished in {TIMEOUT_S} s")


def test_a_script_experiment_over_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd) -> None:
    broker = redis_url(BYO_REDIS_DB)
    redis.Redis.from_url(broker).flushdb()
    with postgres_database("caddie_e2e_byo") as database_url:
        stack = start_stack(monkeypatch, tmp_path, {
            "CADDIE_DATABASE_URL": database_url, "CADDIE_REDIS_URL": broker,
            "CADDIE_SSH_HOSTS": sshd.target, "CADDIE_SSH_KEY_FILE": str(sshd.key_path),
            "CADDIE_SSH_WORKDIR": str(tmp_path / "pod"), "CADDIE_REMOTE_PYTHON": sys.executable,
            "CADDIE_SSH_DATA_DIR": str(official_data(tmp_path / "pod-data")),
            "CADDIE_POD_TRAIN_SHARDS": "1",
        })
        try:
            token = member_token(database_url)
            good = submit(stack.url, token, "byo-good", {"NUM_LAYERS": "11"})
            bad = submit(stack.url, token, "byo-crash", {"MODE": "crash"})
            good_experiment = wait_finished(stack.url, good)
            (run,) = good_experiment["runs"]
            (crashed,) = wait_finished(stack.url, bad)["runs"]
            crashed = api(f"{stack.url}/api/runs/{crashed['id']}")
        finally:
            stack.stop()

        assert run["status"] == "succeeded", (run["reason"], run.get("last_log_lines"))
        pod_dir = tmp_path / "pod" / f"run-{run['id']}"
        assert stored_log(database_url, run["id"]) == (pod_dir / "train.log").read_bytes()
        assert (run["val_loss"], run["val_bpb"], run["steps"]) == (2.51234567, 1.480005, 20)
        assert run["code_bytes"] == (pod_dir / "code" / "train_gpt.py").stat().st_size == len(SCRIPT.encode())
        artifact = Path(stack.settings.runs_dir()) / str(run["id"]) / "final_model.int8.ptz"
        assert artifact.read_bytes() == (pod_dir / "code" / "final_model.int8.ptz").read_bytes()
        assert run["bytes_total"] == run["code_bytes"] + artifact.stat().st_size
        assert good_experiment["n_succeeded"] == 1 and good_experiment["mean_val_bpb"] == run["val_bpb"]

        assert crashed["status"] == "failed"
        assert crashed["reason"] == "trainer exited with code 1"
        assert "RuntimeError: the loss became nan" in crashed["last_log_lines"]
