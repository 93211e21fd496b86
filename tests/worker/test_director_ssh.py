"""The director with the ssh provider; the pod is a real sshd on a loopback port."""

import time
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server.models import LogChunk, Pod
from server.runs import update_run
from server.states import FINAL_RUN_STATUSES, RunStatus
from tests.sshd import Sshd
from tests.worker.harness import FAKE_TRAINER, drive, new_run, read_run
from worker import launcher
from worker.bundle import TrainerBundle
from worker.director import RunDirector
from worker.providers.local import LocalRemote

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)


@pytest.fixture
def ssh_director(ssh_settings, engine, finalized):
    return RunDirector(ssh_settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)


def pod_of(engine, run) -> Pod:
    with Session(engine) as session:
        pod = session.get(Pod, run.pod_id)
        assert pod is not None
        return pod


def test_run_over_ssh_succeeds_with_the_host_key_pinned(ssh_director, engine, sshd, ssh_settings):
    run_id = new_run(engine, provider="ssh", fake_log_lines=2000)
    run = drive(ssh_director, run_id, until=FINAL)
    assert run.status == "succeeded", run.reason
    assert run.host_key == sshd.host_key_fingerprint()
    assert run.remote_dir == f"{ssh_settings.ssh_workdir}/run-{run_id}"
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)).all()
    assert "".join(c.text for c in chunks).encode() == Path(run.remote_dir, "train.log").read_bytes()
    assert "omp_threads:unset\n" in chunks[0].text  # a host of its own: torch picks its threads
    pod = pod_of(engine, run)
    assert (pod.provider, pod.host, pod.port, pod.username, pod.status) == (
        "ssh", "127.0.0.1", sshd.port, sshd.user, "released")
    assert run.bytes_total == run.code_bytes + Path(run.remote_dir, "final_model.int8.ptz").stat().st_size


def test_an_unreachable_host_fails_after_bounded_retries(ssh_director, engine, sshd):
    run_id = new_run(engine, provider="ssh")
    drive(ssh_director, run_id, until={RunStatus.connecting})
    sshd.stop()
    attempts = []
    while read_run(engine, run_id).status == "connecting":
        ssh_director.advance(run_id)
        attempts.append(read_run(engine, run_id).attempts)
    run = read_run(engine, run_id)
    assert attempts == [1, 2, 2]  # the third failure ends the run, it writes no fourth try
    assert run.status == "failed"
    assert run.reason == f"cannot connect to {sshd.target}: connection refused (after 3 attempts)"
    assert pod_of(engine, run).status == "released"


def test_a_key_the_host_refuses_fails_after_bounded_retries(ssh_settings, engine, finalized, tmp_path, sshd):
    (tmp_path / "stranger").mkdir()
    stranger = Sshd(tmp_path / "stranger")  # only its freshly made client key is used
    settings = ssh_settings.model_copy(update={"ssh_key_file": stranger.key_path})
    director = RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=finalized)
    run = drive(director, new_run(engine, provider="ssh"), until=FINAL)
    assert run.status == "failed"
    assert run.reason == f"cannot connect to {sshd.target}: authentication failed (after 3 attempts)"
    assert run.host_key is None


def test_a_dropped_connection_while_running_is_retried(ssh_director, engine, sshd):
    run_id = new_run(engine, provider="ssh", fake_pause_s=1.5)
    run = drive(ssh_director, run_id, until={RunStatus.running})
    sshd.stop()
    ssh_director.advance(run_id)
    run = read_run(engine, run_id)
    assert (run.status, run.attempts) == ("running", 1)
    assert run.next_check_at is not None
    sshd.start()
    run = drive(ssh_director, run_id, until=FINAL)
    assert run.status == "succeeded" and run.attempts == 0


def test_a_changed_host_key_mid_run_fails_the_run(ssh_director, engine, sshd):
    run_id = new_run(engine, provider="ssh", fake_mode="sleep")
    run = drive(ssh_director, run_id, until={RunStatus.running})
    sshd.new_host_key()
    sshd.restart()
    try:
        run = drive(ssh_director, run_id, until=FINAL)
        assert run.status == "failed"
        assert run.reason.startswith(f"host key of [127.0.0.1]:{sshd.port} changed: this run pinned {run.host_key}")
    finally:
        launcher.stop(LocalRemote(), run.remote_dir)  # the worker could not reach it to stop it


def test_cancel_over_ssh_stops_the_trainer(ssh_director, engine):
    run_id = new_run(engine, provider="ssh", fake_mode="sleep")
    run = drive(ssh_director, run_id, until={RunStatus.running})
    deadline = time.monotonic() + 10
    starts = Path(run.remote_dir, "starts")
    # The file exists before the trainer has written its pid into it: wait for the digits.
    while not (starts.exists() and starts.read_text().strip()):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    trainer_pid = int(starts.read_text())
    with Session(engine) as session:
        update_run(session, run_id, fence=None, cancel_requested=True)
    assert drive(ssh_director, run_id, until=FINAL).status == "cancelled"
    status = Path(f"/proc/{trainer_pid}/status")
    assert not status.exists() or "\nState:\tZ" in status.read_text()


def test_one_host_serves_one_run_at_a_time(ssh_director, engine):
    first = new_run(engine, provider="ssh", fake_mode="sleep")
    second = new_run(engine, provider="ssh", seed=8)
    drive(ssh_director, first, until={RunStatus.running})
    ssh_director.advance(second)
    ssh_director.advance(second)
    assert read_run(engine, second).status == "provisioning"  # waiting for the host
    with Session(engine) as session:
        update_run(session, first, fence=None, cancel_requested=True)
    drive(ssh_director, first, until=FINAL)
    assert drive(ssh_director, second, until=FINAL).status == "succeeded"
    assert pod_of(engine, read_run(engine, second)).port == pod_of(engine, read_run(engine, first)).port


def test_the_ssh_provider_without_hosts_fails_clearly(director, engine):
    run = drive(director, new_run(engine, provider="ssh"), until=FINAL)
    assert run.reason == "the ssh provider has no hosts: set CADDIE_SSH_HOSTS"
