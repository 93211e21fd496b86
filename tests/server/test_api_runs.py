"""GET /api/runs/{id}, its log and cancelling one run."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.dispatch import ADVANCE_RUN
from server.models import LogChunk
from server.runs import acquire_lease, transition
from server.states import RunStatus
from tests.factories import make_experiment, make_log, make_run
from tests.server.broker import queued_tasks

LOG = ["step:1/20 train_loss:6.93 train_time:10ms step_avg:10.00ms\n",
       "step:2/20 train_loss:6.51 train_time:20ms step_avg:10.00ms\nval ▁bpb:1.2\n",
       "final_int8_zlib_roundtrip_exact val_loss:2.07 val_bpb:1.2244 — ok ✓\n"]
LOG_BYTES = "".join(LOG).encode()


def test_read_run_has_its_events_in_order(client: TestClient, session: Session) -> None:
    run_id = make_run(session, make_experiment(session), seed=1).id
    transition(session, run_id, RunStatus.provisioning, fence=None)
    transition(session, run_id, RunStatus.failed, fence=None, reason="no host free",
               last_log_lines="boom\n")

    body = client.get(f"/api/runs/{run_id}").json()

    assert (body["status"], body["reason"], body["last_log_lines"]) == (
        "failed", "no host free", "boom\n")
    assert [(e["from_status"], e["to_status"]) for e in body["events"]] == [
        (None, "queued"), ("queued", "provisioning"), ("provisioning", "failed")]
    assert body["events"][-1]["reason"] == "no host free"


def read(client: TestClient, run_id: int, **params: int) -> dict[str, object]:
    response = client.get(f"/api/runs/{run_id}/log", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_log_reads_whole_and_from_any_byte_offset(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG)

    whole = read(client, run.id)
    assert whole == {"offset": 0, "next_offset": len(LOG_BYTES), "text": LOG_BYTES.decode()}
    for offset in (1, 17, len(LOG[0].encode()), len(LOG[0].encode()) + 3, len(LOG_BYTES) - 1):
        part = read(client, run.id, offset=offset)
        assert part["text"].encode() == LOG_BYTES[offset:], offset
        assert part["next_offset"] == len(LOG_BYTES)
    assert read(client, run.id, offset=len(LOG_BYTES)) == {
        "offset": len(LOG_BYTES), "next_offset": len(LOG_BYTES), "text": ""}
    assert read(client, run.id, offset=10**6)["text"] == ""


@pytest.mark.parametrize("limit", [2, 5, 64, 1000])
def test_log_read_in_pieces_joins_to_the_whole_log(
    client: TestClient, session: Session, limit: int
) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, LOG)

    pieces, offset = [], 0
    while offset < len(LOG_BYTES):
        part = read(client, run.id, offset=offset, limit=limit)
        assert part["offset"] == offset
        assert part["next_offset"] > offset
        # A piece is cut only between characters, and exceeds the limit only by the
        # rest of one character.
        assert len(part["text"].encode()) <= max(limit, 3)
        pieces.append(part["text"])
        offset = part["next_offset"]
    assert "".join(pieces).encode() == LOG_BYTES


def test_log_chunk_with_replaced_bytes_is_returned_whole(
    client: TestClient, session: Session
) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, ["first\n"])
    # The worker read the 6 bytes b"ab\xffcd\n" and stored U+FFFD for the bad byte.
    session.add(LogChunk(run_id=run.id, offset=6, nbytes=6, text="ab\ufffdcd\n"))
    session.commit()

    whole = read(client, run.id)
    assert (whole["text"], whole["next_offset"]) == ("first\nab\ufffdcd\n", 12)
    assert read(client, run.id, limit=8) == {"offset": 0, "next_offset": 6, "text": "first\n"}
    assert read(client, run.id, offset=6, limit=2)["next_offset"] == 12


@pytest.mark.parametrize("params", [{"offset": -1}, {"limit": 0}, {"limit": 10**9},
                                    {"offset": "x"}])
def test_bad_log_parameters_are_422(client: TestClient, session: Session,
                                    params: dict[str, object]) -> None:
    run = make_run(session, make_experiment(session), seed=1)
    response = client.get(f"/api/runs/{run.id}/log", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", next(iter(params))]


def test_cancel_queued_run_ends_it_at_once(client: TestClient, session: Session,
                                           data_dir: Path) -> None:
    experiment = make_experiment(session, seeds=[1, 2])
    run = make_run(session, experiment, seed=1)
    make_run(session, experiment, seed=2, status="running")

    body = client.post(f"/api/runs/{run.id}/cancel").json()

    assert (body["status"], body["reason"]) == ("cancelled", "cancelled by user")
    assert body["ended_at"] is not None
    assert queued_tasks(data_dir) == []
    again = client.post(f"/api/runs/{run.id}/cancel")
    assert again.status_code == 409
    assert again.json()["detail"] == f"run {run.id} is already cancelled"


def test_cancel_live_run_flags_it_and_wakes_the_worker(
    client: TestClient, session: Session, data_dir: Path
) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="uploading")

    body = client.post(f"/api/runs/{run.id}/cancel").json()

    assert (body["status"], body["cancel_requested"]) == ("uploading", True)
    assert queued_tasks(data_dir) == [(ADVANCE_RUN, [run.id])]


def test_cancel_queued_run_a_worker_holds_leaves_it_to_the_worker(
    client: TestClient, session: Session, data_dir: Path
) -> None:
    run = make_run(session, make_experiment(session), seed=1)
    assert acquire_lease(session, run.id, owner="worker-1", lease_s=60) is not None
    session.commit()  # ends the read transaction acquire_lease left open

    body = client.post(f"/api/runs/{run.id}/cancel").json()

    assert (body["status"], body["cancel_requested"]) == ("queued", True)
    assert queued_tasks(data_dir) == [(ADVANCE_RUN, [run.id])]
