"""GET /queue: experiments waiting for pods, in the order they get them."""

from fastapi.testclient import TestClient
from sqlmodel import Session

from server import waitlist
from tests.factories import make_experiment, make_run
from tests.web.dom import cells, fetch


def test_waiting_experiments_in_line_order(client: TestClient, session: Session) -> None:
    early = make_experiment(session, name="early", seeds=[1, 2])
    for seed in (1, 2):
        make_run(session, early, seed=seed)
    urgent = make_experiment(session, name="urgent", author="bob", provider="runpod",
                             priority=5, seeds=[1])
    make_run(session, urgent, seed=1)
    running = make_experiment(session, name="started", seeds=[1], status="running")
    make_run(session, running, seed=1, status="running")

    page = fetch(client, "/queue")

    rows = page.find("table", class_="queue").find("tbody").find_all("tr")
    expected = waitlist.queue(session)
    assert [e.name for e in expected] == ["urgent", "early"]
    assert [row.attrs["data-experiment"] for row in rows] == [str(urgent.id), str(early.id)]
    position, name, author, provider, priority, _submitted, waiting, _start = cells(rows[0])
    assert (position, name, author, provider, priority, waiting) == (
        "1", "urgent", "bob", "runpod", "5", "1")
    assert cells(rows[1])[0::6] == ["2", "2"]
    assert rows[0].find("a").attrs["href"] == f"/experiments/{urgent.id}"
    assert page.find("a", href="/queue").attrs["aria-current"] == "page"


def test_an_empty_queue_says_so(client: TestClient) -> None:
    page = fetch(client, "/queue")

    assert page.find("p", class_="empty").text() == "Nothing is waiting for a pod."
