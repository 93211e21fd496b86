"""The whole path with real processes: REST submit → Celery worker → provider → trainer on CPU
→ log chunks in the database → verification → leaderboard.

Twice: on PostgreSQL + Redis with the `ssh` provider to a real sshd, and on the embedded
default (SQLite + Celery's filesystem transport, no server) with the `local` provider. The
stack is the one `caddie up` starts (API server, worker, one beat), each a real process.
"""

from pathlib import Path
from typing import Any

import pytest

from cli.stack import Stack
from tests.e2e.stacks import (
    api,
    embedded,
    member_token,
    postgres_and_redis,
    ssh_provider,
    start_stack,
    stored_log,
    wait_finished,
)
from tests.sshd import Sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
E2E_REDIS_DB = 13


def submit_and_wait(stack: Stack, dataset: dict[str, str], provider: str) -> dict[str, Any]:
    spec = {"name": f"e2e-{provider}", "author": "e2e", "preset": "tiny", "provider": provider,
            "seeds": [11], "config": {**dataset, "iterations": 12, "train_log_every": 1}}
    token = member_token(stack.settings.resolved_database_url())
    experiment = api(f"{stack.url}/api/experiments", spec, token)
    assert experiment["owner"] == "e2e-user"
    return wait_finished(stack, experiment["id"])


def check_verified_and_ranked(stack: Stack, experiment: dict[str, Any], pod_log: Path) -> None:
    (run,) = experiment["runs"]
    assert run["status"] == "succeeded", run
    assert 0 < run["val_bpb"] < 10 and run["steps"] == 12
    artifact = Path(stack.settings.runs_dir()) / str(run["id"]) / "final_model.int8.ptz"
    assert run["bytes_total"] == run["code_bytes"] + artifact.stat().st_size
    log = api(f"{stack.url}/api/runs/{run['id']}/log?offset=0&limit=4194304")
    assert log["text"].encode() == pod_log.read_bytes()

    # The tiny preset trains without the 600 s cap, so it ranks on the non-record board.
    board = api(f"{stack.url}/api/leaderboard?author=e2e&track={experiment['track']}")
    (entry,) = board["data"]
    assert entry["experiment_id"] == experiment["id"] and entry["n"] == 1
    assert entry["mean_val_bpb"] == pytest.approx(run["val_bpb"])
    (seed,) = entry["seeds"]
    assert seed["eligible"] is False
    assert any("hardware" in r and "8×H100" in r for r in seed["reasons"])
    assert any("val_tokens" in r for r in seed["reasons"])
    assert entry["eligible"] is False and entry["reasons"]


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.sshd
def test_postgres_redis_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd,
                            dataset: dict[str, str]) -> None:
    with postgres_and_redis("caddie_e2e", E2E_REDIS_DB) as services:
        database_url = services["CADDIE_DATABASE_URL"]
        stack = start_stack(monkeypatch, tmp_path, {**services, **ssh_provider(sshd, tmp_path / "pod")})
        try:
            experiment = submit_and_wait(stack, dataset, "ssh")
        finally:
            stack.stop()
        run_id = experiment["runs"][0]["id"]
        pod_log = tmp_path / "pod" / f"run-{run_id}" / "train.log"
        assert stored_log(database_url, run_id) == pod_log.read_bytes()
        stack.start()  # the API again, to read what the stopped stack left behind
        try:
            stack.wait_healthy()
            check_verified_and_ranked(stack, experiment, pod_log)
        finally:
            stack.stop()


def test_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                          dataset: dict[str, str]) -> None:
    embedded(monkeypatch)
    stack = start_stack(monkeypatch, tmp_path, {"CADDIE_LOCAL_PROVIDER": "members"})
    try:
        assert stack.settings.resolved_database_url().startswith("sqlite:///")
        assert stack.settings.broker_url() == "caddiefs://"
        experiment = submit_and_wait(stack, dataset, "local")
        run_id = experiment["runs"][0]["id"]
        pod_log = Path(stack.settings.data_dir) / "pods" / f"run-{run_id}" / "train.log"
        assert stored_log(stack.settings.resolved_database_url(), run_id) == pod_log.read_bytes()
        check_verified_and_ranked(stack, experiment, pod_log)
    finally:
        stack.stop()
