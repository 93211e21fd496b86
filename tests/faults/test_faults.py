"""Runs survive the failures of the real world: a worker killed with -9, sshd going away while
the log streams, Redis restarting; a pod rented behind Caddie's back does not outlive two
reconcile passes. Real processes throughout (PostgreSQL, Redis, a Celery
worker and beat, sshd); only the trainer is the fake one, so a run lasts as long as asked."""

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server.models import LogChunk, Run
from tests.faults.conftest import new_ssh_run, wait_run
from tests.worker.runpod_standin import ACCOUNT_KEY, RunPodStandIn

pytestmark = [pytest.mark.faults, pytest.mark.postgres, pytest.mark.sshd, pytest.mark.slow]
ENDED = ("succeeded", "failed", "cancelled")


def stored_log(engine, run_id: int) -> bytes:
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id)
                              .order_by(LogChunk.offset)).all()  # type: ignore[arg-type]
    offset = 0
    for chunk in chunks:  # contiguous: nothing lost, nothing stored twice
        assert chunk.offset == offset
        offset += chunk.nbytes
    return "".join(c.text for c in chunks).encode()


def succeeds_through(engine, stop: Callable[[], None], start: Callable[[], None], down_s: float,
                     **fake: object) -> Run:
    """An SSH run whose log streams when `stop()` takes a part away and `start()` brings it back
    `down_s` later: the run still succeeds."""
    run_id = new_ssh_run(engine, **fake)
    wait_run(engine, run_id, lambda r: r.status == "running" and r.log_offset > 0)
    stop()
    time.sleep(down_s)
    start()
    run = wait_run(engine, run_id, lambda r: r.status in ENDED)
    assert run.status == "succeeded", run.reason
    return run


def test_kill_9_of_the_worker_while_training(fault_stack, fault_db):
    _, engine = fault_db
    run = succeeds_through(engine, fault_stack.kill_worker, fault_stack.start_worker, 1,
                           fake_log_lines=400, fake_pause_s=6)
    assert run.bytes_total and run.val_bpb == 1.48
    starts = Path(run.remote_dir, "starts").read_text().split()
    assert len(starts) == 1  # exactly one trainer process ever ran
    assert stored_log(engine, run.id) == Path(run.remote_dir, "train.log").read_bytes()


def test_sshd_stopped_and_restarted_while_the_log_streams(fault_stack, fault_db, sshd):
    _, engine = fault_db
    run = succeeds_through(engine, sshd.stop, sshd.start, 2, fake_log_lines=3000, fake_pause_s=5)
    pod_log = Path(run.remote_dir, "train.log").read_bytes()
    assert len(pod_log) > 100_000 and stored_log(engine, run.id) == pod_log


def test_redis_restarted_mid_run(fault_stack, fault_db, redis_server):
    _, engine = fault_db
    run = succeeds_through(engine, redis_server.stop, redis_server.start, 2, fake_log_lines=400, fake_pause_s=6)
    assert len(Path(run.remote_dir, "starts").read_text().split()) == 1
    assert stored_log(engine, run.id) == Path(run.remote_dir, "train.log").read_bytes()


def test_a_stray_runpod_pod_is_ended_within_two_reconcile_intervals(fault_stack, sshd):
    interval_s = 1.0
    runpod = RunPodStandIn(sshd, ACCOUNT_KEY)
    runpod.start()
    try:
        fault_stack.stop()
        fault_stack.env.update({
            "CADDIE_RUNPOD_API_URL": f"{runpod.url}/v2", "CADDIE_RUNPOD_GRAPHQL_URL": f"{runpod.url}/graphql",
            "CADDIE_RUNPOD_API_KEY": ACCOUNT_KEY, "CADDIE_RECONCILE_INTERVAL_S": str(interval_s)})
        fault_stack.start_worker()
        fault_stack.start_beat()
        deadline = time.monotonic() + 60
        while runpod.count("GET", "/v2/pods") == 0:  # the first reconcile pass has listed the pods
            assert time.monotonic() < deadline, "the reconciler never listed the pods"
            time.sleep(0.05)
        keep = runpod.add_pod("someone-elses-pod")
        runpod.add_pod("caddie-run-4242")
        made = time.monotonic()
        while len(runpod.live()) > 1 and time.monotonic() - made < 10:
            time.sleep(0.02)
        took = time.monotonic() - made
        assert [p["id"] for p in runpod.live()] == [keep]
        assert took <= 2 * interval_s, f"the stray pod lived {took:.2f} s"
        logs = "".join(f.read_text(errors="replace") for f in fault_stack.log_dir.glob("*.log"))
        assert "caddie-run-4242" in logs and ACCOUNT_KEY not in logs  # logged why, never the key
    finally:
        runpod.stop()
