"""The running-experiments cap: the line shown (`queue`) holds back exactly the experiments the
worker holds back (`admitted`), and experiments that rent no pods neither take nor wait for a
place."""

from datetime import timedelta

from sqlmodel import Session

from server.waitlist import admitted, queue
from tests.factories import QUEUE_NOW as NOW
from tests.factories import make_busy_pod, make_run, make_submitted, settings_with

HOUR = timedelta(hours=1)


def test_a_running_experiment_with_nothing_waiting_still_takes_its_place(session: Session) -> None:
    running = make_submitted(session, "running", 60, status="running", run_seeds=())
    make_busy_pod(session, make_run(session, running, seed=1, status="running"), frees_in=HOUR, life=HOUR)
    waiting = make_submitted(session, "waiting", 10)
    capped = settings_with(max_running_experiments=1, max_pods=3)

    (entry,) = queue(session, now=NOW, settings=capped)

    assert not admitted(session, waiting, capped)
    assert entry.name == "waiting" and entry.held is not None and entry.estimated_start is None


def test_experiments_on_providers_that_rent_nothing_are_never_held(session: Session) -> None:
    make_submitted(session, "local", 60, provider="local", run_status="running")
    ssh = make_submitted(session, "ssh", 50, provider="ssh")
    rented = make_submitted(session, "rented", 10)
    capped = settings_with(max_running_experiments=1, max_pods=3)

    line = {e.name: e for e in queue(session, now=NOW, settings=capped)}

    assert (line["ssh"].held, line["rented"].held) == (None, None)
    assert admitted(session, ssh, capped) and admitted(session, rented, capped)
