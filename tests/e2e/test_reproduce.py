"""Re-runs end to end: records folders whose train_gpt.py runs on a CPU, reproduced through the
REST API by a real worker on the `local` provider (an imported record and two folder paths)
and on the `ssh` provider (a real sshd), judged from what the worker measured, with the
verdict on the re-run's page and on the record's page."""

import io
import json
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from server.db import make_engine
from server.records import import_records
from tests.e2e.stacks import (
    admin_token,
    api,
    embedded,
    local_scripts,
    official_data,
    postgres_and_redis,
    ssh_scripts,
    start_stack,
    wait_verdict,
)
from tests.fixture_files import FIXTURES
from tests.sshd import Sshd

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RECORDS = FIXTURES / "reproduce" / "records"
REPRODUCE_REDIS_DB = 11


def import_record(database_url: str, folder: Path) -> int:
    engine = make_engine(database_url)
    with Session(engine) as session:
        (result,) = import_records(session, folder)
    engine.dispose()
    assert result.experiment_id is not None
    return result.experiment_id


def page(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.read().decode()


def from_path(url: str, token: str, name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    body = {"source": {"path": str(RECORDS / name)}, "overrides": overrides}
    preview = api(f"{url}/api/reproduce/preview", body, token)
    assert preview["seeds"] and preview["estimate"]["runs"] == len(preview["seeds"])
    return api(f"{url}/api/reproduce", body, token)


def test_reproduce_on_local(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    embedded(monkeypatch)
    stack = start_stack(monkeypatch, tmp_path, local_scripts(official_data(tmp_path / "pod-data")))
    database_url = stack.settings.resolved_database_url()
    try:
        token = admin_token(database_url)
        record_id = import_record(database_url, RECORDS / "good")
        plan = api(f"{stack.url}/api/experiments/{record_id}/reproduce/preview", {"provider": "local"}, token)
        assert plan["env"] == {"NCCL_NET": "Socket", "NUM_LAYERS": "11", "MATRIX_LR": "0.025"}
        good = api(f"{stack.url}/api/experiments/{record_id}/reproduce", {"provider": "local"}, token)
        claims = from_path(stack.url, token, "overclaim", {"provider": "local", "seeds": [1, 2]})
        padded = from_path(stack.url, token, "overbytes", {"provider": "local", "seeds": [1, 2]})
        good_verdict = wait_verdict(stack, good["experiment"]["id"])
        claims_verdict = wait_verdict(stack, claims["experiment"]["id"])
        padded_verdict = wait_verdict(stack, padded["experiment"]["id"])
        rerun_page = page(f"{stack.url}/experiments/{good['experiment']['id']}")
        record_page = page(f"{stack.url}/experiments/{record_id}")
        on_record = api(f"{stack.url}/api/experiments/{record_id}/verdict")
        runs = api(f"{stack.url}/api/experiments/{good['experiment']['id']}")["runs"]
    finally:
        stack.stop()

    assert good["experiment"]["reproduces_id"] == record_id
    assert good["experiment"]["seed_env"] == {"1": {}, "2": {}, "3": {"ITERATIONS": "40"}}
    assert good_verdict["outcome"] == "reproduced", good_verdict
    assert [row["seed"] for row in good_verdict["seeds"]] == [1, 2, 3]
    for row in good_verdict["seeds"]:
        assert abs(row["diff"]["val_bpb"]) < 1e-8  # the same script and env give the same score
    assert {run["seed"]: run["steps"] for run in runs} == {1: 30, 2: 30, 3: 40}  # per-seed env reached it
    assert on_record["reruns"][0]["outcome"] == "reproduced"
    assert "Re-run verdict" in rerun_page and "reproduced" in rerun_page
    assert f"/experiments/{good['experiment']['id']}" in record_page and "verdict-outcome\">reproduced" in record_page

    assert claims_verdict["outcome"] == "not reproduced" and claims_verdict["failed"] == ["score"]
    assert "0.0120 bpb worse than claimed" in claims_verdict["reasons"][0]
    assert claims_verdict["test"]["p_worse"] < 0.01

    assert padded_verdict["outcome"] == "not reproduced" and padded_verdict["failed"] == ["bytes"]
    assert "as measured, over 16,000,000" in padded_verdict["reasons"][0]
    assert all(row["rerun"]["bytes_total"] > 16_000_000 > row["claimed"]["bytes_total"]
               for row in padded_verdict["seeds"])


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.sshd
def test_reproduce_over_ssh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd) -> None:
    with postgres_and_redis("caddie_e2e_reproduce", REPRODUCE_REDIS_DB) as services:
        database_url = services["CADDIE_DATABASE_URL"]
        stack = start_stack(monkeypatch, tmp_path, {**services, **ssh_scripts(sshd, tmp_path)})
        try:
            token = admin_token(database_url)
            created = from_path(stack.url, token, "good", {"provider": "ssh", "seeds": [1, 2]})
            found = wait_verdict(stack, created["experiment"]["id"])
            rerun_page = page(f"{stack.url}/experiments/{created['experiment']['id']}")
            evidence = urllib.request.urlopen(
                f"{stack.url}/api/experiments/{created['experiment']['id']}/evidence", timeout=30).read()
        finally:
            stack.stop()
    assert found["outcome"] == "reproduced", found
    pod = tmp_path / "pod" / f"run-{found['seeds'][0]['run_id']}" / "code"
    for name in ("train_gpt.py", "train_gpt_decode.py"):
        assert (pod / name).read_bytes() == (RECORDS / "good" / name).read_bytes()
    assert "verdict-outcome\">reproduced" in rerun_page
    with zipfile.ZipFile(io.BytesIO(evidence)) as archive:
        names = {Path(n).name for n in archive.namelist()}
        readme = archive.read(f"rerun-{created['experiment']['id']}/README.md").decode()
        verdict = json.loads(archive.read(f"rerun-{created['experiment']['id']}/verdict.json"))
    assert {"README.md", "verdict.json", "rerun_seed1.log", "rerun_seed2.log"} <= names
    assert verdict["outcome"] == "reproduced" and "NUM_LAYERS=11" in readme and "sha256" in readme
