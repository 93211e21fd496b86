"""GET /api/runs/{id}/logs/stream: Server-Sent Events of a run's stored log, resumable by
byte offset, against a real uvicorn on SQLite and PostgreSQL (and Redis for the wake-up)."""

import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server import runlog_stream
from server.config import get_settings
from server.db import get_engine
from server.models import LogChunk, Run
from tests.databases import redis_url
from tests.factories import make_experiment, make_log, make_run
from tests.web.live import Event, LiveServer, read_events

REDIS_URL = redis_url(0)


def line(n: int) -> str:
    # Non-ASCII on purpose: ids are byte offsets, not character counts.
    return f"step:{n}/40 train_loss:{7 - n / 10:.4f} train_time:{n * 10}ms é✓\n"


def append(run_id: int, text: str) -> int:
    """Store `text` as the next chunk of the run's log the way the worker does; the new offset."""
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        assert run is not None
        nbytes = len(text.encode())
        session.add(LogChunk(run_id=run_id, offset=run.log_offset, nbytes=nbytes, text=text))
        run.log_offset += nbytes
        session.add(run)
        session.commit()
        offset = run.log_offset
    runlog_stream.publish_log(run_id, offset)
    return offset


def set_status(run_id: int, status: str) -> None:
    with Session(get_engine()) as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.status = status
        session.add(run)
        session.commit()


def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def read_to(events: Iterator[Event], offset: int) -> list[Event]:
    """Events until one ends at byte `offset` (stored chunks may come merged in one event)."""
    taken = [next(events)]
    while taken[-1].kind == "log" and taken[-1].data["next"] < offset:
        taken.append(next(events))
    return taken


def test_resume_with_last_event_id_mid_run_sees_every_line_once(
        live_server: LiveServer, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1), line(2) + line(3)])
    url = f"{live_server.url}/api/runs/{run.id}/logs/stream"
    seen: list[Event] = []

    with httpx.Client(timeout=10) as http:
        with http.stream("GET", url) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = read_events(response)
            seen += read_to(events, run.log_offset)  # what was stored before connecting
            seen += read_to(events, append(run.id, line(4)))  # stored while connected
        # Disconnected: the worker goes on storing.
        append(run.id, line(5))
        stored = append(run.id, line(6) + line(7))
        last_id = seen[-1].id
        assert last_id is not None
        # A reconnecting EventSource sends Last-Event-ID with its first URL, ?offset= included.
        with http.stream("GET", url + "?offset=0", headers={"Last-Event-ID": last_id}) as response:
            events = read_events(response)
            seen += read_to(events, stored)
            seen += read_to(events, append(run.id, line(8)))
            set_status(run.id, "succeeded")
            end = next(events)

    logged = [e for e in seen if e.kind == "log"]
    assert len(logged) == len(seen)
    text = "".join(e.data["text"] for e in logged)
    assert text == "".join(line(n) for n in range(1, 9))  # every line, once, in order
    position = 0
    for event in logged:  # back to back, each id the byte offset after its text
        assert event.data["offset"] == position
        position += len(event.data["text"].encode())
        assert event.id == str(event.data["next"]) == str(position)
    assert (end.kind, end.data) == ("end", {"status": "succeeded", "offset": position})


def test_ended_run_streams_its_whole_log_then_ends(client: TestClient, session: Session) -> None:
    """Logs stay readable after the pod is gone: they are in the database."""
    run = make_run(session, make_experiment(session), seed=1, status="failed")
    make_log(session, run, [line(1), line(2), "no newline at the end"])

    with client.stream("GET", f"/api/runs/{run.id}/logs/stream") as response:
        events = list(read_events(response))

    assert [e.kind for e in events] == ["log", "end"]
    assert events[0].data["text"] == line(1) + line(2) + "no newline at the end"
    assert events[1].data == {"status": "failed", "offset": run.log_offset}


def test_offset_resumes_inside_the_log(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="succeeded")
    make_log(session, run, [line(1), line(2)])
    start = len(line(1).encode())

    response = client.get(f"/api/runs/{run.id}/logs/stream?offset={start}")
    events = list(read_events(response))

    assert events[0].data == {"offset": start, "next": run.log_offset, "text": line(2)}
    assert events[0].id == str(run.log_offset)
    # Reconnect within a second after a drop; said once per connection.
    assert response.text.count("retry: 1000\n") == 1


def test_a_large_log_comes_in_several_events(client: TestClient, session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="succeeded")
    lines = [line(n % 40) for n in range(3000)]  # ~190 KB, above one event's 64 KiB
    make_log(session, run, ["".join(lines[:1500]), "".join(lines[1500:])])

    with client.stream("GET", f"/api/runs/{run.id}/logs/stream") as response:
        events = list(read_events(response))

    logged = [e for e in events if e.kind == "log"]
    assert len(logged) >= 3
    assert all(len(e.data["text"].encode()) <= runlog_stream.EVENT_BYTES for e in logged)
    assert "".join(e.data["text"] for e in logged) == "".join(lines)


@pytest.mark.parametrize(("headers", "query", "status", "loc"), [
    ({"Last-Event-ID": "twelve"}, "", 422, ["header", "last-event-id"]),
    ({"Last-Event-ID": "-5"}, "", 422, ["header", "last-event-id"]),
    ({}, "?offset=-1", 422, ["query", "offset"]),
    ({}, "?offset=999999", 422, ["query", "offset"]),
])
def test_bad_start_is_refused_before_the_stream_opens(
        client: TestClient, session: Session, headers: dict[str, str], query: str, status: int,
        loc: list[str]) -> None:
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1)])

    response = client.get(f"/api/runs/{run.id}/logs/stream{query}",
                          headers=headers | {"accept": "application/json"})

    assert response.status_code == status
    assert response.json()["detail"][0]["loc"] == loc


def test_unknown_run_is_404(client: TestClient) -> None:
    response = client.get("/api/runs/4242/logs/stream", headers={"accept": "application/json"})

    assert response.status_code == 404
    assert response.json() == {"detail": "run 4242 not found"}


@pytest.mark.redis
def test_redis_message_wakes_the_stream_at_once(
        settings_env: None, monkeypatch: pytest.MonkeyPatch, session: Session) -> None:
    # With a 60 s recheck, only the published message can bring the line within a second.
    monkeypatch.setenv("CADDIE_REDIS_URL", REDIS_URL)
    get_settings.cache_clear()
    monkeypatch.setattr(runlog_stream, "RECHECK_S", 60.0)
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1)])
    server = LiveServer().start()
    try:
        with httpx.Client(timeout=10) as http, http.stream(
                "GET", f"{server.url}/api/runs/{run.id}/logs/stream") as response:
            events = read_events(response)
            next(events)
            time.sleep(0.3)  # the stream is waiting on Redis now
            stored_at = time.monotonic()
            append(run.id, line(2))
            event = next(events)
            latency = time.monotonic() - stored_at
    finally:
        server.stop()

    assert event.data["text"] == line(2)
    assert latency < 1.0


@pytest.mark.redis
def test_a_client_that_leaves_frees_its_subscription(
        settings_env: None, monkeypatch: pytest.MonkeyPatch, session: Session) -> None:
    monkeypatch.setenv("CADDIE_REDIS_URL", REDIS_URL)
    get_settings.cache_clear()
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1)])
    # Run ids restart in every test database: a channel of its own keeps counts exact.
    monkeypatch.setattr(runlog_stream, "CHANNEL_PREFIX", f"caddie:test:{uuid.uuid4().hex}:")
    watcher = redis.Redis.from_url(REDIS_URL)
    subscribers = lambda: watcher.pubsub_numsub(runlog_stream.channel(run.id))[0][1]  # noqa: E731
    server = LiveServer().start()
    try:
        with httpx.Client(timeout=10) as http, http.stream(
                "GET", f"{server.url}/api/runs/{run.id}/logs/stream") as response:
            events = read_events(response)  # held: a dropped reader closes the response
            next(events)
            assert wait_for(lambda: subscribers() == 1)
        assert wait_for(lambda: subscribers() == 0)
    finally:
        server.stop()
        watcher.close()


def test_reads_do_not_wait_for_the_write_lock(
        client: TestClient, session: Session, database_url: str) -> None:
    """Pages, GETs and streams read a snapshot (on SQLite a deferred BEGIN under WAL); when
    every read took SQLite's BEGIN IMMEDIATE they waited for a writer's lock (30 s, then
    "database is locked")."""
    run = make_run(session, make_experiment(session), seed=1, status="succeeded")
    make_log(session, run, [line(1)])
    writer = create_engine(database_url).connect()  # a worker in the middle of a write
    writer.execute(text("UPDATE run SET attempts = attempts WHERE id = :id"), {"id": run.id})
    answers: list[int] = []
    reader = threading.Thread(target=lambda: answers.extend([
        client.get(f"/api/runs/{run.id}").status_code,
        client.get(f"/api/runs/{run.id}/logs/stream").status_code,
        client.get("/healthz").status_code]))
    try:
        reader.start()
        reader.join(timeout=5)
        assert answers == [200, 200, 200]
    finally:
        writer.rollback()
        writer.close()
        writer.engine.dispose()
        reader.join()


def test_streams_of_one_run_share_one_tail(
        live_server: LiveServer, session: Session, engine: Engine) -> None:
    """30 followers of one run cost one log read per change, not one per follower."""
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1)])
    url = f"{live_server.url}/api/runs/{run.id}/logs/stream?offset={run.log_offset}"
    log_reads = 0

    def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
        nonlocal log_reads
        log_reads += "FROM logchunk" in statement

    texts: list[str] = []
    with httpx.Client(timeout=10, limits=httpx.Limits(max_connections=40)) as http:
        streams = [http.stream("GET", url) for _ in range(30)]
        responses = [stream.__enter__() for stream in streams]
        sqlalchemy_event.listen(engine, "before_cursor_execute", count)
        try:
            for n in range(2, 6):
                offset = append(run.id, line(n))
            set_status(run.id, "succeeded")
            for response in responses:
                events = list(read_events(response))
                texts.append("".join(e.data["text"] for e in events if e.kind == "log"))
                assert events[-1].data == {"status": "succeeded", "offset": offset}
        finally:
            sqlalchemy_event.remove(engine, "before_cursor_execute", count)
            for stream in streams:
                stream.__exit__(None, None, None)

    assert texts == ["".join(line(n) for n in range(2, 6))] * 30
    # Polled every 0.5 s by one tail: a handful of reads; one per stream per poll was hundreds.
    assert log_reads < 30


def test_a_graceful_stop_ends_open_streams(
        settings_env: None, session: Session, tmp_path: Path) -> None:
    """SIGTERM: uvicorn waits for open responses, so each stream ends itself (the browser's
    EventSource resumes elsewhere); before, the stop waited as long as any run lived."""
    run = make_run(session, make_experiment(session), seed=1, status="running")
    make_log(session, run, [line(1)])
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--port", str(port),
         "--log-level", "warning"], cwd=Path(__file__).parents[2])
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_for(lambda: _answers(f"{base}/healthz"), seconds=90)  # a loaded machine
        with httpx.Client(timeout=10) as http, http.stream(
                "GET", f"{base}/api/runs/{run.id}/logs/stream") as response:
            events = read_events(response)
            assert next(events).data["text"] == line(1)
            server.send_signal(signal.SIGTERM)
            assert list(events) == []  # the stream ended without an `end` event
        # uvicorn stops gracefully, then dies of the signal it caught, as it was sent.
        assert server.wait(timeout=10) in (0, -signal.SIGTERM)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
