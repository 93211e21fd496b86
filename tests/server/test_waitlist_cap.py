"""The running-experiments cap: the line shown (`queue`) holds back exactly the experiments the
worker holds back (`admitted`), and experiments that rent no pods neither take nor wait for a
place."""

from sqlmodel import Session

from server.waitlist import admitted, queue
from tests.factories import make_run
from tests.server.test_waitlist import HOUR, NOW, busy_pod, settings, submitted


def test_a_running_experiment_with_nothing_waiting_still_takes_its_place(session: Session) -> None:
    running = submitted(session, "running", 60, status="running")
    busy_pod(session, make_run(session, running, seed=1, status="running"), frees_in=HOUR, life=HOUR)
    waiting = submitted(session, "waiting", 10)
    make_run(session, waiting, seed=1)
    capped = settings(max_running_experiments=1, max_pods=3)

    (entry,) = queue(session, now=NOW, settings=capped)

    assert not admitted(session, waiting, capped)
    assert entry.name == "waiting" and entry.held is not None and entry.estimated_start is None


def test_experiments_on_providers_that_rent_nothing_are_never_held(session: Session) -> None:
    local = submitted(session, "local", 60, provider="local")
    make_run(session, local, seed=1, status="running")
    ssh = submitted(session, "ssh", 50, provider="ssh")
    make_run(session, ssh, seed=1)
    rented = submitted(session, "rented", 10)
    make_run(session, rented, seed=1)
    capped = settings(max_running_experiments=1, max_pods=3)

    line = {e.name: e for e in queue(session, now=NOW, settings=capped)}

    assert (line["ssh"].held, line["rented"].held) == (None, None)
    assert admitted(session, ssh, capped) and admitted(session, rented, capped)
