"""Worker fixtures: a fresh database (SQLite, or PostgreSQL with param "postgres"), settings
in a tmp data dir, a director whose trainer bundle is the stand-in in fake_trainer/, and a
local RunPod API stand-in whose pods are the test's sshd."""

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from server.config import Settings
from server.db import make_engine
from tests.databases import postgres_database
from tests.sshd import Sshd
from tests.worker.harness import FAKE_TRAINER
from tests.worker.runpod_standin import ACCOUNT_KEY, RunPodStandIn
from worker.bundle import TrainerBundle
from worker.director import RunDirector


@pytest.fixture
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh database with every table: a SQLite file, or with param "postgres" a new
    PostgreSQL database dropped after the test."""
    if getattr(request, "param", "sqlite") == "postgres":
        with postgres_database("caddie_worker") as url:
            yield from _tables(make_engine(url))
        return
    yield from _tables(make_engine(f"sqlite:///{tmp_path / 'caddie.db'}"))


def _tables(engine: Engine) -> Iterator[Engine]:
    SQLModel.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", poll_interval_s=0.05, lease_s=60, run_grace_s=30,
                    ssh_connect_attempts=3)


@pytest.fixture
def ssh_settings(settings: Settings, sshd: Sshd, tmp_path: Path) -> Settings:
    return settings.model_copy(update={
        "ssh_hosts": sshd.target, "ssh_key_file": sshd.key_path,
        "ssh_workdir": str(tmp_path / "ssh-pod"), "remote_python": sys.executable,
    })


class Finalized(list[int]):
    """Stands in for server.experiments.finalize_experiment: records the ids it was given."""

    def __call__(self, session: Session, experiment_id: int) -> bool:
        self.append(experiment_id)
        return True


@pytest.fixture
def finalized() -> Finalized:
    return Finalized()


@pytest.fixture
def director(settings: Settings, engine: Engine, finalized: Finalized) -> RunDirector:
    return RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)


@pytest.fixture
def runpod(sshd: Sshd) -> Iterator[RunPodStandIn]:
    """A local RunPod API whose pods are the test's sshd."""
    standin = RunPodStandIn(sshd, ACCOUNT_KEY)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


FETCH_ALLOWANCE_S = 600.0  # RunPod's deadline = the pod's + this


@pytest.fixture
def runpod_settings(settings: Settings, runpod: RunPodStandIn, tmp_path: Path) -> Iterator[Settings]:
    workdir = tmp_path / "runpod-pod"
    yield settings.model_copy(update={
        "runpod_api_url": f"{runpod.url}/v2", "runpod_graphql_url": f"{runpod.url}/graphql",
        "runpod_api_key": SecretStr(ACCOUNT_KEY), "runpod_workdir": str(workdir),
        "runpod_python": sys.executable, "runpod_ssh_user": runpod.sshd.user,
        "runpod_request_timeout_s": 0.5, "runpod_backoff_s": 0.0,
        "runpod_create_attempts": 3, "runpod_ssh_attempts": 3, "pod_fetch_allowance_s": FETCH_ALLOWANCE_S,
    })
    end_processes_in(workdir)


def end_processes_in(folder: Path) -> None:
    """Kill processes this test started on the "pod" (a watchdog sleeping towards its
    deadline), found by their working directory under `folder`, one pid at a time."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(proc / "cwd"))
        except OSError:
            continue
        if cwd == folder or folder in cwd.parents:
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def runpod_director(runpod_settings: Settings, engine: Engine, finalized: Finalized) -> RunDirector:
    return RunDirector(runpod_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)
