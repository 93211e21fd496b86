"""`server.records` import: records folders built from the real record logs into experiments."""

import json
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, col, select

from server import records
from server.communitylog import parse_log
from server.config import get_settings
from server.dispatch import NOTIFY
from server.models import Experiment, ExperimentFile, LogChunk, Pod, Run, RunEvent
from tests.fixture_files import record_log
from tests.server.broker import queued_tasks

REPO = Path(__file__).resolve().parents[2]
TRACK = "track_10min_16mb"
HONEST_LOGS = ("sp4096_seed42.log", "sp8192_sdclip_seed1234.log", "varlen_ttt_lora_seed0.log")
SCRIPT = "import os\nprint('train')\n"


def fixture_log(name: str) -> bytes:
    return record_log(name)


def make_folder(root: Path, name: str, logs: dict[str, bytes],
                submission: dict[str, Any] | None, **extra: str) -> Path:
    folder = root / TRACK / name
    folder.mkdir(parents=True)
    for file, data in logs.items():
        (folder / file).write_bytes(data)
    if submission is not None:
        (folder / "submission.json").write_text(json.dumps(submission))
    (folder / "README.md").write_text(f"# {name}\n")
    (folder / "train_gpt.py").write_text(SCRIPT)
    (folder / "requirements.txt").write_text("brotli\n")
    for file, text in extra.items():
        (folder / file).write_text(text)
    return folder


def honest_submission() -> dict[str, Any]:
    parsed = {name: parse_log(fixture_log(name)) for name in HONEST_LOGS}
    scores = [p["score"] for p in parsed.values()]
    return {
        "name": "Three honest seeds", "author": "Grace", "github_id": "grace-h",
        "date": "2026-04-11T09:30:00Z",
        "val_bpb": sum(s["val_bpb"] for s in scores) / 3,
        "val_loss": sum(s["val_loss"] for s in scores) / 3,
        "bytes_total": max(p["bytes_total"] for p in parsed.values()),
        "seeds": [42, 1234, 0],
        "seed_results": {str(p["seed"]): {"val_bpb": p["score"]["val_bpb"], "val_loss": p["score"]["val_loss"],
                                          "artifact_bytes": p["bytes_total"], "steps": p["steps"]}
                         for p in parsed.values()},
    }


def disagreeing_submission() -> dict[str, Any]:
    # The best seed as val_bpb, a bytes_total no log states, a seed with no log, a wrong per-seed value.
    return {"name": "Optimistic", "author": "Hal", "date": "2026-04-12", "val_bpb": 1.07300174,
            "bytes_total": 15_000_000, "seeds": [42, 1, 7],
            "seed_results": {"42": {"val_bpb": 1.0950, "artifact_bytes": 15915268}}}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "records"
    make_folder(root, "2026-04-11_Honest", {n: fixture_log(n) for n in HONEST_LOGS}, honest_submission())
    make_folder(root, "2026-04-12_Optimistic",
                {"train_seed42.log": fixture_log("sp4096_seed42.log"),
                 "train_seed1.txt": fixture_log("phased_ttt_timestamped_seed1.log")},
                disagreeing_submission())
    # As in the challenge repository, this record's folder has no submission.json.
    make_folder(root, "2026-03-19_int6_STE QAT_ MLP_bigram _U_Net",
                {"train.log": fixture_log("trap_over_size_cap.log")}, None)
    return root


def by_key(session: Session) -> dict[str, Experiment]:
    rows = session.exec(select(Experiment).where(Experiment.provider == records.IMPORT_PROVIDER)).all()
    return {e.source["key"]: e for e in rows if e.source}


def runs_of(session: Session, experiment: Experiment) -> list[Run]:
    return list(session.exec(select(Run).where(Run.experiment_id == experiment.id)
                             .order_by(col(Run.id))).all())


def log_text(session: Session, run: Run) -> str:
    return "".join(session.exec(select(LogChunk.text).where(LogChunk.run_id == run.id)
                                .order_by(col(LogChunk.offset))).all())


def test_import_makes_one_finished_experiment_per_folder(session: Session, tree: Path) -> None:
    results = records.import_records(session, tree)
    assert [r.created for r in results] == [True, True, True]
    experiments = by_key(session)
    honest = experiments[f"{TRACK}/2026-04-11_Honest"]
    assert (honest.name, honest.author, honest.status, honest.kind) == (
        "Three honest seeds", "Grace", "finished", "script")
    assert honest.created_at.isoformat().startswith("2026-04-11T09:30:00")
    assert honest.source["submission"]["github_id"] == "grace-h"
    assert honest.source["disagreements"] == []
    runs = runs_of(session, honest)
    expected = {parse_log(fixture_log(n))["seed"]: parse_log(fixture_log(n)) for n in HONEST_LOGS}
    assert sorted(r.seed for r in runs) == sorted(expected) == sorted(honest.seeds)
    for run in runs:
        truth = expected[run.seed]
        assert run.status == "succeeded"
        assert (run.val_bpb, run.val_loss) == (truth["score"]["val_bpb"], truth["score"]["val_loss"])
        assert (run.bytes_total, run.code_bytes, run.steps) == (
            truth["bytes_total"], truth["code_bytes"], truth["steps"])
        assert run.train_time_s == truth["train_time_ms"] / 1000
        assert run.pod_id is None and run.eligible is True and run.reasons == []
    assert honest.n_succeeded == 3
    assert honest.mean_val_bpb == pytest.approx(sum(r.val_bpb for r in runs) / 3, abs=1e-12)
    assert session.exec(select(Pod)).all() == []


def test_the_logs_and_code_are_stored_byte_for_byte(session: Session, tree: Path) -> None:
    records.import_records(session, tree)
    honest = by_key(session)[f"{TRACK}/2026-04-11_Honest"]
    for run in runs_of(session, honest):
        file = run.results["log"]["file"]
        original = fixture_log(file)
        assert log_text(session, run).encode() == original
        assert run.log_offset == len(original)
        event = session.exec(select(RunEvent).where(RunEvent.run_id == run.id)).one()
        assert (event.from_status, event.to_status, event.reason) == (None, "succeeded", f"imported from {file}")
    files = session.exec(select(ExperimentFile).where(ExperimentFile.experiment_id == honest.id)).all()
    assert {f.name: bytes(f.content) for f in files} == {"train_gpt.py": SCRIPT.encode(),
                                                         "requirements.txt": b"brotli\n"}


def test_disagreements_with_the_logs_are_listed_and_stored(session: Session, tree: Path) -> None:
    results = {r.key: r for r in records.import_records(session, tree)}
    result = results[f"{TRACK}/2026-04-12_Optimistic"]
    found = {d["field"]: d for d in result.disagreements}
    assert set(found) == {"val_bpb", "bytes_total", "seeds", "seed_results.42.val_bpb"}
    assert found["val_bpb"]["note"] == "equals seed 1's log, not the mean of 2 seed(s)"
    assert found["val_bpb"]["logs"] == pytest.approx((1.0974384 + 1.07300174) / 2)
    assert found["bytes_total"] == {"field": "bytes_total", "stated": 15_000_000, "logs": 15_995_985,
                                    "note": "matches no log"}
    assert found["seeds"]["note"] == "no scored log for seed(s) [7]"
    assert found["seed_results.42.val_bpb"]["logs"] == 1.0974384
    stored = by_key(session)[f"{TRACK}/2026-04-12_Optimistic"]
    assert stored.source["disagreements"] == result.disagreements
    assert sorted(r.seed for r in runs_of(session, stored)) == [1, 42]


def test_a_log_over_the_byte_cap_is_not_eligible(session: Session, tree: Path) -> None:
    records.import_records(session, tree, reference_bpb=2.0)
    trap = by_key(session)[f"{TRACK}/2026-03-19_int6_STE QAT_ MLP_bigram _U_Net"]
    (run,) = runs_of(session, trap)
    assert run.status == "succeeded" and run.val_bpb == 1.15977898
    assert run.eligible is False
    assert run.reasons == ["bytes_total 16,186,500 > 16,000,000"]
    assert "seed 1337: bytes_total 16,186,500 > 16,000,000" in trap.reasons
    assert trap.name == "2026-03-19_int6_STE QAT_ MLP_bigram _U_Net"
    assert trap.source["notes"] == ["no submission.json: nothing stated to compare with"]
    assert not trap.eligible


def test_our_rules_make_the_honest_three_seeds_eligible_against_a_reference(
        session: Session, tree: Path) -> None:
    records.import_records(session, tree, reference_bpb=2.0)
    experiments = by_key(session)
    honest = experiments[f"{TRACK}/2026-04-11_Honest"]
    assert honest.eligible, honest.reasons
    assert honest.stats["test"] == "one-sided one-sample t-test" and honest.stats["n"] == 3
    optimistic = experiments[f"{TRACK}/2026-04-12_Optimistic"]
    assert "3 seeds needed, 2 succeeded" in optimistic.reasons


def test_an_import_sends_no_webhook(settings_env: None, session: Session, tree: Path, data_dir: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CADDIE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
    get_settings.cache_clear()
    try:
        assert [r.created for r in records.import_records(session, tree)] == [True, True, True]
    finally:
        get_settings.cache_clear()
    assert [name for name, _ in queued_tasks(data_dir) if name == NOTIFY] == []


def test_a_second_import_of_the_same_folders_adds_nothing(session: Session, tree: Path) -> None:
    first = records.import_records(session, tree)
    counts = (len(session.exec(select(Experiment)).all()), len(session.exec(select(Run)).all()),
              len(session.exec(select(LogChunk)).all()))
    second = records.import_records(session, tree / TRACK)  # the track folder this time
    assert [r.created for r in second] == [False, False, False]
    assert {r.key: r.experiment_id for r in second} == {r.key: r.experiment_id for r in first}
    assert {r.key: r.disagreements for r in second} == {r.key: r.disagreements for r in first}
    assert (len(session.exec(select(Experiment)).all()), len(session.exec(select(Run)).all()),
            len(session.exec(select(LogChunk)).all())) == counts


def test_seeds_come_from_the_log_then_the_file_name_then_the_submission(tmp_path: Path) -> None:
    body = "step:100/100 val_loss:2.5 val_bpb:1.5 train_time:1000ms step_avg:10.00ms\n" \
           "final_int8_zlib_roundtrip_exact val_loss:2.50000000 val_bpb:1.50000000\n"
    folder = make_folder(tmp_path, "2026-01-01_X", {"train_seed7.log": body.encode(),
                                                    "other.txt": body.replace("1.5", "1.6").encode(),
                                                    "notes.txt": b"just words\n"}, {"seeds": [3]})
    record = records.read_record_folder(folder)
    assert {log.file: (log.seed, log.seed_from) for log in record.logs} == {
        "train_seed7.log": (7, "file name"), "other.txt": (0, "order")}
    assert record.notes == ["other.txt states no seed; numbered 0"]
    single = make_folder(tmp_path, "2026-01-02_Y", {"train.log": body.encode()}, {"seeds": [5]})
    (log,) = records.read_record_folder(single).logs
    assert (log.seed, log.seed_from) == (5, "submission")


def test_a_log_without_a_final_score_is_a_failed_seed(session: Session, tmp_path: Path) -> None:
    body = b"seed:11\nstep:100/1000 train_loss:3.1 train_time:9000ms step_avg:90.00ms\n"
    make_folder(tmp_path, "2026-01-03_Crashed", {"train.log": body}, {"name": "Crashed"})
    (result,) = records.import_records(session, tmp_path)
    (run,) = runs_of(session, session.get(Experiment, result.experiment_id))
    assert (run.status, run.reason, run.seed, run.val_bpb) == (
        "failed", "the log has no final metric line", 11, None)
    assert result.n_seeds == 0 and result.mean_val_bpb is None
    assert result.disagreements == [{"field": "logs", "stated": None, "logs": None,
                                     "note": "no train log with a final score"}]


def test_a_size_the_log_gives_in_megabytes_or_not_at_all_is_read_as_reviewers_read_it(
        session: Session, tmp_path: Path) -> None:
    """Non-record logs: a total only in megabytes counts at its most; a log with no size takes
    submission.json's; over the cap either way is not eligible, and the run says where the
    size came from."""
    score = "final_int8_zlib_roundtrip_exact val_loss:2.0 val_bpb:1.2 eval_time:1500ms\n"
    megabytes = "seed:1\nstep:10/10 val_loss:2.1 val_bpb:1.25 train_time:9000ms\n" \
        "  INT4: 15.67MB model + 0.077MB code = {total}/16.00MB FITS\n" + score
    silent = "seed:2\nstep:10/10 val_loss:2.1 val_bpb:1.25 train_time:9000ms\n" + score
    for name, log, stated in (("2026-01-04_Fits", megabytes.format(total="15.75"), None),
                              ("2026-01-05_MayPass", megabytes.format(total="16.00"), None),
                              ("2026-01-06_Stated", silent, 15_702_333),
                              ("2026-01-07_StatedOver", silent, 16_000_001),
                              ("2026-01-08_Silent", silent, None)):
        make_folder(tmp_path, name, {"train.log": log.encode()},
                    {"name": name} | ({"bytes_total": stated} if stated else {}))
    results = {r.key.split("/")[1]: r for r in records.import_records(session, tmp_path)}
    found = {name: runs_of(session, session.get(Experiment, r.experiment_id))[0] for name, r in results.items()}
    assert (found["2026-01-04_Fits"].bytes_total, found["2026-01-04_Fits"].reasons) == (15_755_000, [])
    assert found["2026-01-04_Fits"].results["log"]["bytes_total_from"] == "the log's megabytes, rounded up"
    assert found["2026-01-05_MayPass"].reasons == [
        "the log states the size only in megabytes: up to 16,005,000 bytes, which may pass 16,000,000"]
    assert (found["2026-01-06_Stated"].bytes_total, found["2026-01-06_Stated"].reasons) == (15_702_333, [])
    assert found["2026-01-06_Stated"].results["log"]["bytes_total_from"] == "submission.json"
    assert found["2026-01-07_StatedOver"].reasons == [
        "bytes_total 16,000,001 > 16,000,000 (as submission.json states)"]
    assert found["2026-01-08_Silent"].reasons == ["artifact size not stated in the log"]


def test_a_folder_without_logs_imports_nothing(session: Session, tmp_path: Path) -> None:
    make_folder(tmp_path, "2026-01-04_Empty", {}, {"name": "Empty", "val_bpb": 1.2})
    (result,) = records.import_records(session, tmp_path)
    assert result.experiment_id is None and not result.created
    assert session.exec(select(Experiment)).all() == []


def test_a_missing_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a directory"):
        records.find_record_folders(tmp_path / "nope")


def seed_log(seed: int, bpb: float, loss: float, total: int) -> records.SeedLog:
    parsed = {"score": {"tag": "t", "val_bpb": bpb, "val_loss": loss}, "bytes_total": total,
              "code_bytes": 1000, "steps": 10}
    return records.SeedLog(file=f"s{seed}.log", sha256="", data=b"", parsed=parsed, seed=seed)


def test_stated_values_agree_within_the_decimals_they_show() -> None:
    logs = [seed_log(1, 1.11922988, 1.88976776, 15_977_386), seed_log(2, 1.12002032, 1.89, 15_876_510),
            seed_log(3, 1.11888882, 1.88, 15_990_006)]
    # The mean 1.11937967 rounded to 4 decimals; the JSON "1.1194" agrees, "1.1196" does not.
    assert records.disagreements({"val_bpb": 1.1194, "bytes_total": 15_990_006}, logs) == []
    (found,) = records.disagreements({"mean_val_bpb": 1.1196}, logs)
    assert found["field"] == "mean_val_bpb" and found["note"].startswith("matches neither")
    (mean_bytes,) = records.disagreements({"bytes_total": 15_947_967}, logs)
    assert mean_bytes["note"] == "is the mean over 3 seeds, not the largest"
    (as_dict,) = records.disagreements({"seeds": {"1": 1.11922988, "2": 1.1300}}, logs[:2])
    assert as_dict["field"] == "seeds.2.val_bpb" and as_dict["stated"] == 1.13
    missing = records.disagreements({"seeds": {"1": 1.11922988, "2": 1.12002032}}, logs)
    assert [d["field"] for d in missing] == ["seeds"]
    assert missing[0]["note"] == "log(s) of seed(s) [3] are not listed"


def test_log_reasons_apply_the_challenge_limits() -> None:
    parsed = {"score": {"val_bpb": 1.1}, "bytes_total": 16_000_000, "train_time_ms": 600_000,
              "eval_time_ms": 600_000}
    assert records.log_reasons(parsed) == []
    late = {**parsed, "bytes_total": 16_000_001, "train_time_ms": 600_038, "eval_time_ms": None}
    assert records.log_reasons(late) == ["bytes_total 16,000,001 > 16,000,000",
                                         "train time 600.038 s > 600 s (step time unknown)",
                                         "eval time not stated in the log"]


def test_training_may_end_past_the_cap_by_the_steps_the_official_script_allows() -> None:
    # The baseline's own log: "stopping_early: wallclock_cap train_time:600038ms
    # step:13780/20000", its last logged steps at 43.73 ms each.
    parsed = {"score": {"val_bpb": 1.2}, "bytes_total": 15_000_000, "eval_time_ms": 1_000,
              "train_time_ms": 600_038, "step_ms": 43.73}
    assert records.log_reasons(parsed) == []
    at_the_boundary = {**parsed, "train_time_ms": 600_086, "step_ms": 43.0}
    assert records.log_reasons(at_the_boundary) == []  # the last step and one still running
    just_over = {**parsed, "train_time_ms": 600_090, "step_ms": 43.0}
    assert records.log_reasons(just_over) == [
        "train time 600.090 s > 600 s: 0.090 s over, 2.1 steps of 43.0 ms, more than the last "
        "step (and the one the GPU was still running) that the official script lets pass the cap"]
    assert records.log_reasons({**parsed, "train_time_ms": 612_000, "step_ms": 85.0})[0].startswith(
        "train time 612.000 s > 600 s: 12.000 s over, 141.2 steps of 85.0 ms")


def test_the_time_rule_reads_the_last_steps_pace_from_the_log() -> None:
    baseline = parse_log(record_log("naive_baseline.log"))
    # step:13750 at 598726 ms, step:13780 at 600038 ms: 43.733 ms a step.
    assert (baseline["train_time_ms"], baseline["step_ms"]) == (600_038, 43.733)
    assert not [r for r in records.log_reasons(baseline) if r.startswith("train time")]


def test_the_worker_and_the_reconciler_leave_imported_runs_alone(
        session: Session, engine: Any, tree: Path) -> None:
    from server.config import get_settings
    from worker import reconciler
    from worker.director import RunDirector

    records.import_records(session, tree)
    before = [(r.id, r.status, r.fence, r.lease_owner, r.next_check_at) for r in session.exec(select(Run)).all()]
    session.commit()
    director = RunDirector(get_settings(), engine)
    woken: list[int] = []
    assert reconciler.wake_due_runs(director, enqueue=woken.append) == [] and woken == []
    reconciler.finalize_ended_experiments(director)
    reconciler.release_stray_pods(director)
    assert [director.advance(run_id) for run_id, *_ in before] == [False] * len(before)
    session.expire_all()
    after = [(r.id, r.status, r.fence, r.lease_owner, r.next_check_at) for r in session.exec(select(Run)).all()]
    assert after == before
    assert {e.status for e in session.exec(select(Experiment)).all()} == {"finished"}


def test_odd_submission_values_are_stored_safely(session: Session, tmp_path: Path) -> None:
    body = ("seed:99999999999\nstep:100/100 val_loss:2.5 val_bpb:1.5 train_time:1000ms step_avg:10.00ms\n"
            "final_int8_zlib_roundtrip_exact val_loss:2.50000000 val_bpb:1.50000000\n")
    folder = make_folder(tmp_path, "2026-01-05_Odd", {"train_seed8.log": body.encode()}, None)
    (folder / "submission.json").write_text(
        '{"name": "odd\\u0000 name", "val_bpb": NaN, "bytes_total": "about 15MB", "date": "soon",'
        ' "seeds": [99999999999]}')
    (result,) = records.import_records(session, tmp_path)
    experiment = session.get(Experiment, result.experiment_id)
    assert experiment.name == "odd name"
    assert experiment.source["submission"]["val_bpb"] is None
    assert experiment.created_at.date().isoformat() == "2026-01-05"  # from the folder's name
    (run,) = runs_of(session, experiment)
    assert run.seed == 8  # the log's seed is no int32: the file name's is used
    assert [d["field"] for d in result.disagreements] == ["seeds"]


def test_imported_experiments_show_on_the_api_the_board_and_the_pages(
        client: Any, session: Session, tree: Path) -> None:
    records.import_records(session, tree)
    honest = by_key(session)[f"{TRACK}/2026-04-11_Honest"]
    run_id = runs_of(session, honest)[0].id
    session.commit()  # no open transaction: on SQLite it would hold the write lock
    shown = client.get(f"/api/experiments/{honest.id}")
    assert shown.status_code == 200
    assert shown.json()["provider"] == "import" and len(shown.json()["runs"]) == 3
    # An import's score is read from its logs: it is on the board of every score.
    board = client.get("/api/leaderboard", params={"provider": "import", "unverified": True}).json()
    assert honest.id in [entry["experiment_id"] for entry in board["data"]]
    for page in (f"/experiments/{honest.id}", f"/runs/{run_id}", "/"):
        assert client.get(page).status_code == 200, page
