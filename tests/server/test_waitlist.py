"""The visible queue: order (priority, then submission), waiting runs, estimated starts, the
running-experiments cap, and the pod line the worker follows (pods_ahead)."""

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.config import Settings
from server.waitlist import admitted, pods_ahead, queue
from tests.factories import QUEUE_NOW as NOW
from tests.factories import make_busy_pod, make_pod, make_run, make_submitted, settings_with

HOUR = timedelta(hours=1)


def test_the_line_is_priority_then_submission_with_waiting_runs(session: Session) -> None:
    early = make_submitted(session, "early", 30)
    make_submitted(session, "urgent", 5, priority=5)
    make_submitted(session, "late", 10)
    make_submitted(session, "done", 60, status="finished", run_status="succeeded")
    started = make_run(session, early, seed=2, status="provisioning")
    make_pod(session, started, status="requested")  # in line, not yet asked of RunPod
    running = make_run(session, early, seed=3, status="running")
    make_busy_pod(session, running, frees_in=HOUR, life=2 * HOUR)

    line = queue(session, now=NOW, settings=settings_with(max_pods=3))

    assert [(e.position, e.name, e.waiting_runs) for e in line] == [
        (1, "urgent", 1), (2, "early", 2), (3, "late", 1)]
    assert all(e.held is None for e in line)


def test_estimated_starts_follow_pod_deadlines_and_typical_life(session: Session) -> None:
    holder = make_submitted(session, "holder", 90, status="running", run_seeds=())
    for seed, frees_in in ((1, HOUR), (2, 2 * HOUR)):
        make_busy_pod(session, make_run(session, holder, seed=seed, status="running"),
                      frees_in=frees_in, life=3 * HOUR)
    make_submitted(session, "first", 20, run_seeds=(1, 2))
    make_submitted(session, "second", 10)
    make_submitted(session, "local", 5, provider="local")

    line = {e.name: e for e in queue(session, now=NOW, settings=settings_with(max_pods=2))}

    # Slots free at +1h and +2h; "first" takes both, holding each for the typical 3 h.
    assert line["first"].estimated_start == NOW + HOUR
    assert line["second"].estimated_start == NOW + HOUR + 3 * HOUR
    local_start = line["local"].estimated_start
    assert local_start is not None and local_start >= NOW  # no cap: it starts now


def test_free_slots_start_now_and_unknown_lives_give_none(session: Session) -> None:
    make_submitted(session, "a", 20)
    make_submitted(session, "b", 10)

    line = queue(session, now=NOW, settings=settings_with(max_pods=1))

    # One free slot: "a" starts now; no pod has ever planned a life, so "b" is unknown.
    assert [(e.name, e.estimated_start) for e in line] == [("a", NOW), ("b", None)]


def test_the_running_experiments_cap_holds_experiments_back(session: Session) -> None:
    running = make_submitted(session, "running", 60, status="running", run_seeds=())
    make_busy_pod(session, make_run(session, running, seed=1, status="running"),
                  frees_in=HOUR, life=2 * HOUR)
    make_run(session, running, seed=2)
    next_up = make_submitted(session, "next", 20)
    later = make_submitted(session, "later", 10)
    capped = settings_with(max_running_experiments=2, max_pods=3)

    line = {e.name: e for e in queue(session, now=NOW, settings=capped)}

    assert (line["running"].held, line["next"].held) == (None, None)
    assert line["later"].held is not None and "CADDIE_MAX_RUNNING_EXPERIMENTS" in line["later"].held
    assert line["later"].estimated_start is None
    assert admitted(session, next_up, capped) and not admitted(session, later, capped)
    assert admitted(session, later, settings_with(max_running_experiments=None))


def test_pods_ahead_lets_higher_priority_and_earlier_experiments_go_first(
        session: Session) -> None:
    low = make_submitted(session, "low", 30, run_seeds=())
    high = make_submitted(session, "high", 5, priority=9, run_seeds=())
    low_pod = make_pod(session, make_run(session, low, seed=1, status="provisioning"),
                       status="requested")
    high_pod = make_pod(session, make_run(session, high, seed=1, status="provisioning"),
                        status="requested")
    cfg = settings_with(max_pods=1)

    # The later pod row of the higher-priority experiment is ahead; nothing is up yet.
    assert (pods_ahead(session, high_pod, cfg), pods_ahead(session, low_pod, cfg)) == (0, 1)

    up = make_submitted(session, "up", 1, priority=-5, run_seeds=())
    make_busy_pod(session, make_run(session, up, seed=1, status="running"), frees_in=HOUR, life=HOUR)
    # A pod asked of the provider holds its place whatever its experiment's priority.
    assert (pods_ahead(session, high_pod, cfg), pods_ahead(session, low_pod, cfg)) == (1, 2)


def test_pods_ahead_treats_the_cap_as_full_for_a_held_experiment(session: Session) -> None:
    make_submitted(session, "first", 30)
    second = make_submitted(session, "second", 10, run_seeds=())
    pod = make_pod(session, make_run(session, second, seed=1, status="provisioning"),
                   status="requested")
    cfg = settings_with(max_pods=4, max_running_experiments=1)

    assert pods_ahead(session, pod, cfg) == 4
    assert pods_ahead(session, pod, settings_with(max_pods=4)) == 0


@pytest.mark.parametrize("value, expected", [("", None), ("2", 2)])
def test_the_cap_setting_reads_blank_as_none(monkeypatch: pytest.MonkeyPatch, value: str,
                                             expected: int | None) -> None:
    monkeypatch.setenv("CADDIE_MAX_RUNNING_EXPERIMENTS", value)
    assert Settings().max_running_experiments == expected


def test_get_queue(session: Session, client: TestClient) -> None:
    waiting = make_submitted(session, "waiting", 10, priority=3)

    response = client.get("/api/queue")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    (entry,) = body["data"]
    assert (entry["position"], entry["experiment_id"], entry["priority"], entry["waiting_runs"],
            entry["held"]) == (1, waiting.id, 3, 1, None)
    assert entry["estimated_start"] is not None  # three free pods (the default cap)
