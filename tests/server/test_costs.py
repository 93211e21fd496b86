"""What pods cost: the price a pod carries, and the same dollars in Python and in SQL."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.costs import experiment_costs, price_of, run_cost, spend
from server.models import Run, utcnow
from tests.factories import make_experiment, make_pod, make_run

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_the_pods_own_price_wins_over_the_one_its_run_kept(session: Session) -> None:
    experiment = make_experiment(session)
    kept = {"worker": {"pod": {"cost_per_hour": 2.5}}}
    run = make_run(session, experiment, seed=1, status="succeeded", results=kept)
    pod = make_pod(session, run, cost_per_hour=3.0)
    older = make_pod(session, None, cost_per_hour=None)

    assert price_of(run, pod) == 3.0
    assert price_of(run, older) == 2.5
    assert price_of(run) == 2.5
    assert price_of(None, older) is None


def test_sql_costs_match_spend_for_every_kind_of_pod(session: Session) -> None:
    now = T0 + 2 * HOUR
    paid = make_experiment(session, name="paid")
    first = make_run(session, paid, seed=1, status="succeeded")
    make_pod(session, first, cost_per_hour=4.0, created_at=T0, terminated_at=T0 + 1.5 * HOUR)
    legacy = make_run(session, paid, seed=2, status="running",
                      results={"worker": {"pod": {"cost_per_hour": 2.0}}})
    make_pod(session, legacy, status="busy", created_at=T0 + HOUR, updated_at=T0 + HOUR)
    unpriced = make_run(session, paid, seed=3, status="succeeded")
    make_pod(session, unpriced, created_at=T0, terminated_at=T0 + HOUR)
    make_pod(session, None, cost_per_hour=1.0, experiment_id=paid.id, created_at=T0,
             terminated_at=T0 + 3 * HOUR)
    free = make_experiment(session, name="ssh only")
    make_pod(session, make_run(session, free, seed=1), created_at=T0, updated_at=T0 + HOUR)
    make_experiment(session, name="no pods")

    costs = experiment_costs(now)
    in_sql = dict(session.exec(select(costs.c.experiment_id, costs.c.cost_usd)).all())

    # 4 $/h for 1.5 h, 2 $/h for 1 h (live until now), nothing, 1 $/h for 3 h (shared).
    assert spend(session, experiment_id=paid.id, now=now).spent == pytest.approx(11.0)
    assert in_sql[paid.id] == pytest.approx(11.0)
    assert in_sql[free.id] is None  # pods, but none with a price
    assert set(in_sql) == {paid.id, free.id}
    assert run_cost(session, session.get(Run, legacy.id), now) == pytest.approx(2.0)
    assert run_cost(session, session.get(Run, unpriced.id), now) is None


def test_the_api_shows_what_runs_and_experiments_cost(client: TestClient,
                                                      session: Session) -> None:
    experiment = make_experiment(session)
    ended = make_run(session, experiment, seed=1, status="succeeded")
    make_pod(session, ended, cost_per_hour=21.5, created_at=T0, terminated_at=T0 + HOUR / 2)
    free = make_run(session, experiment, seed=2, status="succeeded")
    make_pod(session, free, created_at=T0, terminated_at=T0 + HOUR)
    live = make_run(session, experiment, seed=3, status="running")
    started = utcnow() - HOUR / 4
    make_pod(session, live, status="busy", cost_per_hour=20.0, created_at=started)

    body = client.get(f"/api/experiments/{experiment.id}").json()
    run = client.get(f"/api/runs/{live.id}").json()

    costs = {r["id"]: r["cost_usd"] for r in body["runs"]}
    assert costs[ended.id] == pytest.approx(10.75)
    assert costs[free.id] is None
    # A live pod is billed up to now: a quarter hour and the few ms since.
    assert 5.0 <= costs[live.id] < 5.1
    assert 5.0 <= run["cost_usd"] < 5.1
    assert 15.75 <= body["cost_usd"] < 15.85
    unpriced = make_experiment(session, name="local only")
    assert client.get(f"/api/experiments/{unpriced.id}").json()["cost_usd"] is None
