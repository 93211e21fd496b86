"""Webhook notices of safety stops and budgets: one per pod the reconciler ends, one per budget
hit per experiment (not one per poll), posted by the worker's task to a local receiver."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session

from server.config import Settings, get_settings
from server.dispatch import NOTIFY, get_producer
from server.experiments import cancel_run
from server.states import FINAL_RUN_STATUSES, RunStatus
from tests.factories import make_experiment, make_run
from tests.server.broker import queued_tasks
from tests.server.test_notify import Webhook
from tests.worker.harness import drive, new_run, read_run, running_past_its_deadline
from worker import reconciler
from worker.director import RunDirector

pytestmark = pytest.mark.sshd
FINAL = set(FINAL_RUN_STATUSES)


@pytest.fixture
def hook(runpod_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Webhook]:
    """A webhook receiver; notifications are queued on the filesystem broker of the test's data dir."""
    receiver = Webhook()
    monkeypatch.setenv("CADDIE_DATA_DIR", str(runpod_settings.data_dir))
    monkeypatch.setenv("CADDIE_REDIS_URL", "")
    monkeypatch.setenv("CADDIE_WEBHOOK_URL", receiver.url)
    get_settings.cache_clear()
    get_producer.cache_clear()
    yield receiver
    get_settings.cache_clear()
    get_producer.cache_clear()
    receiver.server.shutdown()


def queued(settings: Settings, event: str) -> list[dict[str, object]]:
    notes = [args[0] for name, args in queued_tasks(settings.data_dir) if name == NOTIFY]
    return [n for n in notes if n["event"] == event]  # type: ignore[index,misc]


def post_all(settings: Settings, event: str) -> None:
    """What a worker does with each queued notification."""
    from worker.tasks import send_notification

    for payload in queued(settings, event):
        send_notification.run(payload)


def test_a_stray_pod_ended_by_the_reconciler_is_announced_once(runpod_director: RunDirector, runpod,
                                                               runpod_settings: Settings, hook: Webhook) -> None:
    stray = runpod.add_pod("caddie-run-999")
    assert reconciler.end_unexpected_pods(runpod_director) == [stray]
    assert reconciler.end_unexpected_pods(runpod_director) == []  # gone: nothing to end, nothing to say
    post_all(runpod_settings, "pod.terminated")
    assert hook.bodies == [{
        "text": f"Caddie ended runpod pod {stray}, caddie-run-999 (RUNNING): no live run expects it",
        "event": "pod.terminated", "provider": "runpod", "external_id": stray,
        "pod": "caddie-run-999 (RUNNING)", "why": "no live run expects it"}]


def test_a_pod_past_its_deadline_is_announced_once_it_is_confirmed_gone(runpod_director: RunDirector, runpod,
                                                                       engine, runpod_settings: Settings,
                                                                       hook: Webhook) -> None:
    run_id, external_id = running_past_its_deadline(runpod_director, engine)
    runpod.faults["delete"] = ["500"]  # the first try fails: no notice until RunPod confirms
    reconciler.end_unexpected_pods(runpod_director)
    assert queued(runpod_settings, "pod.terminated") == []
    reconciler.end_unexpected_pods(runpod_director)
    reconciler.end_unexpected_pods(runpod_director)
    (note,) = queued(runpod_settings, "pod.terminated")
    assert note["external_id"] == external_id and note["why"] == "it is past its deadline"
    drive(runpod_director, run_id, until=FINAL)


def test_runs_waiting_on_a_budget_are_announced_once_per_experiment(runpod_director: RunDirector, runpod,
                                                                    engine, runpod_settings: Settings,
                                                                    hook: Webhook) -> None:
    runpod_director.settings = runpod_settings.model_copy(update={"budget_usd": 20.0})
    first = new_run(engine, provider="runpod", fake_mode="sleep")
    drive(runpod_director, first, until={RunStatus.running})
    with Session(engine, expire_on_commit=False) as session:  # two more seeds of one other experiment
        experiment = make_experiment(session, preset="tiny", provider="runpod")
        waiting = [make_run(session, experiment, seed=s).id for s in (8, 9)]
    for _ in range(4):  # polls of both runs, each still held back
        for run_id in waiting:
            runpod_director.advance(run_id)
    assert [read_run(engine, r).reason.startswith("waiting: a pod estimated") for r in waiting] == [True, True]
    post_all(runpod_settings, "budget.hit")
    (body,) = hook.bodies
    assert body["event"] == "budget.hit" and body["final"] is False
    assert body["experiment_id"] == experiment.id and body["run_id"] == waiting[0]
    assert str(body["text"]).startswith(f"Caddie run {waiting[0]} (experiment {experiment.id}) waits: "
                                        "a pod estimated at $12.73 would pass the budget (CADDIE_BUDGET_USD)")
    for run_id in (first, *waiting):
        with Session(engine) as session:
            cancel_run(session, run_id)
        drive(runpod_director, run_id, until=FINAL)


def test_runs_failed_by_a_budget_are_announced_once_per_experiment(runpod_director: RunDirector, runpod,
                                                                   engine, runpod_settings: Settings,
                                                                   hook: Webhook) -> None:
    runpod_director.settings = runpod_settings.model_copy(update={"experiment_budget_usd": 1.0})
    with Session(engine, expire_on_commit=False) as session:
        experiment = make_experiment(session, preset="tiny", provider="runpod")
        runs = [make_run(session, experiment, seed=s).id for s in (1, 2)]
    for run_id in runs:
        assert drive(runpod_director, run_id, until=FINAL).status == "failed"
    (note,) = queued(runpod_settings, "budget.hit")
    assert note["final"] is True and note["run_id"] == runs[0]
    assert "would pass the experiment's budget (CADDIE_EXPERIMENT_BUDGET_USD) of $1.00" in str(note["text"])
    assert len(queued(runpod_settings, "run.ended")) == 2  # each run's own end is still told
    assert runpod.live() == []


def test_nothing_is_sent_without_a_webhook(runpod_director: RunDirector, runpod, runpod_settings: Settings,
                                           monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CADDIE_DATA_DIR", str(runpod_settings.data_dir))
    monkeypatch.delenv("CADDIE_WEBHOOK_URL", raising=False)
    get_settings.cache_clear()
    try:
        runpod.add_pod("caddie-run-998")
        assert len(reconciler.end_unexpected_pods(runpod_director)) == 1
        assert queued_tasks(runpod_settings.data_dir) == []
    finally:
        get_settings.cache_clear()
