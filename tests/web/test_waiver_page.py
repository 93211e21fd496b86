"""The systems-only waiver on the pages: its verdict on the experiment page and the badge's
tooltip, and the submit form's field with the server's refusal under it."""

from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.experiments import finalize_experiment
from server.models import Experiment
from tests.factories import make_experiment, make_scored_run
from tests.web.dom import Element, fetch, form_token, parse


def finished(session: Session, *, steps: int, **fields: object) -> Experiment:
    experiment = make_experiment(session, seeds=[1, 2, 3], reference_bpb=None, **fields)
    for seed, score in ((1, 1.2240), (2, 1.2250), (3, 1.2245)):
        make_scored_run(session, experiment, seed=seed, val_bpb=score, steps=steps)
    assert finalize_experiment(session, experiment.id) is True
    session.expire_all()
    done = session.get(Experiment, experiment.id)
    assert done is not None
    session.commit()
    return done


def facts(page: Element, class_: str) -> dict[str, str]:
    dl = page.find("dl", class_=class_)
    return {dt.text(): dd.text() for dt, dd in zip(dl.find_all("dt"), dl.find_all("dd"), strict=True)}


def test_the_experiment_page_shows_the_waiver(client: TestClient, session: Session) -> None:
    named = finished(session, steps=10_000, name="the record")
    faster = finished(session, steps=11_000, name="compiled", systems_only_of=named.id,
                      config={"val_loss_every": 0})

    page = fetch(client, f"/experiments/{faster.id}")

    shown = facts(page, "waiver")
    assert shown["Of"] == f"the record (experiment {named.id})"
    assert page.find("dd", class_="waiver-of").find("a").attrs["href"] == f"/experiments/{named.id}"
    assert shown["0.005-nat test"].startswith("waived")
    assert shown["ML unchanged"].startswith("verified")
    assert shown["Step time"] == "54.45 ms vs 59.9 ms (must be lower)"
    badge = page.find("section", aria_labelledby="stats-heading").find("span", class_="badge")
    assert badge.text() == "record-eligible (waived)"
    assert "systems-only change of the record" in badge.attrs["title"]
    spec = page.find("dd", class_="systems-only-of")
    assert spec.find("a").attrs["href"] == f"/experiments/{named.id}"
    listed = [b for b in fetch(client, "/experiments").find_all("span", class_="badge")
              if b.text() == "record-eligible (waived)"]
    assert len(listed) == 1 and listed[0].attrs["title"] == badge.attrs["title"]


def test_the_leaderboard_badge_says_why(client: TestClient, session: Session) -> None:
    named = finished(session, steps=10_000, name="the record")
    faster = finished(session, steps=11_000, name="compiled", systems_only_of=named.id)

    page = fetch(client, "/")

    def badge(experiment: Experiment) -> Element:
        entry = page.find("tbody", data_experiment=str(experiment.id))
        return entry.find("td", class_="record").find("span", class_="badge")

    assert badge(faster).attrs["title"].startswith("Every rule holds; systems-only change of")
    assert badge(faster).text() == "record-eligible (waived)"
    assert badge(named).attrs["title"] == "Every rule holds"


def test_the_submit_form_refuses_an_unfinished_experiment_under_the_field(
        client: TestClient, session: Session) -> None:
    running = make_experiment(session, status="running")
    form = {"csrf_token": form_token(client, "/submit"), "name": "compiled", "author": "ada",
            "preset": "tiny", "seeds": "1, 2, 3", "provider": "local",
            "systems_only_of": str(running.id)}

    response = client.post("/submit", data=form)

    assert response.status_code == 422
    error = parse(response.text).find("div", data_field="systems_only_of").find("p", class_="field-error")
    assert error.text() == f"experiment {running.id} is running; a systems-only change is judged " \
                           "against a finished experiment with a score"
    assert session.exec(select(Experiment).where(Experiment.name == "compiled")).first() is None
