"""`server.records` against hostile trees: symlinks out of DIR, nested log folders, odd
submission.json values, and names that must not let an export escape its folder."""

import io
import json
import zipfile
from pathlib import Path

import pytest
from sqlmodel import Session, select

from server import export, records
from server.models import Experiment, ExperimentFile, LogChunk, Run
from tests.server.test_records import TRACK, fixture_log, make_folder

SECRET = "caddie-secret-0123456789abcdef"


def stored_text(session: Session) -> str:
    """Everything an import stored that could carry a file's content."""
    files = [bytes(f.content).decode() for f in session.exec(select(ExperimentFile)).all()]
    chunks = list(session.exec(select(LogChunk.text)).all())
    sources = [json.dumps(e.source) for e in session.exec(select(Experiment)).all()]
    return "\n".join([*files, *chunks, *sources])


def test_symlinks_never_carry_files_from_outside_the_tree(session: Session, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "id_ed25519").write_text(f"{SECRET}\n")
    log = fixture_log("sp4096_seed42.log")
    (outside / "train_seed7.log").write_bytes(log + f"# {SECRET}\n".encode())
    stray = make_folder(outside, "2026-01-09_Elsewhere", {"train_seed9.log": log}, {"name": "Elsewhere"})
    root = tmp_path / "records"
    folder = make_folder(root, "2026-01-08_Links", {"train_seed42.log": log}, {"name": "Links"})
    (folder / "train_gpt.py").unlink()
    (folder / "train_gpt.py").symlink_to(outside / "id_ed25519")
    (folder / "train_seed7.log").symlink_to(outside / "train_seed7.log")
    (root / TRACK / "2026-01-09_Elsewhere").symlink_to(stray, target_is_directory=True)

    results = records.import_records(session, root)

    assert [r.key for r in results] == [f"{TRACK}/2026-01-08_Links"]
    (experiment,) = session.exec(select(Experiment)).all()
    assert [run.seed for run in session.exec(select(Run)).all()] == [42]
    assert SECRET not in stored_text(session)
    assert {f.name for f in session.exec(select(ExperimentFile)).all()} == {"requirements.txt"}
    notes = " ".join(results[0].notes)
    assert "train_gpt.py" in notes and "train_seed7.log" in notes and "symbolic link" in notes


def test_a_log_folder_inside_a_record_is_part_of_it_not_a_record_of_its_own(
        session: Session, tmp_path: Path) -> None:
    root = tmp_path / "records"
    folder = make_folder(root, "2026-01-10_Nested", {}, {"name": "Nested"})
    (folder / "logs").mkdir()
    (folder / "logs" / "train_seed42.txt").write_bytes(fixture_log("sp4096_seed42.log"))
    # A track folder's own notes are no train log: it is no record of its own either.
    (root / TRACK / "notes.txt").write_text("Records of the 10-minute track.\n")

    results = records.import_records(session, root)

    assert [(r.key, r.created) for r in results] == [(f"{TRACK}/2026-01-10_Nested", True)]
    assert len(session.exec(select(Run)).all()) == 1


@pytest.mark.parametrize("text, note", [
    (json.dumps({"name": "Huge", "bytes_total": 10**400, "val_bpb": 10**400}), None),
    ('{"name": "Digits", "bytes_total": 1' + "0" * 5000 + "}", "unreadable"),
    ("[" * 100_000 + "]" * 100_000, "unreadable"),
    ('{"name": "Deep", "extra": ' + "[" * 900 + "1" + "]" * 900 + "}", None),
    (json.dumps({"name": "x" * 3_000_000}), "over"),

])
def test_odd_submission_json_is_a_note_not_a_crash(session: Session, tmp_path: Path, text: str,
                                                   note: str | None) -> None:
    folder = make_folder(tmp_path, "2026-01-11_Odd", {"train_seed42.log": fixture_log("sp4096_seed42.log")},
                         None)
    (folder / "submission.json").write_text(text)

    (result,) = records.import_records(session, tmp_path)

    assert result.created and result.n_seeds == 1
    if note is not None:
        assert any("submission.json" in n and note in n for n in result.notes), result.notes
    experiment = session.get(Experiment, result.experiment_id)
    assert export.export_files(session, experiment.id)["submission.json"]


@pytest.mark.parametrize("date", ["../../../../tmp/escaped", "/etc/x", "..", "2026-01-12/../.."])
def test_an_export_folder_name_never_leaves_its_folder(session: Session, tmp_path: Path, date: str) -> None:
    make_folder(tmp_path, "2026-01-12_Dated", {"train_seed42.log": fixture_log("sp4096_seed42.log")},
                {"name": "Dated", "date": date})
    (result,) = records.import_records(session, tmp_path)
    experiment = session.get(Experiment, result.experiment_id)

    top = export.folder_name(experiment)

    assert "/" not in top and "\\" not in top and ".." not in top
    assert top.startswith("2026-01-12_")
    with zipfile.ZipFile(io.BytesIO(export.export_zip(session, experiment.id))) as archive:
        assert all(name.startswith(f"{top}/") and ".." not in name.split("/") for name in archive.namelist())


def test_a_long_line_of_multibyte_text_is_stored_byte_for_byte(session: Session, tmp_path: Path) -> None:
    log = fixture_log("sp4096_seed42.log")
    # 80,002 bytes, longer than a LogChunk, whose 64 KiB mark falls inside a character.
    long_line = ("x" + "é" * 40_000 + "\n").encode()
    make_folder(tmp_path, "2026-01-13_Long", {"train_seed42.log": long_line + log}, {"name": "Long"})
    (result,) = records.import_records(session, tmp_path)

    exported = export.export_files(session, result.experiment_id)

    assert exported["train_seed42.log"] == long_line + log
