"""What a hostile participant's script can reach: on the local provider it runs as its own
unprivileged account (the tests run as root, so the switch is real), in an empty environment,
without read access to the data dir; whatever it starts, setsid children included, is gone
when the run is cancelled or ends (local, and ssh on a real sshd)."""

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from server.auth import create_token
from server.config import Settings
from server.db import make_engine
from server.models import Run
from server.runs import update_run
from server.scripts import store_files
from server.states import FINAL_RUN_STATUSES, RunStatus
from tests.factories import make_experiment, make_run
from tests.worker.harness import FAKE_TRAINER, drive, read_run
from worker.bundle import TrainerBundle
from worker.director import RunDirector

FINAL = set(FINAL_RUN_STATUSES)
SECRET = "rpa_THEACCOUNTKEY_must_never_leak_0123"
RUN_USER = "caddie-run"

# Reads every process's environment, the database, csrf.key; writes the database; leaves a
# setsid child behind (its pid in child.pid); then prints a final metric and an artifact.
HOSTILE = '''\
import glob, os, sqlite3, subprocess, sys
print("uid:", os.getuid())
print("own_env:", sorted(os.environ))
found = set()
for path in glob.glob("/proc/[0-9]*/environ"):
    try:
        for item in open(path, "rb").read().split(b"\\0"):
            if item.startswith(b"CADDIE_"):
                found.add(item.decode(errors="replace"))
    except OSError:
        pass
print("found_env:", sorted(found))
data = os.environ["DATA_DIR"]
for name in ("caddie.db", "csrf.key"):
    try:
        print(name, "read:", open(os.path.join(data, name), "rb").read()[:40])
    except OSError as exc:
        print(name, "read: denied", type(exc).__name__)
try:
    db = sqlite3.connect(os.path.join(data, "caddie.db"))
    db.execute("update apitoken set role = 'admin'")
    db.commit()
    print("db write: done")
except Exception as exc:
    print("db write: denied", type(exc).__name__)
child = subprocess.Popen(["setsid", "sleep", "300"], cwd="/")
open("child.pid", "w").write(str(child.pid))
sys.stdout.flush()
if os.environ.get("LINGER"):
    import time
    time.sleep(300)
print("step:20/20 val_loss:2.5000 val_bpb:1.4800 train_time:200ms step_avg:10.00ms")
print("final_int8_zlib_roundtrip_exact val_loss:2.50000000 val_bpb:1.48000000")
open("final_model.int8.ptz", "wb").write(bytes(range(256)) * 20)
'''

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching accounts needs root")


def run_user_python() -> str:
    """A Python the run account can execute (the test interpreter may live under /root)."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3", os.path.realpath(sys.executable)):
        if candidate and subprocess.run(
                ["setpriv", f"--reuid={RUN_USER}", f"--regid={RUN_USER}", "--clear-groups", candidate,
                 "-c", "import sqlite3"], capture_output=True, check=False).returncode == 0:
            return candidate
    raise AssertionError(f"no Python that {RUN_USER} can run")


@pytest.fixture
def base() -> Iterator[Path]:
    """A folder other accounts may pass through (pytest's tmp_path is 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="caddie-iso-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def local(base: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunDirector, Engine, Settings]]:
    """A director on the local provider with its database and csrf.key in the data dir, and a
    process of the worker's account started with a secret in its environment (as a worker is:
    /proc/<pid>/environ shows what a process was started with)."""
    monkeypatch.setenv("CADDIE_RUNPOD_API_KEY", SECRET)
    holder = subprocess.Popen(["sleep", "600"], env={"CADDIE_RUNPOD_API_KEY": SECRET, "PATH": os.defpath})
    data = base / "data"
    data.mkdir()
    (data / "csrf.key").write_text("csrf-secret-key\n")
    if subprocess.run(["id", RUN_USER], capture_output=True, check=False).returncode != 0:
        subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                        "/usr/sbin/nologin", RUN_USER], check=True)
    # Outside the script's torch-less Python, torchrun is replaced by running the script as
    # the one process torchrun would start (preflight still runs the test interpreter).
    shim = base / "python"
    shim.write_text(f"""#!/bin/sh
if [ "$1" = -m ] && [ "$2" = torch.distributed.run ]; then
  shift 4; WORLD_SIZE=1 RANK=0 LOCAL_RANK=0 exec {run_user_python()} "$@"
fi
exec {sys.executable} "$@"
""")
    shim.chmod(0o755)
    settings = Settings(data_dir=data, poll_interval_s=0.05, lease_s=60, run_grace_s=30,
                        local_provider="members", local_python=str(shim))
    engine = make_engine(f"sqlite:///{data / 'caddie.db'}")
    SQLModel.metadata.create_all(engine)
    (data / "caddie.db").chmod(0o644)  # as a default umask leaves it
    with Session(engine) as session:
        create_token(session, name="mallory")  # a member the script would promote
    try:
        yield RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=lambda s, e: None), \
            engine, settings
    finally:
        engine.dispose()
        holder.kill()
        holder.wait()


def script_run(engine: Engine, provider: str, env: dict[str, str]) -> int:
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, provider=provider, kind="script", env=env)
        store_files(session, experiment.id, {"train_gpt.py": HOSTILE})
        session.commit()
        run = make_run(session, experiment, seed=1)
        assert run.id is not None
        return run.id


def stored_log(engine: Engine, run_id: int) -> str:
    from server.runlog import read_log
    with Session(engine) as session:
        return read_log(session, run_id, limit=4 * 1024 * 1024).text


def alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(") ", 1)[1].split()[0] != "Z"


def child_pid(run: Run) -> int:
    assert run.remote_dir is not None
    path = Path(run.remote_dir) / "code" / "child.pid"
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline, "the script never started its child"
        time.sleep(0.1)
    return int(path.read_text())


def test_a_hostile_script_on_local_reads_no_secret_and_cannot_touch_the_database(local):
    director, engine, settings = local
    run_id = script_run(engine, "local", {"DATA_DIR": str(settings.data_dir.resolve())})
    run = drive(director, run_id, until=FINAL, timeout_s=120)

    log = stored_log(engine, run_id)
    assert run.status == "succeeded", f"{run.reason}\n{log}"
    uid = int(subprocess.run(["id", "-u", RUN_USER], capture_output=True, text=True, check=True).stdout)
    assert f"uid: {uid}\n" in log and uid != 0
    assert SECRET not in log and "found_env: []" in log  # no process's CADDIE_* settings
    assert "CADDIE_" not in log.split("own_env:")[1].split("\n")[0]
    assert "caddie.db read: denied PermissionError" in log
    assert "csrf.key read: denied PermissionError" in log
    assert "db write: denied" in log
    with sqlite3.connect(settings.data_dir / "caddie.db") as db:
        assert db.execute("select name, role from apitoken").fetchall() == [("mallory", "member")]
    assert not alive(child_pid(run))  # the setsid child went with the run, before its pod was released


def cancel_a_lingering_script(director, engine, provider: str, data_dir: str) -> tuple[Run, int]:
    """Cancel a running script that left a setsid child behind: (the ended run, the child's pid)."""
    run_id = script_run(engine, provider, {"DATA_DIR": data_dir, "LINGER": "1"})
    run = drive(director, run_id, until={RunStatus.running}, timeout_s=60)
    pid = child_pid(run)
    assert alive(pid)
    with Session(engine) as session:
        update_run(session, run_id, fence=None, cancel_requested=True)
    return drive(director, run_id, until=FINAL, timeout_s=60), pid


def test_a_setsid_child_is_gone_when_cancel_says_cancelled_on_local(local):
    director, engine, settings = local
    run, pid = cancel_a_lingering_script(director, engine, "local", str(settings.data_dir))
    assert (run.status, run.reason) == ("cancelled", "cancelled on request")
    assert not alive(pid)


def test_scripts_are_refused_on_local_when_the_worker_cannot_switch_accounts(local):
    director, engine, settings = local
    director.settings = settings.model_copy(update={"local_run_user": ""})
    run = drive(director, script_run(engine, "local", {"DATA_DIR": "/"}), until=FINAL, timeout_s=60)
    assert run.status == "failed"
    assert "CADDIE_LOCAL_SCRIPTS_UNISOLATED=true" in run.reason and "CADDIE_LOCAL_RUN_USER" in run.reason


@pytest.mark.sshd
def test_a_setsid_child_is_gone_when_cancel_says_cancelled_over_ssh(ssh_settings, engine, finalized):
    director = RunDirector(ssh_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)
    run, pid = cancel_a_lingering_script(director, engine, "ssh", "/nonexistent")
    assert run.status == "cancelled"
    assert not alive(pid)
    assert read_run(engine, run.id).reason == "cancelled on request"


def test_the_same_script_run_unisolated_does_reach_the_secrets(local):
    """The control: with the switch turned off by the operator, the scan and the reads above
    find what they look for, so their empty answers are the isolation's doing."""
    director, engine, settings = local
    director.settings = settings.model_copy(update={"local_run_user": "", "local_scripts_unisolated": True})
    run_id = script_run(engine, "local", {"DATA_DIR": str(settings.data_dir.resolve())})
    run = drive(director, run_id, until=FINAL, timeout_s=120)

    log = stored_log(engine, run_id)
    assert run.status == "succeeded", f"{run.reason}\n{log}"
    assert SECRET in log and "uid: 0\n" in log
    assert "csrf.key read: b'csrf-secret-key" in log and "db write: done" in log
