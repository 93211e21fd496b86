"""The round trip: an experiment of Caddie's own (the `tiny` preset, on CPU, the `local`
provider), exported as a records folder with `server.export`, and that folder alone reproduced
through the REST API: the re-run runs the exported train_gpt.py with the README's own commands
and is judged "reproduced" against the exported logs."""

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session

from server import export
from server.config import get_settings
from server.db import make_engine
from tests.e2e.test_reproduce import admin_token, wait_verdict
from tests.e2e.test_submit_to_leaderboard import (  # noqa: F401 (dataset: a fixture)
    RUN_TIMEOUT_S,
    api,
    dataset,
    member_token,
    start_stack,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
SEEDS = [1, 2, 3]
# Six CPU steps of the tiny model leave ~0.015 nats between seeds, so the record margin
# (0.005) cannot be settled by a few seeds; 0.1 nats can, and still fails a re-run that is
# off by the ~0.15 nats of a different schedule (MAX_WALLCLOCK_SECONDS 600 instead of 0).
TOLERANCE_NATS = 0.1


def pod_data(root: Path, dataset: dict[str, str]) -> Path:  # noqa: F811
    """The pod's data folder at the challenge's paths, holding the small sp512 set."""
    (root / "datasets").mkdir(parents=True)
    (root / "tokenizers").mkdir()
    (root / "datasets" / "fineweb10B_sp512").symlink_to(dataset["data_path"])
    (root / "tokenizers" / "fineweb_512_bpe.model").symlink_to(dataset["tokenizer_path"])
    return root


def run_tiny(url: str, token: str, dataset: dict[str, str]) -> dict[str, Any]:  # noqa: F811
    spec = {"name": "round trip", "author": "e2e", "preset": "tiny", "provider": "local", "seeds": SEEDS,
            "config": {**dataset, "iterations": 6, "train_log_every": 1}}
    experiment = api(f"{url}/api/experiments", spec, token)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        experiment = api(f"{url}/api/experiments/{experiment['id']}")
        if experiment["status"] in {"finished", "cancelled"}:
            return experiment
        time.sleep(0.5)
    raise AssertionError(f"experiment not finished in {RUN_TIMEOUT_S} s: {experiment}")


def test_an_export_reproduces_from_its_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                              dataset: dict[str, str]) -> None:  # noqa: F811
    monkeypatch.delenv("CADDIE_DATABASE_URL", raising=False)
    monkeypatch.delenv("CADDIE_REDIS_URL", raising=False)
    stack = start_stack(monkeypatch, tmp_path, {
        "CADDIE_LOCAL_PROVIDER": "members", "CADDIE_POD_TRAIN_SHARDS": "1",
        # The exported script runs as the worker's own user: pytest's tmp_path (0700) is closed
        # to the unprivileged account, and isolation is tests/worker/test_isolation.py's subject.
        "CADDIE_LOCAL_RUN_USER": "", "CADDIE_LOCAL_SCRIPTS_UNISOLATED": "true",
        "CADDIE_LOCAL_DATA_DIR": str(pod_data(tmp_path / "pod-data", dataset))})
    database_url = stack.settings.resolved_database_url()
    folder = tmp_path / "export" / "2026-12-07_RoundTrip"
    try:
        original = run_tiny(stack.url, member_token(database_url), dataset)
        assert [run["status"] for run in original["runs"]] == ["succeeded"] * len(SEEDS), original["runs"]
        get_settings.cache_clear()  # the stack's data dir, where the worker kept the code
        engine = make_engine(database_url)
        with Session(engine) as session:
            export.export_to(session, original["id"], folder, github_id="ada")
        engine.dispose()
        token = admin_token(database_url)
        body = {"source": {"path": str(folder)}, "overrides": {"provider": "local", "tolerance_nats": TOLERANCE_NATS}}
        plan = api(f"{stack.url}/api/reproduce/preview", body, token)
        created = api(f"{stack.url}/api/reproduce", body, token)
        found = wait_verdict(stack, created["experiment"]["id"])
        rerun = api(f"{stack.url}/api/experiments/{created['experiment']['id']}")
    finally:
        stack.stop()
        get_settings.cache_clear()

    assert plan["seeds"] == SEEDS and plan["env_from"] == "readme", plan
    script = (folder / "train_gpt.py").read_bytes()
    (listed,) = [f for f in plan["files"] if f["name"] == "train_gpt.py"]
    assert listed["sha256"] == hashlib.sha256(script).hexdigest()  # the exported bytes, as they are
    assert found["outcome"] == "reproduced", found
    assert [row["seed"] for row in found["seeds"]] == SEEDS
    by_seed = {run["seed"]: run for run in original["runs"]}
    for row in found["seeds"]:  # the same seed, settings and data give the same score
        assert row["rerun"]["val_bpb"] == pytest.approx(by_seed[row["seed"]]["val_bpb"], abs=1e-6)
    assert {run["steps"] for run in rerun["runs"]} == {6}
    # The code counted is the exported file's bytes (the original counted its compressed form).
    assert {run["code_bytes"] for run in rerun["runs"]} == {len(script)}
    assert "SEED=1 MAX_WALLCLOCK_SECONDS=0 torchrun" in (folder / "README.md").read_text()
