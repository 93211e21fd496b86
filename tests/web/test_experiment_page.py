"""GET /experiments and /experiments/{id}; cancelling an experiment from its page."""

import json
import statistics
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server import records
from server.communitylog import parse_log
from server.experiments import finalize_experiment
from server.models import Experiment
from server.runs import get_run
from tests.factories import make_experiment, make_pod, make_run, make_scored_run
from tests.fixture_files import record_log
from tests.web.dom import Element, cells, fetch, form_token, parse


def facts(page: Element, section_id: str, index: int = 0) -> dict[str, str]:
    """The <dt>/<dd> pairs of the section headed by `section_id` (its `index`th list)."""
    section = page.find("section", aria_labelledby=section_id)
    dl = section.find_all("dl")[index]
    terms = dl.find_all("dt")
    return {dt.text(): dd.text() for dt, dd in zip(terms, dl.find_all("dd"), strict=True)}


def test_spec_stats_and_seed_table(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, name="deeper", author="ada", preset="baseline",
                                 seeds=[1337, 42, 7],
                                 config={"num_layers": 11, "matrix_lr": 0.035}, status="running")
    runs = [make_scored_run(session, experiment, seed=1337, val_bpb=1.2211),
            make_scored_run(session, experiment, seed=42, val_bpb=1.2302, bytes_total=15_999_999),
            make_run(session, experiment, seed=7, status="running")]

    page = fetch(client, f"/experiments/{experiment.id}")

    assert page.find("h1").text() == "deeper running"
    spec = facts(page, "spec-heading")
    assert (spec["Author"], spec["Preset"], spec["Provider"], spec["Seeds"]) == (
        "ada", "baseline", "local", "1337, 42, 7")
    overrides = page.find("table", class_="overrides").find("tbody").find_all("tr")
    assert [cells(row) for row in overrides] == [["matrix_lr", "0.035"], ["num_layers", "11"]]
    stats = facts(page, "stats-heading")
    assert stats["Seeds succeeded"] == "2 of 3"
    assert stats["Mean val_bpb"] == f"{statistics.fmean([1.2211, 1.2302]):.5f}"
    assert stats["Standard deviation"] == f"{statistics.stdev([1.2211, 1.2302]):.5f}"
    assert (stats["Best seed"], stats["Worst seed"]) == ("1.22110", "1.23020")
    assert stats["Record"] == "decided once every seed has ended"
    rows = page.find("table", class_="runs").find("tbody").find_all("tr")
    assert [cells(row)[:6] for row in rows] == [
        ["1337", f"run {runs[0].id}", "succeeded", "1.22110", f"{1.2211 * 1.69:.5f}", "15,800,000"],
        ["42", f"run {runs[1].id}", "succeeded", "1.23020", f"{1.2302 * 1.69:.5f}", "15,999,999"],
        ["7", f"run {runs[2].id}", "running", "—", "—", "—"],
    ]
    assert [row.find("a").attrs["href"] for row in rows] == [f"/runs/{r.id}" for r in runs]
    form = page.find("form", class_="cancel")
    assert (form.attrs["method"], form.attrs["action"]) == (
        "post", f"/experiments/{experiment.id}/cancel")


def test_finished_experiment_shows_its_verdict_and_no_cancel(client: TestClient,
                                                             session: Session) -> None:
    experiment = make_experiment(session, name="plain", seeds=[1])
    make_scored_run(session, experiment, seed=1, val_bpb=1.25)
    finalize_experiment(session, experiment.id)

    page = fetch(client, f"/experiments/{experiment.id}")

    assert page.find("p", class_="overrides-none").text().startswith("None")
    stats = facts(page, "stats-heading")
    assert (stats["Mean val_bpb"], stats["Standard deviation"], stats["Record"]) == (
        "1.25000", "—", "not eligible")
    assert [li.text() for li in page.find("ul", class_="reasons").find_all("li")] == [
        "3 seeds needed, 1 succeeded"]
    assert page.find_all("form", class_="cancel") == []


def test_cancel_form_cancels_and_redirects(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, name="to stop", seeds=[1, 2])
    queued = make_run(session, experiment, seed=1)
    done = make_scored_run(session, experiment, seed=2, val_bpb=1.3)

    token = form_token(client, f"/experiments/{experiment.id}")

    response = client.post(f"/experiments/{experiment.id}/cancel", data={"csrf_token": token},
                           follow_redirects=False)

    assert response.status_code == 303
    assert response.headers["location"] == f"/experiments/{experiment.id}"
    session.expire_all()
    assert (get_run(session, queued.id).status, get_run(session, done.id).status) == (
        "cancelled", "succeeded")
    session.rollback()  # ends the read: on SQLite an open transaction holds the write lock
    page = fetch(client, response.headers["location"])
    assert page.find("h1").text() == "to stop finished"
    rows = page.find("table", class_="runs").find("tbody").find_all("tr")
    assert [cells(row)[2] for row in rows] == ["cancelled cancelled by user", "succeeded"]
    assert page.find_all("form", class_="cancel") == []


def test_cancelling_an_ended_experiment_is_a_409_page(client: TestClient,
                                                      session: Session) -> None:
    experiment = make_experiment(session, name="over", seeds=[1])
    make_scored_run(session, experiment, seed=1, val_bpb=1.3)
    finalize_experiment(session, experiment.id)

    token = form_token(client, "/submit")

    response = client.post(f"/experiments/{experiment.id}/cancel", data={"csrf_token": token})

    assert response.status_code == 409
    assert f"experiment {experiment.id} is already finished" in response.text


@pytest.mark.parametrize("token", ["", "forged.0000", None])
def test_cancel_without_the_form_token_is_refused(client: TestClient, session: Session,
                                                  token: str | None) -> None:
    experiment = make_experiment(session, name="keep", seeds=[1])
    run = make_run(session, experiment, seed=1)
    real = form_token(client, f"/experiments/{experiment.id}")
    data = {"csrf_token": token} if token is not None else {}
    if token == "forged.0000":
        client.cookies.set("caddie_csrf", "forged.0000")  # a cookie the server did not sign

    response = client.post(f"/experiments/{experiment.id}/cancel", data=data)

    assert response.status_code == 403
    assert "security token" in parse(response.text).find("ul", class_="problems").text()
    assert real and get_run(session, run.id).status == "queued"


def test_unknown_experiment_is_a_404_page(client: TestClient) -> None:
    page = fetch(client, "/experiments/999", status=404)
    assert page.find("h1").text() == "404 Not Found"
    assert page.find("ul", class_="problems").text() == "experiment 999 not found"
    assert fetch(client, "/experiments/0", status=400).find("ul", class_="problems").text() == (
        "experiment_id: Input should be greater than or equal to 1")


def make_listed(session: Session, name: str, status: str) -> Experiment:
    return make_experiment(session, name=name, status=status)


def test_experiments_list_newest_first_with_filter_and_pages(client: TestClient,
                                                             session: Session) -> None:
    for index, status in enumerate(["finished", "running", "queued", "running"]):
        make_listed(session, f"x{index}", status)

    page = fetch(client, "/experiments?per_page=3")
    rows = page.find("table", class_="experiments").find("tbody").find_all("tr")
    assert [cells(row)[0] for row in rows] == ["x3", "x2", "x1"]
    assert [cells(row)[3] for row in rows] == ["running", "queued", "running"]
    assert page.find("a", rel="next").attrs["href"] == "/experiments?page=2&per_page=3"
    assert [a.attrs["href"] for a in page.find_all("a", data_filter="status")] == [
        f"/experiments?status={s}&per_page=3" for s in ("queued", "running", "finished",
                                                        "cancelled")]

    running = fetch(client, "/experiments?status=running")
    rows = running.find("table", class_="experiments").find("tbody").find_all("tr")
    assert [cells(row)[0] for row in rows] == ["x3", "x1"]
    assert fetch(client, "/experiments?status=lost", status=400).find(
        "ul", class_="problems").text().startswith("status: ")


def test_cost_of_the_experiment_and_of_each_seed(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, name="rented", provider="runpod", seeds=[1, 2])
    start = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    for seed, minutes in ((1, 30), (2, 15)):
        run = make_scored_run(session, experiment, seed=seed, val_bpb=1.2)
        make_pod(session, run, cost_per_hour=20.0, created_at=start,
                 terminated_at=start + timedelta(minutes=minutes))
    make_run(session, experiment, seed=3, status="queued")

    page = fetch(client, f"/experiments/{experiment.id}")

    assert facts(page, "spec-heading")["Cost so far"] == "$15.00"
    rows = page.find("table", class_="runs").find("tbody").find_all("tr")
    assert [row.find("td", class_="cost").text() for row in rows] == ["$10.00", "$5.00", "—"]


def import_tree(root: Path) -> Path:
    """Two records folders in the challenge's layout: one whose submission.json states values
    its logs contradict, one whose only log has no final score."""
    optimistic = root / "track_10min_16mb" / "2026-04-12_Optimistic"
    optimistic.mkdir(parents=True)
    (optimistic / "train_seed42.log").write_bytes(record_log("sp4096_seed42.log"))
    (optimistic / "submission.json").write_text(json.dumps({
        "name": "Optimistic", "author": "Hal", "date": "2026-04-12", "val_bpb": 1.0731,
        "bytes_total": 15_000_000, "seeds": [42, 7]}))
    (optimistic / "train_gpt.py").write_text("print('train')\n")
    unscored = root / "track_10min_16mb" / "2026-04-13_Unscored"
    unscored.mkdir(parents=True)
    (unscored / "train.log").write_bytes(record_log("sp4096_seed42.log").split(b"\nfinal_int6_roundtrip ")[0])
    (unscored / "submission.json").write_text(json.dumps({"name": "Unscored", "author": "Ivy"}))
    (unscored / "train_gpt.py").write_text("print('train')\n")
    return root


def test_an_import_explains_itself(client: TestClient, session: Session, tmp_path: Path) -> None:
    results = {r.key.split("/")[-1]: r for r in records.import_records(
        session, import_tree(tmp_path / "records"), reference_bpb=2.0)}
    log = parse_log(record_log("sp4096_seed42.log"))

    page = fetch(client, f"/experiments/{results['2026-04-12_Optimistic'].experiment_id}")

    spec = facts(page, "spec-heading")
    assert spec["Source"].startswith("imported from the challenge's records folder ")
    assert spec["Source"].endswith("records/track_10min_16mb/2026-04-12_Optimistic")
    assert spec["Record date"] == "2026-04-12"
    # Settings of a run on our own pods mean nothing for an import.
    assert not {"Provider", "Hardware", "Pods", "Failed seeds", "Priority", "Budget",
                "Cost so far"} & set(spec)
    section = page.find("section", aria_labelledby="import-heading")
    verdicts = facts(page, "import-heading")
    assert set(verdicts) == {"The challenge", "Caddie"}
    assert verdicts["Caddie"].startswith(("record-eligible", "not eligible"))
    stated = {cells(row)[0]: cells(row)[1:] for row in
              section.find("table", class_="stated").find("tbody").find_all("tr")}
    assert stated["mean val_bpb"] == ["1.0731", f"{log['score']['val_bpb']:.8g}"]
    assert stated["largest bytes total"] == ["15,000,000", f"{log['bytes_total']:,}"]
    assert stated["seeds"] == ["42, 7", "42"]
    lines = [li.text() for li in section.find("ul", class_="disagreements").find_all("li")]
    assert any(line.startswith(f"bytes_total: the folder states 15,000,000, the logs show "
                               f"{log['bytes_total']:,}") for line in lines), lines
    assert "seeds: the folder states 7, 42, the logs show 42 (no scored log for seed(s) [7])" in lines
    assert not [line for line in lines if "None" in line]

    unscored = fetch(client, f"/experiments/{results['2026-04-13_Unscored'].experiment_id}")
    lines = [li.text() for li in unscored.find("section", aria_labelledby="import-heading")
             .find("ul", class_="disagreements").find_all("li")]
    assert lines == ["train logs: no train log with a final score"]


def test_an_experiment_run_here_has_no_import_section(client: TestClient,
                                                      session: Session) -> None:
    experiment = make_experiment(session, name="ours", seeds=[1])

    page = fetch(client, f"/experiments/{experiment.id}")

    assert page.find_all("section", aria_labelledby="import-heading") == []
    assert "Provider" in facts(page, "spec-heading")


def test_the_test_names_its_reference_and_the_record_test_beside_it(
    client: TestClient, session: Session
) -> None:
    standing = make_experiment(session, name="SP8192 QK5", seeds=[1])
    experiment = make_experiment(session, name="mine", seeds=[1], status="finished")
    record = {"kind": "record", "experiment_id": standing.id, "name": "SP8192 QK5",
              "val_bpb": 1.0856, "date": "2026-04-06",
              "source": "the standing record of track_10min_16mb"}
    experiment.stats = {
        "test": "one-sided one-sample t-test", "units": "nats_per_token", "delta": -0.5,
        "p": 0.0001, "reference": {"kind": "value", "val_bpb": 1.5,
                                   "source": "chosen at submission"},
        "record_test": {"units": "nats_per_token", "delta": -0.0051, "p": 0.2,
                        "reference": record}}
    session.add(experiment)
    session.commit()

    test = facts(fetch(client, f"/experiments/{experiment.id}"), "stats-heading", index=1)

    assert test["Against"].startswith("val_bpb 1.50000 (chosen at submission)")
    assert test["Record test"].startswith(
        "p 0.2 against SP8192 QK5, val_bpb 1.08560, 2026-04-06 (the standing record of "
        "track_10min_16mb)")
