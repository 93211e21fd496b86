"""The visible queue: order (priority, then submission), waiting runs, estimated starts, the
running-experiments cap, and the pod line the worker follows (pods_ahead)."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.config import Settings, get_settings
from server.models import Experiment, Pod, Run
from server.waitlist import admitted, pods_ahead, queue
from tests.factories import make_experiment, make_pod, make_run

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def submitted(session: Session, name: str, minutes: int, *, priority: int = 0,
              provider: str = "runpod", **fields: Any) -> Experiment:
    return make_experiment(session, name=name, priority=priority, provider=provider,
                           created_at=NOW - timedelta(minutes=minutes), **fields)


def settings(**update: Any) -> Settings:
    return get_settings().model_copy(update=update)


def busy_pod(session: Session, run: Run, *, frees_in: timedelta, life: timedelta) -> Pod:
    """A rented pod up for `run`, planned to live `life`, ending `frees_in` from NOW."""
    return make_pod(session, run, status="busy", host="10.0.0.1", external_id=f"x{run.id}",
                    deadline_at=NOW + frees_in, created_at=NOW + frees_in - life)


def test_the_line_is_priority_then_submission_with_waiting_runs(session: Session) -> None:
    early = submitted(session, "early", 30)
    urgent = submitted(session, "urgent", 5, priority=5)
    late = submitted(session, "late", 10)
    done = submitted(session, "done", 60, status="finished")
    make_run(session, early, seed=1)
    started = make_run(session, early, seed=2, status="provisioning")
    make_pod(session, started, status="requested")  # in line, not yet asked of RunPod
    running = make_run(session, early, seed=3, status="running")
    busy_pod(session, running, frees_in=HOUR, life=2 * HOUR)
    make_run(session, urgent, seed=1)
    make_run(session, late, seed=1)
    make_run(session, done, seed=1, status="succeeded")

    line = queue(session, now=NOW, settings=settings(max_pods=3))

    assert [(e.position, e.name, e.waiting_runs) for e in line] == [
        (1, "urgent", 1), (2, "early", 2), (3, "late", 1)]
    assert all(e.held is None for e in line)


def test_estimated_starts_follow_pod_deadlines_and_typical_life(session: Session) -> None:
    holder = submitted(session, "holder", 90, status="running")
    for seed, frees_in in ((1, HOUR), (2, 2 * HOUR)):
        busy_pod(session, make_run(session, holder, seed=seed, status="running"),
                 frees_in=frees_in, life=3 * HOUR)
    first = submitted(session, "first", 20)
    make_run(session, first, seed=1)
    make_run(session, first, seed=2)
    second = submitted(session, "second", 10)
    make_run(session, second, seed=1)
    local = submitted(session, "local", 5, provider="local")
    make_run(session, local, seed=1)

    line = {e.name: e for e in queue(session, now=NOW, settings=settings(max_pods=2))}

    # Slots free at +1h and +2h; "first" takes both, holding each for the typical 3 h.
    assert line["first"].estimated_start == NOW + HOUR
    assert line["second"].estimated_start == NOW + HOUR + 3 * HOUR
    local_start = line["local"].estimated_start
    assert local_start is not None and local_start >= NOW  # no cap: it starts now


def test_free_slots_start_now_and_unknown_lives_give_none(session: Session) -> None:
    a = submitted(session, "a", 20)
    make_run(session, a, seed=1)
    b = submitted(session, "b", 10)
    make_run(session, b, seed=1)

    line = queue(session, now=NOW, settings=settings(max_pods=1))

    # One free slot: "a" starts now; no pod has ever planned a life, so "b" is unknown.
    assert [(e.name, e.estimated_start) for e in line] == [("a", NOW), ("b", None)]


def test_the_running_experiments_cap_holds_experiments_back(session: Session) -> None:
    running = submitted(session, "running", 60, status="running")
    busy_pod(session, make_run(session, running, seed=1, status="running"),
             frees_in=HOUR, life=2 * HOUR)
    make_run(session, running, seed=2)
    next_up = submitted(session, "next", 20)
    make_run(session, next_up, seed=1)
    later = submitted(session, "later", 10)
    make_run(session, later, seed=1)
    capped = settings(max_running_experiments=2, max_pods=3)

    line = {e.name: e for e in queue(session, now=NOW, settings=capped)}

    assert (line["running"].held, line["next"].held) == (None, None)
    assert line["later"].held is not None and "CADDIE_MAX_RUNNING_EXPERIMENTS" in line["later"].held
    assert line["later"].estimated_start is None
    assert admitted(session, next_up, capped) and not admitted(session, later, capped)
    assert admitted(session, later, settings(max_running_experiments=None))


def test_pods_ahead_lets_higher_priority_and_earlier_experiments_go_first(
        session: Session) -> None:
    low = submitted(session, "low", 30)
    high = submitted(session, "high", 5, priority=9)
    low_pod = make_pod(session, make_run(session, low, seed=1, status="provisioning"),
                       status="requested")
    high_pod = make_pod(session, make_run(session, high, seed=1, status="provisioning"),
                        status="requested")
    cfg = settings(max_pods=1)

    # The later pod row of the higher-priority experiment is ahead; nothing is up yet.
    assert (pods_ahead(session, high_pod, cfg), pods_ahead(session, low_pod, cfg)) == (0, 1)

    up = submitted(session, "up", 1, priority=-5)
    busy_pod(session, make_run(session, up, seed=1, status="running"), frees_in=HOUR, life=HOUR)
    # A pod asked of the provider holds its place whatever its experiment's priority.
    assert (pods_ahead(session, high_pod, cfg), pods_ahead(session, low_pod, cfg)) == (1, 2)


def test_pods_ahead_treats_the_cap_as_full_for_a_held_experiment(session: Session) -> None:
    first = submitted(session, "first", 30)
    second = submitted(session, "second", 10)
    make_run(session, first, seed=1)
    pod = make_pod(session, make_run(session, second, seed=1, status="provisioning"),
                   status="requested")
    cfg = settings(max_pods=4, max_running_experiments=1)

    assert pods_ahead(session, pod, cfg) == 4
    assert pods_ahead(session, pod, settings(max_pods=4)) == 0


@pytest.mark.parametrize("value, expected", [("", None), ("2", 2)])
def test_the_cap_setting_reads_blank_as_none(monkeypatch: pytest.MonkeyPatch, value: str,
                                             expected: int | None) -> None:
    monkeypatch.setenv("CADDIE_MAX_RUNNING_EXPERIMENTS", value)
    assert Settings().max_running_experiments == expected


def test_get_queue(session: Session, client: TestClient) -> None:
    waiting = submitted(session, "waiting", 10, priority=3)
    make_run(session, waiting, seed=1)

    response = client.get("/api/queue")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    (entry,) = body["data"]
    assert (entry["position"], entry["experiment_id"], entry["priority"], entry["waiting_runs"],
            entry["held"]) == (1, waiting.id, 3, 1, None)
    assert entry["estimated_start"] is not None  # three free pods (the default cap)
