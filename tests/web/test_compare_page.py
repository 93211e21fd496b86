"""GET /compare?a=&b= and its JSON twin /api/compare: two experiments and Welch's test;
the experiment page's per-seed plot and its link to compare."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session

from server.models import Experiment
from server.statistics import welch_test
from tests.factories import (
    make_experiment,
    make_finished_experiment,
    make_log,
    make_run,
    make_scored_run,
)
from tests.web.dom import fetch

A_SCORES = [1.2001, 1.2012, 1.1995]
B_SCORES = [1.2301, 1.2322, 1.2289, 1.2310]


def test_api_compare_runs_welchs_test(client: TestClient, session: Session) -> None:
    a = make_finished_experiment(session, A_SCORES, name="better")
    b = make_finished_experiment(session, B_SCORES, name="older")

    body = client.get(f"/api/compare?a={a.id}&b={b.id}").json()

    expected = welch_test(A_SCORES, B_SCORES)
    assert body["a"]["experiment"]["name"] == "better"
    assert body["a"]["scores"] == [[1, 1.2001], [2, 1.2012], [3, 1.1995]]
    assert [s for _, s in body["b"]["scores"]] == B_SCORES
    assert body["welch"]["t"] == pytest.approx(expected.t)
    assert body["welch"]["p"] == pytest.approx(expected.p)
    assert body["welch"]["df"] == pytest.approx(expected.df)
    assert body["welch"]["significant"] is True and body["welch"]["test"] == expected.test


def test_api_compare_errors(client: TestClient, session: Session) -> None:
    a = make_finished_experiment(session, A_SCORES, name="one")

    assert client.get(f"/api/compare?a={a.id}&b=999").status_code == 404
    response = client.get(f"/api/compare?a={a.id}", headers={"accept": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "b"]


def test_compare_page_shows_both_sides_and_the_test(client: TestClient,
                                                    session: Session) -> None:
    a = make_finished_experiment(session, A_SCORES, name="better")
    b = make_finished_experiment(session, B_SCORES, name="older")

    page = fetch(client, f"/compare?a={a.id}&b={b.id}")

    expected = welch_test(A_SCORES, B_SCORES)
    heads = [th.text() for th in page.find("table", class_="compare").find("thead").find_all("th")]
    assert heads[1:] == [f"#{a.id} better", f"#{b.id} older"]
    means = page.find("tr", class_="row-mean").find_all("td")
    assert [td.text() for td in means] == [f"{expected.mean:.5f}", f"{expected.reference_mean:.5f}"]
    assert page.find("h2", id="welch-heading").text() == "One-sided Welch's t-test"
    assert page.find("dd", class_="p").text() == f"{expected.p:.4g}"
    assert page.find("dd", class_="t").text() == f"{expected.t:.4f}"
    assert "A is better" in page.find("dd", class_="verdict").text()
    swapped = fetch(client, f"/compare?a={b.id}&b={a.id}")
    assert "not shown" in swapped.find("dd", class_="verdict").text()


def test_compare_with_too_few_seeds_says_why(client: TestClient, session: Session) -> None:
    a = make_finished_experiment(session, [1.2], name="single")
    b = make_finished_experiment(session, B_SCORES, name="older")

    page = fetch(client, f"/compare?a={a.id}&b={b.id}")

    assert page.find("dd", class_="p").text() == "—"
    assert "at least 2 seeds" in page.find("p", class_="note").text()


def test_experiment_page_plots_seeds_with_their_mean(client: TestClient,
                                                     session: Session) -> None:
    experiment = make_experiment(session, seeds=[11, 22, 33])
    for seed, score in zip((11, 22), (1.21, 1.23), strict=True):
        make_scored_run(session, experiment, seed=seed, val_bpb=score)
    make_run(session, experiment, seed=33, status="running")

    page = fetch(client, f"/experiments/{experiment.id}")

    plot = page.find("svg", class_="seed-plot")
    dots = [d for d in plot.find_all("circle") if "data-seed" in d.attrs]  # not the legend's
    assert [(d.attrs["data-seed"], float(d.attrs["data-score"])) for d in dots] == [
        ("11", 1.21), ("22", 1.23)]
    (mean,) = [line for line in plot.find_all("line", class_="mean") if "data-mean" in line.attrs]
    assert float(mean.attrs["data-mean"]) == pytest.approx(1.22)
    # SVG y grows downwards: the lower (better) score is drawn lower, at the larger y.
    assert float(dots[0].attrs["cy"]) > float(dots[1].attrs["cy"])
    form = page.find("form", class_="compare")
    assert (form.attrs["action"], form.find("input", name="a").attrs["value"]) == (
        "/compare", str(experiment.id))


def logged(session: Session, experiment: Experiment, seed: int, *, start: float, variant: str = "") -> None:
    """A scored run whose stored log has three train points, two val points and a final line."""
    run = make_scored_run(session, experiment, seed=seed, val_bpb=start / 2, variant=variant)
    lines = [f"step:{step}/30 train_loss:{start - step / 100:.4f} train_time:{step}ms step_avg:1.00ms"
             for step in (10, 20, 30)]
    lines[1:1] = [f"step:10/30 val_loss:{start - 0.05:.4f} val_bpb:{(start - 0.05) / 2:.4f} train_time:10ms"]
    lines += [f"step:30/30 val_loss:{start - 0.2:.4f} val_bpb:{(start - 0.2) / 2:.4f} train_time:30ms",
              f"final_int8_zlib_roundtrip_exact val_loss:{start - 0.19:.8f} val_bpb:{(start - 0.19) / 2:.8f}"]
    make_log(session, run, ["\n".join(lines) + "\n"])


def test_compare_without_parameters_offers_a_list_to_pick_from(client: TestClient, session: Session) -> None:
    a = make_finished_experiment(session, A_SCORES, name="better")
    b = make_finished_experiment(session, B_SCORES, name="older")

    page = fetch(client, "/compare")  # was "400 a: Field required"

    form = page.find("form", class_="compare-pick")
    assert (form.attrs["action"], form.attrs["method"]) == ("/compare", "get")
    boxes = form.find_all("input", type="checkbox")
    assert sorted(box.attrs["value"] for box in boxes) == sorted([str(a.id), str(b.id)])
    assert all(box.attrs["name"] == "ids" for box in boxes)
    assert page.find_all("p", id="compare-problem") == []
    one = fetch(client, f"/compare?ids={a.id}")
    assert one.find("p", id="compare-problem").text() == "Choose at least two experiments."
    assert [b.attrs["value"] for b in one.find_all("input", type="checkbox") if "checked" in b.attrs] == [str(a.id)]


def test_picked_experiments_share_one_chart_and_show_what_differs(client: TestClient, session: Session) -> None:
    wide = make_experiment(session, name="wide", preset="tiny", seeds=[1, 2], config={"mlp_mult": 3})
    deep = make_experiment(session, name="deep", preset="tiny", seeds=[1], config={"num_layers": 3})
    base = make_experiment(session, name="base", preset="baseline", seeds=[1])
    for experiment, seeds in ((wide, (1, 2)), (deep, (1,)), (base, (1,))):
        for seed in seeds:
            logged(session, experiment, seed, start=3.0 + seed / 10)

    page = fetch(client, f"/compare?ids={wide.id}&ids={deep.id}&ids={base.id}")

    loss = page.find("figure", data_overlay="loss").find("svg")
    runs = loss.find_all("g", class_="run")
    assert [g.attrs["data-label"] for g in runs] == [f"#{wide.id} seed 1", f"#{wide.id} seed 2",
                                                     f"#{deep.id} seed 1", f"#{base.id} seed 1"]
    lines = runs[0].find_all("polyline")
    assert [(p.attrs["data-key"], p.attrs["data-count"]) for p in lines] == [("train", "3"), ("val", "2")]
    (final,) = runs[0].find_all("circle")
    assert float(final.attrs["data-final"]) == pytest.approx(3.1 - 0.19)
    bpb = page.find("figure", data_overlay="bpb").find("svg")
    assert bpb.attrs["data-series"] == "4"
    diff = {row.attrs["data-setting"]: [td.text() for td in row.find_all("td")]
            for row in page.find("table", class_="config-diff").find("tbody").find_all("tr")}
    assert diff["preset"] == ["tiny", "tiny", "baseline"]
    assert diff["mlp_mult"][:2] == ["3", "2"] and diff["num_layers"][:2] == ["2", "3"]
    assert "seed" not in diff and "name" not in diff
    assert page.find_all("h2", id="welch-heading") == []  # a test between two only


def test_an_experiment_page_overlays_its_seeds_and_arms(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, seeds=[1, 2], variants=[{"name": "mlp3", "config": {"mlp_mult": 3}}])
    for seed in (1, 2):
        logged(session, experiment, seed, start=3.0 + seed / 10)
        logged(session, experiment, seed, start=2.9 + seed / 10, variant="mlp3")

    page = fetch(client, f"/experiments/{experiment.id}")

    runs = page.find("figure", data_overlay="loss").find_all("g", class_="run")
    assert sorted(g.attrs["data-label"] for g in runs) == [
        "control · seed 1", "control · seed 2", "mlp3 · seed 1", "mlp3 · seed 2"]
    colours = {g.find("polyline", data_key="train").attrs["stroke"] for g in runs}
    assert len(colours) == 4  # one colour per run
