"""GET /api/leaderboard: ranking, per-experiment numbers, every seed, filters, pages."""

import math
import statistics
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session

from server.experiments import finalize_experiment
from server.leaderboard import LeaderboardOrder, read_leaderboard
from server.tracks import NON_RECORD_TRACK, RECORD_TRACK
from tests.factories import (
    LOSS_PER_BPB,
    make_experiment,
    make_finished_experiment,
    make_rerun,
    make_run,
    make_scored_run,
)


def board(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/leaderboard", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_ranked_by_mean_val_bpb_with_unscored_last(client: TestClient, session: Session) -> None:
    middle = make_finished_experiment(session, [1.22, 1.23, 1.24], name="middle")
    best = make_finished_experiment(session, [1.10, 1.12, 1.11], name="best")
    worst = make_finished_experiment(session, [1.30, 1.31, 1.29], name="worst")
    unscored = make_experiment(session, name="unscored", seeds=[1])
    make_run(session, unscored, seed=1, status="failed", reason="trainer exited with code 1")
    finalize_experiment(session, unscored.id)
    running = make_experiment(session, name="running", seeds=[1])
    make_run(session, running, seed=1, status="running")

    body = board(client, failed=True)

    assert body["count"] == 4
    assert [e["name"] for e in body["data"]] == ["best", "middle", "worst", "unscored"]
    assert [e["rank"] for e in body["data"]] == [1, 2, 3, None]
    assert [e["experiment_id"] for e in body["data"][:3]] == [best.id, middle.id, worst.id]


def test_entry_numbers_and_seed_rows(client: TestClient, session: Session) -> None:
    experiment = make_experiment(session, name="mixed", seeds=[7, 8, 9, 10])
    rows = [
        make_scored_run(session, experiment, seed=7, val_bpb=1.21, bytes_total=15_000_000,
                        train_time_s=580.5, eval_time_s=100.0),
        make_scored_run(session, experiment, seed=8, val_bpb=1.23, bytes_total=15_900_000,
                        train_time_s=599.9, eval_time_s=90.0),
        make_scored_run(session, experiment, seed=9, val_bpb=1.22, bytes_total=15_100_000,
                        train_time_s=570.0, eval_time_s=130.5, eligible=False,
                        reasons=["train time unknown"],
                        results={"worker": {"pod": {"provider": "runpod", "name": "caddie-run-3"}}}),
        make_run(session, experiment, seed=10, status="failed", reason="pod lost",
                 bytes_total=99_000_000),
    ]
    # Neither an ablation arm's run nor a failed seed that a retry replaced counts.
    make_scored_run(session, experiment, seed=7, val_bpb=1.0, bytes_total=15_999_999, variant="wide")
    make_scored_run(session, experiment, seed=11, val_bpb=1.0, bytes_total=15_999_998, superseded=True)
    finalize_experiment(session, experiment.id)

    (entry,) = board(client)["data"]

    scores = [1.21, 1.23, 1.22]
    assert entry["n"] == 3
    assert entry["mean_val_bpb"] == pytest.approx(statistics.mean(scores))
    assert entry["std_val_bpb"] == pytest.approx(statistics.stdev(scores))
    # Maxima are over the seeds that succeeded: the failed seed's bytes do not count.
    assert (entry["max_bytes_total"], entry["max_train_time_s"], entry["max_eval_time_s"]) == (
        15_900_000, 599.9, 130.5)
    assert entry["eligible"] is False
    assert entry["reasons"] == ["seed 9: train time unknown", "seed 10: failed: pod lost"]
    seeds = entry["seeds"]
    assert [s["seed"] for s in seeds] == [7, 8, 9, 10, 11]  # the control's, superseded shown
    assert [s["run_id"] for s in seeds[:4]] == [row.id for row in rows]
    assert seeds[2] == {
        "run_id": rows[2].id, "seed": 9, "status": "succeeded", "val_bpb": 1.22,
        "val_loss": rows[2].val_loss, "bytes_total": 15_100_000, "train_time_s": 570.0,
        "eval_time_s": 130.5, "eligible": False, "reasons": ["train time unknown"],
        "pod": "caddie-run-3", "gpu": "8× NVIDIA H100 80GB HBM3", "superseded": False,
    }
    assert seeds[4]["superseded"] is True
    assert (seeds[3]["status"], seeds[3]["val_bpb"]) == ("failed", None)


def test_filters(client: TestClient, session: Session) -> None:
    make_finished_experiment(session, [1.2, 1.21, 1.19], name="eligible", author="ada",
                             provider="ssh")
    make_finished_experiment(session, [1.1, 1.1], name="two seeds", author="bob")
    make_finished_experiment(session, [1.5, 1.51, 1.49], name="tiny", author="ada", preset="tiny")

    def names(**params: Any) -> list[str]:
        return [e["name"] for e in board(client, **params)["data"]]

    # The tiny preset has no training cap: it is on the non-record track's board only.
    assert names(eligible=True) == ["eligible"]
    assert names(author="ada") == ["eligible"]
    assert names(provider="ssh") == ["eligible"]
    assert names(preset="tiny") == []
    assert names(preset="tiny", track=NON_RECORD_TRACK) == ["tiny"]
    assert names(author="ada", eligible=True, preset="baseline") == ["eligible"]
    assert names(author="nobody") == []


def test_pages_keep_ranks_and_count(client: TestClient, session: Session) -> None:
    for index in range(5):
        make_finished_experiment(session, [1.0 + index / 10] * 3, name=f"e{index}")

    first = board(client, limit=2)
    second = board(client, limit=2, offset=2)
    last = board(client, limit=2, offset=4)

    assert [e["name"] for e in first["data"] + second["data"] + last["data"]] == [
        "e0", "e1", "e2", "e3", "e4"]
    assert [e["rank"] for e in second["data"]] == [3, 4]
    assert (first["count"], second["count"], last["count"]) == (5, 5, 5)


def test_an_offset_past_the_last_match_is_404(client: TestClient, session: Session) -> None:
    for index in range(3):
        make_finished_experiment(session, [1.0 + index / 10] * 3, name=f"e{index}")

    assert board(client, limit=2, offset=2)["count"] == 3
    response = client.get("/api/leaderboard", params={"limit": 2, "offset": 3})

    assert response.status_code == 404
    assert response.json()["detail"] == "offset 3 is past the last of 3 matching experiments"
    # An empty board's first page is an empty page, not a 404.
    assert board(client, author="nobody") == {"data": [], "count": 0}


def test_each_track_ranks_on_its_own_board(client: TestClient, session: Session) -> None:
    """A two-hour run scores better than a 10-minute record; it ranks on its own track."""
    make_finished_experiment(session, [1.12, 1.12, 1.13], name="ten minutes")
    make_finished_experiment(session, [1.20, 1.21, 1.19], name="second")
    long_run = make_finished_experiment(session, [1.00, 1.01, 1.00], name="two hours")
    long_run.track = NON_RECORD_TRACK
    session.add(long_run)
    session.commit()

    record = board(client)
    non_record = board(client, track=NON_RECORD_TRACK)

    assert [(e["name"], e["rank"], e["track"]) for e in record["data"]] == [
        ("ten minutes", 1, RECORD_TRACK), ("second", 2, RECORD_TRACK)]
    assert board(client, track=RECORD_TRACK) == record
    assert [(e["name"], e["rank"], e["track"]) for e in non_record["data"]] == [
        ("two hours", 1, NON_RECORD_TRACK)]
    response = client.get("/api/leaderboard", params={"track": "track_1min"})
    assert response.status_code == 422
    assert ["query", "track"] in [p["loc"] for p in response.json()["detail"]]


def test_a_filter_hides_rows_and_never_renumbers(client: TestClient, session: Session) -> None:
    for index, author in enumerate(["ada", "bob", "ada", "cy", "dexhunter", "dexhunter"]):
        make_finished_experiment(session, [1.1 + index / 100] * 3, name=f"e{index}", author=author,
                                 provider="ssh" if index == 2 else "local")

    def ranks(**params: Any) -> dict[str, int]:
        return {e["name"]: e["rank"] for e in board(client, **params)["data"]}

    assert ranks(author="dexhunter") == {"e4": 5, "e5": 6}
    assert ranks(author="ada") == {"e0": 1, "e2": 3}
    assert ranks(provider="ssh") == {"e2": 3}
    assert ranks(author="dexhunter", order="rank", desc=True) == {"e5": 6, "e4": 5}


def test_the_default_board_is_verified_scored_experiments(
    client: TestClient, session: Session
) -> None:
    """A participant's script that prints its own val_bpb, or an import, is not on the default
    board, nor is an experiment none of whose seeds succeeded. The board of every score ranks
    them (marked); the unscored are listed when asked for, unranked."""
    measured = make_finished_experiment(session, [1.20, 1.21, 1.19], name="measured")
    printed = make_experiment(session, name="prints 0.0001", kind="script", seeds=[1, 2, 3])
    imported = make_experiment(session, name="imported", kind="script", provider="import",
                               preset="import", seeds=[1, 2, 3])
    for experiment, score in ((printed, 0.0001), (imported, 1.0)):
        for seed in (1, 2, 3):
            make_scored_run(session, experiment, seed=seed, val_bpb=score)
        assert finalize_experiment(session, experiment.id)
    crashed = make_experiment(session, name="crashed", seeds=[1, 2, 3])
    for seed in (1, 2, 3):
        make_run(session, crashed, seed=seed, status="failed", reason="trainer exited with code 1")
    assert finalize_experiment(session, crashed.id)

    default = board(client)
    everything = board(client, unverified=True, failed=True)

    assert [(e["name"], e["rank"], e["verified"]) for e in default["data"]] == [
        ("measured", 1, True)]
    assert default["count"] == 1
    rows = {e["name"]: e for e in everything["data"]}
    assert [e["name"] for e in everything["data"]] == [
        "prints 0.0001", "imported", "measured", "crashed"]
    assert {name: e["rank"] for name, e in rows.items()} == {
        "prints 0.0001": 1, "imported": 2, "measured": 3, "crashed": None}
    assert rows["prints 0.0001"]["score_source"] == "printed by the participant's script"
    assert rows["imported"]["score_source"] == "read from the submission's logs"
    assert (rows["measured"]["score_source"], rows["crashed"]["verified"]) == (
        "measured by Caddie", True)
    assert [e["name"] for e in board(client, unverified=True)["data"]] == [
        "prints 0.0001", "imported", "measured"]
    assert [e["name"] for e in board(client, failed=True)["data"]] == ["measured", "crashed"]
    assert measured.id == rows["measured"]["experiment_id"]


def sorting_board(session: Session) -> None:
    """Five experiments whose columns each put them in a different order."""
    # Δ nats: (1.20 − 1.30) vs (1.10 − 1.13) vs (1.25 − 2.0): not the order of the means.
    make_finished_experiment(session, [1.20, 1.21, 1.19], name="Alpha", author="zoe",
                             reference_bpb=1.30, cost_per_hour=10.0,
                             run_fields={"bytes_total": 15_000_000, "train_time_s": 590.0, "eval_time_s": 100.0})
    make_finished_experiment(session, [1.10, 1.12, 1.11], name="bravo", author="Yann",
                             reference_bpb=1.13, cost_per_hour=2.0,
                             run_fields={"bytes_total": 15_900_000, "train_time_s": 599.0, "eval_time_s": 90.0})
    make_finished_experiment(session, [1.25, 1.26], name="charlie", author="xena",
                             run_fields={"bytes_total": 14_000_000, "train_time_s": 598.0, "eval_time_s": 130.0})
    make_finished_experiment(session, [1.15, 1.40, 1.15, 1.30], name="Delta", author="wes",
                             reference_bpb=1.26, cost_per_hour=1.0,
                             run_fields={"bytes_total": 15_500_000, "train_time_s": 500.0, "eval_time_s": 95.0})
    crashed = make_experiment(session, name="echo", author="vic", seeds=[1])
    make_run(session, crashed, seed=1, status="failed", reason="trainer exited with code 1")
    finalize_experiment(session, crashed.id)


# Names by each order, ascending then descending. Means: bravo 1.11, Alpha 1.20, Delta 1.25,
# charlie 1.255; entries without the value (echo: no score, no bytes; charlie and echo: no
# priced pod) go last either way, and ties (Alpha and bravo: 3 seeds) keep the rank order.
EXPECTED_ORDERS = {
    "rank": ("bravo Alpha Delta charlie echo", "charlie Delta Alpha bravo echo"),
    "delta": ("charlie Alpha bravo Delta echo", "Delta bravo Alpha charlie echo"),
    "seeds": ("echo charlie bravo Alpha Delta", "Delta bravo Alpha charlie echo"),
    "bytes": ("charlie Alpha Delta bravo echo", "bravo Delta Alpha charlie echo"),
    "train": ("Delta Alpha charlie bravo echo", "bravo charlie Alpha Delta echo"),
    "eval": ("bravo Delta Alpha charlie echo", "charlie Alpha Delta bravo echo"),
    "cost": ("Delta bravo Alpha charlie echo", "Alpha bravo Delta charlie echo"),
    "date": ("Alpha bravo charlie Delta echo", "echo Delta charlie bravo Alpha"),
    "name": ("Alpha bravo charlie Delta echo", "echo Delta charlie bravo Alpha"),
    "author": ("echo Delta charlie bravo Alpha", "Alpha bravo charlie Delta echo"),
}


def names_by(client: TestClient, order: str, **params: Any) -> str:
    return " ".join(e["name"] for e in board(client, order=order, **params)["data"])


@pytest.mark.parametrize("order", list(LeaderboardOrder))
def test_every_order_both_ways_with_missing_values_last(
    client: TestClient, session: Session, order: LeaderboardOrder
) -> None:
    sorting_board(session)
    ranked = board(client, failed=True)["data"]
    ranks = {e["name"]: e["rank"] for e in ranked}
    if order is LeaderboardOrder.p:
        by_p = sorted((e for e in ranked if e["p"] is not None), key=lambda e: e["p"])
        ascending = " ".join([e["name"] for e in by_p] + ["echo"])
        descending = " ".join([e["name"] for e in by_p[::-1]] + ["echo"])
    else:
        ascending, descending = EXPECTED_ORDERS[order.value]

    assert names_by(client, order.value, failed=True) == ascending
    assert names_by(client, order.value, desc=True, failed=True) == descending
    # A rank is the entry's own, whatever the order of the page.
    assert {e["name"]: e["rank"]
            for e in board(client, order=order.value, failed=True)["data"]} == ranks
    # Paged in SQL: pages of two put together are the whole order.
    pages = [names_by(client, order.value, desc=True, failed=True, limit=2, offset=offset)
             for offset in (0, 2, 4)]
    assert " ".join(pages) == descending


def test_cost_and_delta_of_an_entry(client: TestClient, session: Session) -> None:
    sorting_board(session)

    entries = {e["name"]: e for e in board(client)["data"]}

    assert entries["Alpha"]["cost_usd"] == pytest.approx(30.0)  # 3 pods, 1 h at $10
    assert entries["Delta"]["cost_usd"] == pytest.approx(4.0)
    assert entries["charlie"]["cost_usd"] is None
    mean = statistics.fmean([1.20, 1.21, 1.19])
    # Nats per token of Alpha's validation set: Δbpb × ln 2 × its bytes per token.
    assert entries["Alpha"]["delta_nats"] == pytest.approx((mean - 1.30) * LOSS_PER_BPB)
    assert entries["Alpha"]["delta_units"] == "nats_per_token"
    assert entries["Alpha"]["against"]["val_bpb"] == pytest.approx(1.30)


def stored_test(delta: float, p: float, reference: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A test as the finalizer stores it: numbers, units and the reference it was against."""
    return {"test": "one-sided Welch t-test", "units": "nats_per_token", "delta": delta,
            "p": p, "reference": reference, **more}


def test_every_delta_and_p_says_what_it_is_against(client: TestClient, session: Session) -> None:
    """Δ and p on the board are the stored test's, with what it was against: the record's
    name, score and date, or the reference chosen at submission."""
    standing = make_finished_experiment(session, [1.0856, 1.0857, 1.0855], name="SP8192 QK5")
    record = {"kind": "record", "experiment_id": standing.id, "name": "SP8192 QK5",
              "val_bpb": 1.0856, "date": "2026-04-06", "track": RECORD_TRACK,
              "source": "the standing record of the track at 2026-04-20"}
    plain = make_finished_experiment(session, [1.0820, 1.0822, 1.0821], name="plain")
    chose = make_finished_experiment(session, [1.0830, 1.0831, 1.0829], name="chose its own")
    legacy = make_finished_experiment(session, [1.20, 1.21, 1.19], name="legacy",
                                      reference_bpb=1.30)
    plain.stats = stored_test(-0.0073, 0.002, record)
    # As stored before tests kept their delta and units.
    legacy.stats = {"test": "one-sided one-sample t-test", "p": 0.001,
                    "reference": {"kind": "value", "val_bpb": 1.30, "source": "chosen at submission"}}
    chose.stats = stored_test(-0.5, 0.0001, {"kind": "value", "val_bpb": 1.5,
                                             "source": "chosen at submission"},
                              record_test=stored_test(-0.0051, 0.2, record))
    session.add_all([plain, chose, legacy])
    session.commit()

    entries = {e["name"]: e for e in board(client)["data"]}

    assert (entries["plain"]["delta_nats"], entries["plain"]["delta_units"],
            entries["plain"]["p"]) == (-0.0073, "nats_per_token", 0.002)
    assert entries["plain"]["against"] == {
        "kind": "record", "name": "SP8192 QK5", "experiment_id": standing.id,
        "val_bpb": 1.0856, "date": "2026-04-06", "units": "nats_per_token",
        "source": "the standing record of the track at 2026-04-20"}
    # A reference chosen at submission is named as such (the record test is on its page).
    assert (entries["chose its own"]["delta_nats"], entries["chose its own"]["p"]) == (-0.5, 0.0001)
    assert (entries["chose its own"]["against"]["val_bpb"],
            entries["chose its own"]["against"]["source"]) == (1.5, "chosen at submission")
    # A test stored before deltas were: from the means, nats per byte, against its value.
    mean = statistics.fmean([1.20, 1.21, 1.19])
    assert entries["legacy"]["delta_nats"] == pytest.approx((mean - 1.30) * math.log(2))
    assert entries["legacy"]["delta_units"] == "nats_per_byte"
    assert entries["legacy"]["against"]["val_bpb"] == 1.30
    assert legacy.id == entries["legacy"]["experiment_id"]
    # Sorted by the same Δ and p the rows show.
    by_delta = [e["name"] for e in board(client, order="delta")["data"]]
    assert by_delta.index("chose its own") < by_delta.index("legacy") < by_delta.index("plain")
    by_p = [e["name"] for e in board(client, order="p")["data"]]
    assert by_p.index("chose its own") < by_p.index("legacy") < by_p.index("plain")


def test_bad_parameters_are_422(client: TestClient) -> None:
    for params, name in [({"limit": 0}, "limit"), ({"offset": -3}, "offset"),
                         ({"eligible": "maybe"}, "eligible"), ({"author": "a\x00"}, "author"),
                         ({"order": "mean; drop"}, "order"), ({"order": "-rank"}, "order"),
                         ({"desc": "down"}, "desc")]:
        response = client.get("/api/leaderboard", params=params)
        assert response.status_code == 422, params
        assert ["query", name] in [p["loc"] for p in response.json()["detail"]]


def test_a_page_costs_the_same_queries_however_many_experiments(
    engine: Engine, session: Session
) -> None:
    def statements_for_page() -> int:
        seen: list[str] = []

        def count(_conn, _cursor, statement, *_args) -> None:  # type: ignore[no-untyped-def]
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", count)
        try:
            with Session(engine) as reader:
                read_leaderboard(reader, limit=50, offset=0)
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return sum(1 for s in seen if s.lstrip().upper().startswith("SELECT"))

    make_finished_experiment(session, [1.2, 1.2, 1.2], name="one")
    few = statements_for_page()
    for index in range(6):
        make_finished_experiment(session, [1.3] * 4, name=f"more{index}")
    many = statements_for_page()

    assert few == many == 5  # count, page, runs, pod costs and re-runs of the page


def test_each_entry_carries_its_newest_reruns_verdict(client: TestClient, session: Session) -> None:
    held = make_finished_experiment(session, [1.10, 1.11, 1.12], name="held")
    fell = make_finished_experiment(session, [1.13, 1.14, 1.15], name="fell")
    never = make_finished_experiment(session, [1.16, 1.17, 1.18], name="never")
    make_rerun(session, held, [1.1000, 1.1001, 1.1002], [1.2000, 1.2001, 1.2002])
    newest = make_rerun(session, held, [1.1000, 1.1001, 1.1002], [1.1000, 1.1002, 1.1001])
    worse = make_rerun(session, fell, [1.1300, 1.1301, 1.1302], [1.2300, 1.2301, 1.2302])

    by_id = {entry["experiment_id"]: entry["rerun"] for entry in board(client)["data"]}

    assert by_id[held.id] == {"experiment_id": newest.id, "outcome": "reproduced", "headline": "reproduced"}
    assert by_id[fell.id] == {"experiment_id": worse.id, "outcome": "not reproduced",
                              "headline": "not reproduced: score"}
    assert by_id[never.id] is None
