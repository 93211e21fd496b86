"""Caddie's verdict on a records tree held against the challenge's: tracks, record dates,
the README's acceptance, the as-of-date reference, duplicate logs of a seed, and the time
rule; on `tests/fixtures/records-tree/` (our own files in the real layout)."""

from pathlib import Path

import pytest
from sqlmodel import Session, select

from server import records
from server.models import Experiment, Run, as_utc
from tests.fixture_files import records_tree


@pytest.fixture
def imported(session: Session) -> dict[str, Experiment]:
    results = records.import_records(session, records_tree() / "records")
    assert all(result.created for result in results)
    experiments = session.exec(select(Experiment)).all()
    session.commit()
    return {e.source["key"].rsplit("_", 1)[1]: e for e in experiments if e.source}  # type: ignore[index]


def test_tracks_dates_and_the_challenges_word(imported: dict[str, Experiment]) -> None:
    assert {name: e.track for name, e in imported.items()} == {
        "Base": "track_10min_16mb", "Middle": "track_10min_16mb",
        "NotListed": "track_10min_16mb", "Rescored": "track_10min_16mb",
        "Later": "track_10min_16mb", "TwoHours": "track_non_record_16mb"}
    later = imported["Later"]
    assert as_utc(later.record_date).isoformat() == "2026-03-25T10:00:00+00:00"
    assert as_utc(later.finished_at).isoformat() == "2026-03-25T10:00:00+00:00"  # not today
    # Linked by folder, or (Rescored) by score, date and author; NotListed is in no table.
    assert {name: e.accepted for name, e in imported.items()} == {
        "Base": True, "Middle": True, "NotListed": False, "Rescored": True, "Later": True,
        "TwoHours": True}
    assert imported["Rescored"].source["official"]["score"] == 1.21  # type: ignore[index]


def test_each_import_is_tested_against_the_best_accepted_record_before_it(
        imported: dict[str, Experiment]) -> None:
    against = {name: (e.stats or {}).get("reference", {}) for name, e in imported.items()}
    assert against["Base"]["kind"] == "none"  # the first record of its track
    assert against["TwoHours"]["kind"] == "none"  # nothing before it on the non-record track
    assert against["Middle"]["experiment_id"] == imported["Base"].id
    # Not NotListed (better, but not accepted), not Later (better, but after it), not itself.
    assert (against["Rescored"]["experiment_id"], against["Rescored"]["name"],
            against["Rescored"]["date"]) == (imported["Middle"].id, "Middle", "2026-03-18")
    assert against["Later"]["experiment_id"] == imported["Rescored"].id
    rescored = imported["Rescored"].stats or {}
    assert rescored["units"] == "nats_per_token" and rescored["delta"] < -0.005
    assert rescored["p"] < 0.01 and imported["Rescored"].eligible is True
    # Middle is 0.0044 bpb better than Base: 0.0074 nats per token, past the margin but with
    # three seeds not at p < 0.01; the reason says p, its unit and the record against.
    assert (imported["Middle"].stats or {})["delta"] == pytest.approx(-0.0044 * 1.68872, abs=1e-4)
    (why,) = imported["Middle"].reasons
    assert why.startswith("not significant: p=0.0") and "nats_per_token" in why
    assert f"against Base (experiment {imported['Base'].id}, val_bpb 1.22440, 2026-03-17)" in why


def test_eval_only_reruns_of_a_seed_are_one_sample(session: Session,
                                                   imported: dict[str, Experiment]) -> None:
    rescored = imported["Rescored"]
    runs = session.exec(select(Run).where(Run.experiment_id == rescored.id)).all()
    session.commit()
    assert sorted(run.seed for run in runs) == [1, 2, 3]
    # The logs submission.json's seed_results state, training numbers from the train logs.
    assert sorted(run.val_bpb for run in runs) == [1.209, 1.21, 1.211]  # type: ignore[type-var]
    assert {run.train_time_s for run in runs} == {599.99}
    assert rescored.mean_val_bpb == pytest.approx(1.2100)
    logs = {log["file"]: log for log in rescored.source["logs"]}  # type: ignore[index]
    assert logs["ttt_rerun/seed_1.log"]["training_from"] == "train_seed1.log"
    assert "seed_results" in logs["ttt_rerun/seed_1.log"]["why"]
    duplicates = {d["file"] for d in rescored.source["duplicate_logs"]}  # type: ignore[index]
    assert duplicates == {"train_seed1.log", "train_seed2.log", "train_seed3.log"}
    fields = {d["field"] for d in rescored.source["disagreements"]}  # type: ignore[index]
    assert {"seeds.1.logs", "seeds.2.logs", "seeds.3.logs"} <= fields


def test_a_seed_stated_only_in_a_settings_line_is_read(session: Session,
                                                       imported: dict[str, Experiment]) -> None:
    logs = imported["Middle"].source["logs"]  # type: ignore[index]
    assert sorted((log["seed"], log["seed_from"]) for log in logs) == [
        (1, "log"), (2, "log"), (3, "log")]


def test_a_step_past_600_s_is_no_reason(imported: dict[str, Experiment]) -> None:
    assert imported["Base"].reasons == []  # seed 1 stopped at 600.080 s, 43 ms a step


def test_the_non_record_track_is_judged_by_its_own_rules(
        session: Session, imported: dict[str, Experiment]) -> None:
    # One seed trained two hours: no time cap, no seed count, no record to beat; the byte cap.
    two_hours = imported["TwoHours"]
    assert two_hours.reasons == [] and two_hours.eligible is True
    assert (two_hours.stats or {})["rule"] == (
        "non-record: within 16,000,000 bytes (largest 15,847,000); the 600 s caps, the seed "
        "count and the test against a record do not apply")
    (run,) = session.exec(select(Run).where(Run.experiment_id == two_hours.id)).all()
    session.commit()
    assert run.train_time_s == 7200.0 and run.reasons == [] and run.eligible is True


def test_a_non_record_folder_over_the_byte_cap_is_not_accepted(session: Session,
                                                              tmp_path: Path) -> None:
    import shutil
    folder = tmp_path / "records" / "track_non_record_16mb" / "2026-03-21_TooBig"
    shutil.copytree(records_tree() / "records" / "track_non_record_16mb" / "2026-03-19_TwoHours",
                    folder)
    log = folder / "train_seed1.log"
    log.write_text(log.read_text().replace("15847000 bytes", "16000001 bytes"))
    (result,) = records.import_records(session, tmp_path / "records")
    assert result.eligible is False and result.rule == ""
    assert result.reasons == ["seed 1: bytes_total 16,000,001 > 16,000,000"]
    # The record track's rules still hold there: the same log is a two-hour run.
    assert records.log_reasons(records.parse_log(log.read_bytes()))[-1].startswith(
        "train time 7200.000 s > 600 s")


def test_a_second_import_adds_nothing(session: Session, imported: dict[str, Experiment]) -> None:
    again = records.import_records(session, records_tree() / "records")
    assert not any(result.created for result in again)
    assert [(r.key, r.accepted, r.eligible) for r in again if r.key.endswith("Rescored")] == [
        ("track_10min_16mb/2026-03-20_Rescored", True, True)]
    assert len(session.exec(select(Experiment)).all()) == len(imported)
    session.commit()


def test_without_a_readme_acceptance_is_unknown(session: Session, tmp_path: Path) -> None:
    import shutil
    shutil.copytree(records_tree() / "records", tmp_path / "records")
    results = records.import_records(session, tmp_path / "records")
    assert {result.accepted for result in results} == {None}


def test_an_official_score_that_is_not_the_mean_is_explained(session: Session,
                                                             tmp_path: Path) -> None:
    import shutil

    from server import disagreements
    shutil.copytree(records_tree(), tmp_path / "tree")
    readme = tmp_path / "tree" / "README.md"
    # Middle's row states one seed's score; Base's a number in none of its files.
    readme.write_text(readme.read_text().replace("| Middle | 1.2200 |", "| Middle | 1.2194 |")
                      .replace("| Base | 1.2244 |", "| Base | 1.2311 |"))
    results = {r.key.rsplit("_", 1)[1]: r for r in records.import_records(
        session, tmp_path / "tree" / "records")}
    middle = results["Middle"]
    assert middle.official_note.startswith("official 1.2194 = seed 3's log (")
    assert middle.official_note.endswith(", 1.21940); Caddie's mean of 3 seed(s) 1.22000")
    assert results["Base"].official_note == (
        "official 1.2311 not found in the folder's files; Caddie's mean of 3 seed(s) 1.22440")
    assert results["Rescored"].official_note == ""  # 1.2100 is its mean
    stored = session.get(Experiment, middle.experiment_id)
    session.commit()
    assert stored is not None and stored.source is not None
    assert stored.source["official"]["note"] == middle.official_note
    (found,) = [d for d in stored.source["disagreements"] if d["field"] == "official"]
    assert disagreements.sentence(found) == f"the leaderboard's score: {middle.official_note}"
    again = {r.key.rsplit("_", 1)[1]: r for r in records.import_records(
        session, tmp_path / "tree" / "records")}
    assert again["Middle"].official_note == middle.official_note  # kept for the next import


def test_a_row_linked_to_a_pull_request_matches_a_folder_that_names_it(session: Session,
                                                                       tmp_path: Path) -> None:
    import shutil
    shutil.copytree(records_tree(), tmp_path / "tree")
    readme = tmp_path / "tree" / "README.md"
    # As the 1.0614 row of the real table: another author (who opened the pull request), its
    # date two days before the folder's, and a link to the pull request, not the folder.
    readme.write_text(readme.read_text().replace(
        "| Base | 1.2244 | ada | the baseline | 2026-03-17 | [info](records/track_10min_16mb/2026-03-17_Base/README.md) |",
        "| Base | 1.2244 | someone | the baseline | 2026-03-15 | [info](https://github.com/example/pull/31) |"))
    base = tmp_path / "tree" / "records" / "track_10min_16mb" / "2026-03-17_Base"
    (base / "README.md").write_text("Three seeds of the baseline (PR #31).\n")
    results = records.import_records(session, tmp_path / "tree" / "records")
    assert [(r.accepted, r.official_score) for r in results if r.key.endswith("Base")] == [
        (True, 1.2244)]
    from server import officialboard
    row = officialboard.Row(track="track_10min_16mb", run="Base", score=1.2244, author="someone",
                            date="2026-03-15", folder=None, pull=31)

    def match(date: str, pulls: set[int]) -> officialboard.Row | None:
        return officialboard.accepted_row([row], key="k", track="track_10min_16mb",
                                          val_bpb=1.2244, date=date, authors={"ada"}, pulls=pulls)

    assert match("2026-03-17", {31}) is row
    assert match("2026-03-17", {32}) is None  # the folder names no such pull request
    assert match("2026-03-19", {31}) is None  # more than DATE_SLACK_DAYS apart


def test_a_row_under_another_handle_matches_by_its_run_name_on_the_same_day() -> None:
    from server import officialboard
    # As ByteJEPA's row of the real table: the same score and date as the folder's
    # submission.json, the author a handle the folder never states, and a pull request link.
    row = officialboard.Row(track="track_non_record_16mb", run="ByteJEPA", score=1.3496,
                            author="hardik-bhadani-git", date="2026-04-07", folder=None, pull=1443)

    def match(key: str, date: str, score: float = 1.34960213) -> officialboard.Row | None:
        return officialboard.accepted_row([row], key=key, track="track_non_record_16mb", val_bpb=score,
                                          date=date, authors={"Hardik", "hardikformail"})

    assert match("track_non_record_16mb/2026-03-30_ByteJEPA", "2026-04-07") is row
    assert match("track_non_record_16mb/2026-03-30_Byte-JEPA_v2", "2026-04-07") is row
    assert match("track_non_record_16mb/2026-03-30_ByteJEPA", "2026-04-08") is None  # another day
    assert match("track_non_record_16mb/2026-03-30_ByteJEPA", "2026-04-07", 1.3512) is None
    assert match("track_non_record_16mb/2026-03-30_TokenJEPA", "2026-04-07") is None
    short = officialboard.Row(track="track_non_record_16mb", run="SP8192", score=1.3496, author="x",
                              date="2026-04-07", folder=None)
    assert officialboard.accepted_row([short], key="track_non_record_16mb/2026-04-07_SP8192_Other",
                                      track="track_non_record_16mb", val_bpb=1.3496, date="2026-04-07",
                                      authors=set()) is None  # too short a name to stand for an author
