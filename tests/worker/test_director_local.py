"""The director with the local provider: the pod is this machine, the trainer a subprocess."""

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlmodel import Session, select

from server.models import LogChunk, Pod, Run, RunEvent, utcnow
from server.runlog import read_log
from server.runs import acquire_lease, release_lease, update_run
from server.states import FINAL_RUN_STATUSES, RUN_PATH, RunStatus
from tests.worker.harness import FAKE_TRAINER, drive, new_run, read_run
from trainer.contract import code_digest
from worker import launcher
from worker.bundle import TrainerBundle

FINAL = set(FINAL_RUN_STATUSES)


def stored_log(engine, run_id: int) -> str:
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)).all()
    offset = 0
    for chunk in chunks:
        assert chunk.offset == offset, "chunks must be contiguous"
        offset += chunk.nbytes
    return "".join(c.text for c in chunks)


def process_gone(pid: int) -> bool:
    """True when the pid is gone or only a zombie is left of it."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def wait_for(path: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_run_goes_through_every_state_and_is_verified(director, engine, settings, finalized):
    run_id = new_run(engine, fake_log_lines=30_000)  # ~1.7 MB of log: several chunks
    run = drive(director, run_id, until=FINAL)

    assert run.status == "succeeded", run.reason
    with Session(engine) as session:
        events = session.exec(select(RunEvent).where(RunEvent.run_id == run_id).order_by(RunEvent.id)).all()
        pod = session.get(Pod, run.pod_id)
    assert [e.to_status for e in events] == [s.value for s in RUN_PATH]
    train_log = Path(run.remote_dir, "train.log").read_bytes()
    assert stored_log(engine, run_id).encode() == train_log
    assert run.log_offset == len(train_log)
    expected_code_bytes, expected_sha = code_digest(TrainerBundle(FAKE_TRAINER).files())
    artifact = Path(run.remote_dir, "final_model.int8.ptz").read_bytes()
    assert (run.code_bytes, run.code_sha256) == (expected_code_bytes, expected_sha)
    assert run.model_bytes == len(artifact) and run.bytes_total == expected_code_bytes + len(artifact)
    assert (run.val_bpb, run.val_loss, run.steps, run.val_tokens) == (1.48, 2.5, 1000, 62_021_632)
    assert run.exit_code == 0 and run.started_at <= run.exited_at
    # No GPU here: the worker's own preflight says so, and the rules say why it is not a record.
    assert (run.gpu_name, run.gpu_count) == (None, 0)
    assert run.eligible is False and run.reasons == ["hardware no GPU is not 8×H100"]
    assert run.results["worker"]["preflight"]["python"].count(".") == 2
    assert pod.name == f"caddie-run-{run_id}" and pod.status == "terminated"
    # Once on leaving the queue (the experiment starts), once at the end.
    assert finalized == [read_run(engine, run_id).experiment_id] * 2
    assert (settings.runs_dir() / str(run_id) / "results.json").is_file()


@pytest.mark.parametrize("engine", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
def test_binary_bytes_and_a_line_longer_than_a_chunk_are_stored_safely(director, engine, settings):
    run_id = new_run(engine, fake_mode="hostile_log")
    run = drive(director, run_id, until=FINAL)

    assert run.status == "succeeded", run.reason
    pod_log = (Path(run.remote_dir) / "train.log").read_bytes()
    text = stored_log(engine, run_id)  # checks the chunks are contiguous
    assert run.log_offset == len(pod_log)  # every byte accounted for, offsets exact
    assert "bad bytes \ufffd\ufffd and a NUL \ufffd and a CR \r in one line\n" in text
    # The 3 MiB line is cut into chunks between its characters (1 MiB from its start falls
    # inside a 3-byte "€"): each chunk decodes as the whole file does, no character lost.
    assert max(text.split("\n"), key=len) == "€" * (3 * 1024 * 1024 // 3)
    assert text == pod_log.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    assert text.endswith("no newline at the end")


def test_the_pod_environment_carries_none_of_the_workers_variables(director, engine, monkeypatch):
    monkeypatch.setenv("CADDIE_SECRET_PROBE", "s3cret")
    run_id = new_run(engine)
    run = drive(director, run_id, until=FINAL)
    assert "env_secret:absent" in stored_log(engine, run_id)
    # Seeds share this machine's cores: one torch thread each unless configured otherwise.
    assert "omp_threads:1\n" in stored_log(engine, run_id)
    assert "s3cret" not in Path(run.remote_dir, "launch.sh").read_text()


def test_a_redelivered_upload_step_launches_no_second_trainer(director, engine):
    run_id = new_run(engine, fake_mode="sleep")
    drive(director, run_id, until={RunStatus.uploading})
    with Session(engine) as session:
        fence = acquire_lease(session, run_id, owner="w1", lease_s=60)
    assert director.step(run_id, fence) == 0
    with Session(engine) as session:
        release_lease(session, run_id, fence=fence, next_check_at=None)
    run = read_run(engine, run_id)
    assert run.status == "running"
    wait_for(Path(run.remote_dir, "starts"))
    # The worker died after launching but before its transition committed: the message is
    # delivered again and finds the run still uploading.
    with Session(engine) as session:
        session.execute(update(Run).where(Run.id == run_id).values(status="uploading"))
        session.commit()
    assert director.advance(run_id) is True
    assert read_run(engine, run_id).status == "running"
    assert director.advance(run_id) is False  # a duplicate of the step: just a poll now
    assert launcher.launch(director_remote(), run.remote_dir) is False
    time.sleep(0.3)
    assert len(Path(run.remote_dir, "starts").read_text().split()) == 1
    with Session(engine) as session:
        update_run(session, run_id, fence=None, cancel_requested=True)
    assert drive(director, run_id, until=FINAL).status == "cancelled"


def test_a_stale_fence_cannot_launch_or_write(director, engine):
    run_id = new_run(engine, fake_mode="sleep")
    drive(director, run_id, until={RunStatus.uploading})
    with Session(engine) as session:
        old = acquire_lease(session, run_id, owner="slow-worker", lease_s=60)
        update_run(session, run_id, fence=old, lease_expires_at=utcnow() - timedelta(seconds=1))
        new = acquire_lease(session, run_id, owner="new-worker", lease_s=60)
    assert new == old + 1
    with pytest.raises(Exception) as lost:
        director.step(run_id, old)
    assert type(lost.value).__name__ == "LeaseLost"
    run = read_run(engine, run_id)
    assert run.status == "uploading" and not Path(run.remote_dir or "/nonexistent", "launched").exists()
    director.step(run_id, new)
    run = read_run(engine, run_id)
    wait_for(Path(run.remote_dir, "train.log"))
    for _ in range(500):  # until the trainer has written a first whole line
        if b"\n" in Path(run.remote_dir, "train.log").read_bytes():
            break
        time.sleep(0.02)
    with pytest.raises(Exception) as lost_again:
        director.step(run_id, old)
    assert type(lost_again.value).__name__ == "LeaseLost"
    assert len(Path(run.remote_dir, "starts").read_text().split()) == 1
    with Session(engine) as session:
        update_run(session, run_id, fence=None, cancel_requested=True, lease_owner=None)
    assert drive(director, run_id, until=FINAL).status == "cancelled"


@pytest.mark.parametrize(("code", "reason"), [
    (3, "trainer exited with code 3"),
    (124, "trainer exited with code 124 (stopped at its wall-clock deadline)"),
])
def test_a_crashing_trainer_fails_the_run_with_its_exit_code_and_last_lines(director, engine, code, reason):
    run_id = new_run(engine, fake_mode="crash", fake_exit_code=code)
    run = drive(director, run_id, until=FINAL)
    assert run.status == "failed"
    assert run.reason == reason
    assert run.exit_code == code and run.exited_at is not None
    assert "step:2/10 train_loss:nan" in run.last_log_lines
    assert "ValueError: loss became nan" in run.last_log_lines
    assert read_pod(engine, run).status == "terminated"


def test_cancel_while_running_stops_the_trainer(director, engine):
    run_id = new_run(engine, fake_mode="sleep")
    run = drive(director, run_id, until={RunStatus.running})
    wait_for(Path(run.remote_dir, "trainer_pid"))
    wait_for(Path(run.remote_dir, "starts"))
    wait_for(Path(run.remote_dir, "heartbeat"))
    assert abs(int(Path(run.remote_dir, "heartbeat").read_text()) - time.time()) < 30
    launcher_pid = int(Path(run.remote_dir, "pid").read_text())
    trainer_pid = int(Path(run.remote_dir, "starts").read_text())
    assert not process_gone(trainer_pid)
    with Session(engine) as session:
        update_run(session, run_id, fence=None, cancel_requested=True)
    run = drive(director, run_id, until=FINAL, timeout_s=15)
    assert run.status == "cancelled" and run.reason == "cancelled on request"
    assert process_gone(trainer_pid) and process_gone(launcher_pid)
    assert read_pod(engine, run).status == "terminated"


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"fake_no_artifact": True}, "the run produced no artifact (final_model.int8.ptz is missing)"),
        ({"fake_results": {"val_bpb": "1.2"}}, "results.json is corrupt: val_bpb = '1.2' is not a finite number"),
        ({"fake_results": {"steps": 10.5}}, "results.json is corrupt: steps = 10.5 is not a finite integer"),
    ],
)
def test_bad_results_fail_the_run_with_a_reason(director, engine, config, reason):
    run = drive(director, new_run(engine, **config), until=FINAL)
    assert (run.status, run.reason) == ("failed", reason)


def test_rules_use_the_workers_measurements(director, engine):
    # The trainer claims 700 s of training inside a process that lived a second or two.
    run = drive(director, new_run(engine, fake_results={"train_time_s": 700.0}), until=FINAL)
    assert run.status == "succeeded" and run.eligible is False
    assert any(reason.startswith("train time 700.000 s > 600 s: 100.000 s over")
               for reason in run.reasons)
    assert any(r.startswith("clocks disagree") for r in run.reasons)


def test_an_unknown_provider_fails_the_run_clearly(director, engine):
    run = drive(director, new_run(engine, provider="moon"), until=FINAL)
    assert run.status == "failed" and run.reason == "unknown provider 'moon' (known: local, runpod, ssh)"


def test_run_json_holds_preset_overrides_seed_and_run_id(director, engine):
    run_id = new_run(engine, seed=11, fake_mode="crash", num_layers=3)
    run = drive(director, run_id, until=FINAL)
    config = json.loads(Path(run.remote_dir, "run.json").read_text())
    assert config == {"preset": "tiny", "fake_mode": "crash", "num_layers": 3, "seed": 11,
                      "run_id": str(run_id)}


def read_pod(engine, run):
    with Session(engine) as session:
        return session.get(Pod, run.pod_id)


def director_remote():
    from worker.providers.local import LocalRemote

    return LocalRemote()


def test_stop_is_bounded_and_kills_a_trainer_that_ignores_term(tmp_path):
    remote = director_remote()
    (tmp_path / "run").mkdir()
    run_dir = str(tmp_path / "run")
    script = "trap '' TERM; echo $$ > pid; sleep 60 & wait"
    remote.run(f"cd {run_dir}; setsid bash -c \"{script}\" </dev/null >/dev/null 2>&1 &", timeout_s=10)
    wait_for(tmp_path / "run" / "pid")
    pid = int((tmp_path / "run" / "pid").read_text())
    started = time.monotonic()
    launcher.stop(remote, run_dir, grace_s=0.5)
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while not process_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process_gone(pid)
    assert os.path.exists(tmp_path / "run" / "pid")


def _stored(engine, run_id: int) -> bytes:
    with Session(engine) as session:
        chunks = session.exec(select(LogChunk).where(LogChunk.run_id == run_id).order_by(LogChunk.offset)).all()
    return b"".join(c.text.encode() for c in chunks)


def test_a_large_log_printed_just_before_a_fast_exit_is_stored_to_its_end(director, engine, settings):
    # ~27 MB written at once, then exit: more than the 8 MB one step reads, in running and collecting.
    run = drive(director, new_run(engine, fake_log_lines=400_000), until=set(FINAL_RUN_STATUSES), timeout_s=120)

    assert run.status == "succeeded", run.reason
    pod_log = Path(run.remote_dir, "train.log").read_bytes()
    assert len(pod_log) > 3 * 8 * 1024 * 1024
    assert run.log_offset == len(pod_log)
    stored = _stored(engine, run.id)
    assert stored == pod_log
    assert stored.endswith(b"final_int8_zlib_roundtrip_exact val_loss:2.5 val_bpb:1.48\nno newline at the end")


def test_a_log_past_the_cap_keeps_its_head_a_marker_and_its_final_lines(director, engine, settings):
    cap, tail = 1024 * 1024, 8192
    director.settings = settings.model_copy(update={"log_cap_bytes": cap, "log_tail_bytes": tail})
    run = drive(director, new_run(engine, fake_log_lines=100_000), until=set(FINAL_RUN_STATUSES), timeout_s=120)

    assert run.status == "succeeded", run.reason
    pod_log = Path(run.remote_dir, "train.log").read_bytes()
    stored = _stored(engine, run.id)
    at = stored.index(b"[caddie: ")
    head, (marker, rest) = stored[:at], stored[at:].split(b"\n", 1)
    assert head == pod_log[:at] and head.endswith(b"\n") and cap - 200 < len(head) <= cap  # whole lines
    assert marker.startswith(b"[caddie: ") and b"CADDIE_LOG_CAP_BYTES" in marker
    assert tail - 200 < len(rest) <= tail and pod_log.endswith(rest)
    assert rest.startswith(b"step:")  # from a line's start
    assert rest.endswith(b"val_bpb:1.48\nno newline at the end")  # the final metric survives
    assert run.log_offset == len(pod_log)  # offsets still count the pod's bytes
    assert (settings.runs_dir() / str(run.id) / "train.log").read_bytes() == pod_log  # the whole file kept
    read, offset = b"", 0  # as a log reader does, from next_offset to next_offset
    with Session(engine) as session:
        while offset < run.log_offset:
            piece = read_log(session, run.id, offset=offset, limit=cap)
            assert piece.next_offset > offset
            read, offset = read + piece.text.encode(), piece.next_offset
    assert read == stored


def test_local_runs_past_the_cap_wait_in_line_with_their_place(director, engine, settings):
    director.settings = settings.model_copy(update={"local_max_runs": 1})
    first, second, third = (new_run(engine, fake_mode="sleep", seed=s) for s in (1, 2, 3))
    drive(director, first, until={RunStatus.running})
    for _ in range(3):
        director.advance(second)
        director.advance(third)

    waiting = [read_run(engine, r) for r in (second, third)]
    assert [r.status for r in waiting] == ["provisioning", "provisioning"]
    assert [r.reason for r in waiting] == [
        f"waiting for a local slot: 1 local runs are running (the cap is 1, CADDIE_LOCAL_MAX_RUNS); number {n} in line"
        for n in (1, 2)]
    with Session(engine) as session:
        update_run(session, first, fence=None, cancel_requested=True)
    assert drive(director, first, until=FINAL, timeout_s=15).status == "cancelled"
    for _ in range(3):
        director.advance(third)  # the third may not pass the second, which is ahead of it
    assert read_run(engine, third).status == "provisioning"
    run = drive(director, second, until={RunStatus.running})
    assert run.reason is None
    with Session(engine) as session:
        update_run(session, second, fence=None, cancel_requested=True)
        update_run(session, third, fence=None, cancel_requested=True)
    drive(director, second, until=FINAL, timeout_s=15)
    drive(director, third, until=FINAL, timeout_s=15)
