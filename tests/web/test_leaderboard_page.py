"""GET /: rows, numbers, seeds, sorting, filters and pages of the leaderboard."""

import statistics
from pathlib import Path

from fastapi.testclient import TestClient
from sqlmodel import Session

from server import presets, records
from server.experiments import finalize_experiment
from server.models import Experiment
from server.tracks import NON_RECORD_TRACK, RECORD_TRACK
from tests.factories import (
    LOSS_PER_BPB,
    make_experiment,
    make_finished_experiment,
    make_rerun,
    make_run,
    make_scored_run,
)
from tests.web.dom import Element, cells, fetch
from tests.web.test_experiment_page import import_tree


def entries(page: Element) -> list[Element]:
    return page.find_all("tbody", class_="entry")


def names(page: Element) -> list[str]:
    return [entry.find("a", href=f"/experiments/{entry.attrs['data-experiment']}").text()
            for entry in entries(page)]


def main_row(entry: Element) -> Element:
    return entry.find_all("tr", children_only=True)[0]


def test_rows_are_ranked_with_their_numbers(client: TestClient, session: Session) -> None:
    middle = make_finished_experiment(session, [1.22, 1.23, 1.24], name="middle")
    best = make_finished_experiment(session, [1.101, 1.12, 1.11], name="best", author="grace")
    unscored = make_experiment(session, name="unscored", seeds=[5])
    make_run(session, unscored, seed=5, status="failed", reason="trainer exited with code 1")
    finalize_experiment(session, unscored.id)
    running = make_experiment(session, name="still running", seeds=[1])
    make_run(session, running, seed=1, status="running")

    assert names(fetch(client, "/")) == ["best", "middle"]  # no succeeded seed: off the board
    page = fetch(client, "/?failed=1")

    assert names(page) == ["best", "middle", "unscored"]
    assert [e.attrs["data-experiment"] for e in entries(page)] == [
        str(best.id), str(middle.id), str(unscored.id)]
    (rank, name, author, _date, mean, delta, p, seeds, max_bytes, train, evaluation, cost,
     record, rerun) = cells(main_row(entries(page)[0]))
    scores = [1.101, 1.12, 1.11]
    assert rank == "1"
    assert name == "best baseline"
    assert author == "grace"
    assert mean == f"{statistics.fmean(scores):.5f} ± {statistics.stdev(scores):.5f}"
    # The factory's reference is 2.0 bpb: Δ = (mean − 2.0) · ln 2 · bytes per token, in nats
    # per token (the factory's val_loss is LOSS_PER_BPB × val_bpb).
    assert delta == (f"{(statistics.fmean(scores) - 2.0) * LOSS_PER_BPB:+.4f} nats/token "
                     "vs 2.0000 bpb (chosen at submission)")
    assert float(p) < 0.01
    assert seeds == "3/3"
    assert max_bytes == "15,800,000 200,000 to spare"
    assert (train, evaluation, cost, record) == ("599.0 s", "120.0 s", "—",
                                                 "Caddie: record-eligible")
    assert rerun == "—"  # never re-run
    assert cells(main_row(entries(page)[2]))[0] == "—"  # no score, no rank
    assert cells(main_row(entries(page)[2]))[4] == "—"


def test_badge_title_and_details_list_the_failed_rules(client: TestClient,
                                                       session: Session) -> None:
    experiment = make_experiment(session, name="mixed", seeds=[7, 8, 9])
    runs = [
        make_scored_run(session, experiment, seed=7, val_bpb=1.21, bytes_total=16_000_250),
        make_scored_run(session, experiment, seed=8, val_bpb=1.23, train_time_s=612.5,
                        eligible=False, reasons=["train time 612.5 s > 600 s"]),
        make_run(session, experiment, seed=9, status="failed", reason="pod lost"),
    ]
    finalize_experiment(session, experiment.id)

    (entry,) = entries(fetch(client, "/"))

    badge = entry.find("span", class_="badge")
    assert badge.text() == "not eligible"
    assert badge.attrs["title"].split("\n") == [
        "3 seeds needed, 2 succeeded", "seed 8: train time 612.5 s > 600 s",
        "seed 9: failed: pod lost"]
    headroom = entry.find("span", class_="headroom")
    assert (headroom.text(), headroom.classes()) == ("250 over", ["headroom", "over"])
    details = entry.find("details")
    assert details.find("summary").text() == "3 seeds, 3 failed rules"
    assert [li.text() for li in details.find("ul", class_="reasons").find_all("li")] == (
        badge.attrs["title"].split("\n"))
    seed_rows = details.find("table", class_="seeds").find("tbody").find_all("tr")
    assert [cells(row) for row in seed_rows] == [
        ["7", "succeeded", "1.21000", f"{1.21 * 1.69:.5f}", "16,000,250", "599.0 s", "120.0 s", "—",
         "8× NVIDIA H100 80GB HBM3"],
        ["8", "succeeded", "1.23000", f"{1.23 * 1.69:.5f}", "15,800,000", "612.5 s", "120.0 s", "—",
         "8× NVIDIA H100 80GB HBM3"],
        ["9", "failed", "—", "—", "—", "—", "—", "—", "—"],
    ]
    assert [row.find("a").attrs["href"] for row in seed_rows] == [f"/runs/{r.id}" for r in runs]


def test_sort_links_and_sorted_rows(client: TestClient, session: Session) -> None:
    make_finished_experiment(session, [1.30, 1.30, 1.30], name="small",
                             run_fields={"bytes_total": 12_000_000})
    make_finished_experiment(session, [1.10, 1.10, 1.10], name="big",
                             run_fields={"bytes_total": 15_990_000})
    make_finished_experiment(session, [1.20, 1.20, 1.20], name="mid",
                             run_fields={"bytes_total": 14_000_000})
    unscored = make_experiment(session, name="crashed", seeds=[1])
    make_run(session, unscored, seed=1, status="failed", reason="trainer exited with code 1")
    finalize_experiment(session, unscored.id)

    page = fetch(client, "/?failed=1")
    board_head = page.find("table", class_="board").find("thead", children_only=True)
    headers = {a.attrs["data-sort"]: a for a in board_head.find_all("a")}
    assert {key: a.attrs["href"] for key, a in headers.items()} == {
        "rank": "/?sort=-rank&failed=1", "name": "/?sort=name&failed=1",
        "author": "/?sort=author&failed=1", "date": "/?sort=date&failed=1",
        "delta": "/?sort=delta&failed=1", "p": "/?sort=p&failed=1",
        "seeds": "/?sort=seeds&failed=1", "bytes": "/?sort=bytes&failed=1",
        "train": "/?sort=train&failed=1", "eval": "/?sort=eval&failed=1",
        "cost": "/?sort=cost&failed=1"}
    assert headers["rank"].parent.attrs["aria-sort"] == "ascending"
    assert names(page) == ["big", "mid", "small", "crashed"]

    # Entries without the sorted value (no score, no bytes) stay last either way.
    assert names(fetch(client, "/?sort=-rank&failed=1")) == ["small", "mid", "big", "crashed"]
    assert names(fetch(client, "/?sort=name&failed=1")) == ["big", "crashed", "mid", "small"]
    assert names(fetch(client, "/?sort=-date&failed=1")) == ["crashed", "mid", "big", "small"]
    by_bytes = fetch(client, "/?sort=bytes&failed=1")
    assert names(by_bytes) == ["small", "mid", "big", "crashed"]
    # Ranks belong to the entries, not to the positions of this sort.
    assert [cells(main_row(e))[0] for e in entries(by_bytes)] == ["3", "2", "1", "—"]
    bytes_header = by_bytes.find("a", data_sort="bytes")
    assert bytes_header.attrs["href"] == "/?sort=-bytes&failed=1"
    assert bytes_header.text() == "Max bytes ▲"
    assert bytes_header.parent.attrs["aria-sort"] == "ascending"
    assert "aria-sort" not in by_bytes.find("a", data_sort="rank").parent.attrs
    assert names(fetch(client, "/?sort=-bytes&failed=1")) == ["big", "mid", "small", "crashed"]


def test_filters_by_link_and_keep_the_sort(client: TestClient, session: Session) -> None:
    make_finished_experiment(session, [1.2, 1.21, 1.19], name="eligible")
    make_finished_experiment(session, [1.1, 1.1], name="two seeds", author="bob")
    make_finished_experiment(session, [1.5, 1.51, 1.49], name="tiny one", preset="tiny")

    page = fetch(client, "/?sort=name")
    filters = page.find("nav", class_="filters")
    assert filters.find("a", data_filter="eligible").attrs["href"] == "/?sort=name&eligible=1"
    assert [a.attrs["href"] for a in filters.find_all("a", data_filter="preset")] == [
        f"/?sort=name&preset={name}" for name in presets.preset_names()]
    assert {"baseline", "tiny"} <= set(presets.preset_names())

    eligible = fetch(client, "/?sort=name&eligible=1")
    assert names(eligible) == ["eligible"]  # the tiny preset is on the non-record track
    assert eligible.find("a", data_sort="name").attrs["href"] == "/?sort=-name&eligible=1"
    assert eligible.find("a", data_filter="eligible").attrs["href"] == "/?sort=name"
    assert names(fetch(client, "/?preset=tiny")) == []
    assert names(fetch(client, f"/?track={NON_RECORD_TRACK}&preset=tiny")) == ["tiny one"]
    by_bob = fetch(client, "/?author=bob")
    assert names(by_bob) == ["two seeds"]
    assert by_bob.find("a", data_filter="author").attrs["href"] == "/"
    assert names(fetch(client, "/?preset=tiny&author=bob")) == []


def test_pages_by_link(client: TestClient, session: Session) -> None:
    for index in range(5):
        make_finished_experiment(session, [1.0 + index / 10] * 3, name=f"e{index}")

    first = fetch(client, "/?per_page=2")
    assert names(first) == ["e0", "e1"]
    assert first.find("a", rel="next").attrs["href"] == "/?page=2&per_page=2"
    assert first.find_all("a", rel="prev") == []
    assert first.find("nav", class_="pager").find("span").text() == "Page 1 of 3"

    second = fetch(client, "/?page=2&per_page=2")
    assert names(second) == ["e2", "e3"]
    assert [cells(main_row(e))[0] for e in entries(second)] == ["3", "4"]
    assert second.find("a", rel="prev").attrs["href"] == "/?per_page=2"

    last = fetch(client, "/?page=3&per_page=2")
    assert names(last) == ["e4"]
    assert last.find_all("a", rel="next") == []

    reversed_second = fetch(client, "/?sort=-rank&page=2&per_page=2")
    assert names(reversed_second) == ["e2", "e1"]
    assert reversed_second.find("a", rel="next").attrs["href"] == "/?sort=-rank&page=3&per_page=2"

    # Past the last page: a 404 that says how many there are and links to the last.
    beyond = fetch(client, "/?page=4&per_page=2", status=404)
    assert entries(beyond) == []
    assert [li.text() for li in beyond.find("ul", class_="problems").find_all("li")] == [
        "There is no page 4: this board has 3 pages."]
    assert beyond.find("a", class_="go").attrs["href"] == "/?page=3&per_page=2"
    # An empty board is one empty page, not a 404.
    empty = fetch(client, "/?author=nobody")
    assert empty.find("p", class_="empty").text() == "No finished experiment matches."


def test_the_track_selector_switches_boards(client: TestClient, session: Session) -> None:
    make_finished_experiment(session, [1.12, 1.12, 1.13], name="ten minutes")
    long_run = make_finished_experiment(session, [1.00, 1.01, 1.00], name="two hours")
    long_run.track = NON_RECORD_TRACK
    session.add(long_run)
    session.commit()

    page = fetch(client, "/?sort=name")
    assert names(page) == ["ten minutes"]
    assert page.find("p", class_="track-name").text() == (
        "record track: 10 minutes on 8×H100, 16 MB")
    current = page.find("p", class_="tracks").find("strong")
    assert current.attrs["data-track"] == RECORD_TRACK
    switch = page.find("a", data_filter="track")
    assert switch.attrs["href"] == f"/?track={NON_RECORD_TRACK}&sort=name"

    other = fetch(client, switch.attrs["href"])
    assert names(other) == ["two hours"]
    assert cells(main_row(entries(other)[0]))[0] == "1"
    assert other.find("a", data_filter="track").attrs["href"] == "/?sort=name"
    fetch(client, "/?track=track_1min", status=400)


def test_delta_names_its_reference_and_unit(client: TestClient, session: Session) -> None:
    standing = make_finished_experiment(session, [1.0856, 1.0857, 1.0855], name="SP8192 QK5")
    tested = make_finished_experiment(session, [1.0820, 1.0822, 1.0821], name="tested")
    tested.stats = {"units": "nats_per_token", "delta": -0.0073, "p": 0.002, "reference": {
        "kind": "record", "experiment_id": standing.id, "name": "SP8192 QK5",
        "val_bpb": 1.0856, "date": "2026-04-06", "source": "the standing record"}}
    session.add(tested)
    session.commit()

    row = main_row(entries(fetch(client, "/"))[0])

    delta = row.find("td", class_="delta")
    assert delta.find("span", class_="units").text() == "nats/token"
    assert delta.find("span", class_="against").text() == (
        f"vs SP8192 QK5 (#{standing.id}, 1.0856 bpb, 2026-04-06)")
    assert delta.text().startswith("-0.0073")
    assert row.find("td", class_="p").text() == "0.002"


def test_an_import_is_dated_by_its_record_with_both_verdicts(client: TestClient, session: Session,
                                          tmp_path: Path) -> None:
    results = records.import_records(session, import_tree(tmp_path / "records"),
                                     reference_bpb=2.0)
    imported = session.get(Experiment, results[0].experiment_id)
    assert imported is not None
    imported.accepted = True
    session.add(imported)
    session.commit()

    (entry,) = entries(fetch(client, "/?unverified=1"))

    date = main_row(entry).find("td", class_="date")
    assert date.text() == "2026-04-12"  # submission.json's date, not the day of the import
    assert date.find("span").attrs["title"] == "the record's date"
    # Both verdicts side by side: Caddie's (one seed) and the challenge's.
    assert main_row(entry).find("td", class_="record").text() == (
        "Caddie: not eligible challenge: accepted")


def test_rank_is_the_place_on_the_board_under_any_filter(client: TestClient,
                                                         session: Session) -> None:
    for index, author in enumerate(["ada", "bob", "cy", "ada", "dexhunter", "dexhunter"]):
        make_finished_experiment(session, [1.1 + index / 100] * 3, name=f"e{index}", author=author)

    page = fetch(client, "/?author=dexhunter")

    assert names(page) == ["e4", "e5"]
    assert [cells(main_row(e))[0] for e in entries(page)] == ["5", "6"]
    assert page.find("a", data_filter="author").attrs["href"] == "/"


def test_self_reported_scores_only_behind_a_filter_and_marked(client: TestClient,
                                                              session: Session) -> None:
    make_finished_experiment(session, [1.2, 1.21, 1.19], name="measured")
    printed = make_experiment(session, name="prints its own score", kind="script", seeds=[1, 2, 3])
    for seed in (1, 2, 3):
        make_scored_run(session, printed, seed=seed, val_bpb=0.0001)
    finalize_experiment(session, printed.id)

    page = fetch(client, "/")
    assert names(page) == ["measured"]
    assert page.find("a", data_filter="unverified").attrs["href"] == "/?unverified=1"

    everything = fetch(client, "/?unverified=1")
    assert names(everything) == ["prints its own score", "measured"]
    first, second = (main_row(e) for e in entries(everything))
    # The board of every score ranks it, marked; the default board's rank 1 is measured.
    assert cells(first)[0] == "1"
    assert first.find("span", class_="unverified").text() == (
        "score printed by the participant's script")
    assert cells(second)[0] == "2"
    assert second.find_all("span", class_="unverified") == []


def test_bad_parameters_get_an_error_page_naming_them(client: TestClient) -> None:
    for url, field in [("/?sort=bytes;drop", "sort"), ("/?page=0", "page"),
                       ("/?unverified=perhaps", "unverified"),
                       ("/?per_page=1000", "per_page"), ("/?eligible=maybe", "eligible")]:
        page = fetch(client, url, status=400)
        assert page.find("h1").text() == "400 Bad Request"
        problems = [li.text() for li in page.find("ul", class_="problems").find_all("li")]
        assert [p for p in problems if p.startswith(f"{field}: ")], (url, problems)


def test_the_rerun_column_links_each_entrys_newest_rerun(client: TestClient, session: Session) -> None:
    held = make_finished_experiment(session, [1.10, 1.11, 1.12], name="held")
    fell = make_finished_experiment(session, [1.13, 1.14, 1.15], name="fell")
    live = make_finished_experiment(session, [1.16, 1.17, 1.18], name="live")
    few = make_finished_experiment(session, [1.19, 1.20, 1.21], name="few")
    make_finished_experiment(session, [1.22, 1.23, 1.24], name="never")
    make_rerun(session, held, [1.1000, 1.1001, 1.1002], [1.2000, 1.2001, 1.2002])  # older, superseded below
    newest = make_rerun(session, held, [1.1000, 1.1001, 1.1002], [1.1000, 1.1002, 1.1001])
    worse = make_rerun(session, fell, [1.1300, 1.1301, 1.1302], [1.2300, 1.2301, 1.2302])
    running = make_rerun(session, live, [1.16, 1.17], [1.16, None])
    noisy = make_rerun(session, few, [1.19, 1.20], [1.19])

    page = fetch(client, "/")
    column = {name: main_row(entry).find("td", class_="rerun") for name, entry in zip(names(page), entries(page), strict=True)}

    assert {name: cell.text() for name, cell in column.items()} == {
        "held": "reproduced", "fell": "not reproduced: score", "live": "running",
        "few": "inconclusive", "never": "—"}
    for name, rerun in (("held", newest), ("fell", worse), ("live", running), ("few", noisy)):
        assert column[name].find("a").attrs["href"] == f"/experiments/{rerun.id}"
    assert "outcome-not-reproduced" in column["fell"].find("a").classes()
