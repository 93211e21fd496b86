"""A participant's own train_gpt.py through the whole stack: REST submit with its files and env →
Celery worker → `ssh` provider (a real sshd) → torchrun → log → scored from the log and
measured by the worker; and a script that exits 1, kept with its reason and last lines."""

from pathlib import Path

import pytest

from cli.stack import Stack
from tests.e2e.stacks import (
    api,
    member_token,
    postgres_and_redis,
    ssh_scripts,
    start_stack,
    stored_log,
    wait_finished,
)
from tests.sshd import Sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.sshd]
SCRIPT = (Path(__file__).resolve().parents[1] / "worker" / "byo" / "train_gpt.py").read_text()
TIMEOUT_S = 180
BYO_REDIS_DB = 14


def submit(stack: Stack, token: str, name: str, env: dict[str, str]) -> int:
    spec = {"name": name, "author": "byo", "kind": "script", "provider": "ssh", "seeds": [5],
            "files": {"train_gpt.py": SCRIPT}, "env": env}
    experiment = api(f"{stack.url}/api/experiments", spec, token)
    assert experiment["files"][0]["nbytes"] == len(SCRIPT.encode())
    return experiment["id"]


def test_a_script_experiment_over_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd) -> None:
    with postgres_and_redis("caddie_e2e_byo", BYO_REDIS_DB) as services:
        database_url = services["CADDIE_DATABASE_URL"]
        stack = start_stack(monkeypatch, tmp_path, {**services, **ssh_scripts(sshd, tmp_path)})
        try:
            token = member_token(database_url)
            good = submit(stack, token, "byo-good", {"NUM_LAYERS": "11"})
            bad = submit(stack, token, "byo-crash", {"MODE": "crash"})
            good_experiment = wait_finished(stack, good, TIMEOUT_S)
            (run,) = good_experiment["runs"]
            (crashed,) = wait_finished(stack, bad, TIMEOUT_S)["runs"]
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
