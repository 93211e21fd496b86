"""Importing records folders as finished experiments, one run per counted seed log."""

import re
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from server import experiments, officialboard, scripts, tracks
from server.models import Experiment, LogChunk, Run, RunEvent, as_utc
from server.records.checks import (
    disagreement,
    disagreements,
    duplicate_disagreements,
    log_reasons,
    log_size,
)
from server.records.reader import (
    LOG_SUFFIXES,
    MAX_LOG_BYTES,
    SUBMISSION,
    RecordFolder,
    SeedLog,
    as_float,
    as_nonnegative_int,
    close_as_shown,
    files_below,
    find_record_folders,
    plain_file,
    read_record_folder,
    seed_entries,
)
from server.runlog import add_log_chunks
from server.states import ExperimentStatus, RunStatus

IMPORT_PROVIDER = "import"
IMPORT_PRESET = "script"  # a community train_gpt.py, not one of the trainer's presets
CHUNK_BYTES = 64 * 1024  # LogChunk rows of whole lines, at most this long each
_DATE_IN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})")


@dataclass
class ImportResult:
    key: str
    experiment_id: int | None
    created: bool  # False: this folder was imported before (or had nothing to import)
    name: str = ""
    n_seeds: int = 0
    mean_val_bpb: float | None = None
    eligible: bool = False
    reasons: list[str] = field(default_factory=list)
    disagreements: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    track: str = ""
    date: str = ""  # the record's date, YYYY-MM-DD
    accepted: bool | None = None  # listed on the challenge's leaderboard; None: not known
    official_score: float | None = None  # the leaderboard's score for it
    stated_val_bpb: float | None = None  # submission.json's val_bpb
    test: dict[str, Any] | None = None  # the record test: units, delta, p, and its reference
    rule: str = ""  # what an accepted non-record verdict checked, in words ("" on the record track)
    official_note: str = ""  # where the official score comes from, when it is not Caddie's mean


# --- import --------------------------------------------------------------------------


def import_records(session: Session, root: Path, *, reference_bpb: float | None = None,
                   readme: Path | None = None) -> list[ImportResult]:
    """Import every records folder under `root`; folders imported before are left as they are.
    Folders are read in path order (their dates within a track), so each is judged against
    the records before it. `readme`: the challenge's README.md whose leaderboard tables say
    which folders it accepted (default: found in `root` or above it; none: unknown)."""
    folders = find_record_folders(root)
    readme = readme or officialboard.find_readme(root)
    rows = officialboard.read_rows(readme) if readme is not None else None
    imported = imported_keys(session)
    session.commit()  # ends the read: on SQLite an open transaction holds the write lock
    results = []
    for folder in folders:
        record = read_record_folder(folder)
        if record.key in imported:
            results.append(_already(session, record.key, imported[record.key]))
        else:
            results.append(import_record(session, record, reference_bpb=reference_bpb,
                                         official_rows=rows))
            if results[-1].experiment_id is not None:
                imported[record.key] = results[-1].experiment_id
        session.commit()
    return results


def imported_keys(session: Session) -> dict[str, int]:
    """`<track>/<folder>` of every imported records folder, to its experiment's id."""
    rows = session.exec(select(Experiment.id, Experiment.source)
                        .where(Experiment.provider == IMPORT_PROVIDER)).all()
    return {source["key"]: experiment_id for experiment_id, source in rows
            if isinstance(source, dict) and "key" in source and experiment_id is not None}


def _already(session: Session, key: str, experiment_id: int) -> ImportResult:
    experiment = experiments.get_experiment(session, experiment_id)
    source = experiment.source or {}
    return ImportResult(key=key, experiment_id=experiment_id, created=False, name=experiment.name,
                        n_seeds=experiment.n_succeeded, mean_val_bpb=experiment.mean_val_bpb,
                        eligible=experiment.eligible, reasons=list(experiment.reasons),
                        disagreements=list(source.get("disagreements", [])),
                        notes=[f"already imported as experiment {experiment_id}"],
                        **_verdict_fields(experiment))


def _verdict_fields(experiment: Experiment) -> dict[str, Any]:
    """The experiment's verdict beside the challenge's, for ImportResult."""
    source = experiment.source or {}
    stats = experiment.stats or {}
    test = stats.get("record_test") or stats
    keep = ("units", "delta", "delta_bpb", "p", "threshold", "n", "bytes_per_token", "reference", "note")
    return {"track": experiment.track, "date": as_utc(experiment.record_date).date().isoformat(),
            "accepted": experiment.accepted,
            "official_score": (source.get("official") or {}).get("score"),
            "official_note": str((source.get("official") or {}).get("note") or ""),
            "stated_val_bpb": as_float((source.get("submission") or {}).get("val_bpb")),
            "test": {key: test.get(key) for key in keep} if test else None,
            "rule": str(stats.get("rule") or "")}


def import_record(session: Session, record: RecordFolder, *, reference_bpb: float | None = None,
                  official_rows: list[officialboard.Row] | None = None) -> ImportResult:
    """One finished experiment from one records folder, in one transaction. With the
    official leaderboard's rows, `accepted` says whether it lists the folder."""
    if not record.logs:
        return ImportResult(key=record.key, experiment_id=None, created=False,
                            name=clean_text(record.submission.get("name")) or record.path.name,
                            track=tracks.from_folder(record.path.parent.name),
                            date=_date(record.submission.get("date"), record.path.name).date().isoformat(),
                            stated_val_bpb=as_float(record.submission.get("val_bpb")),
                            notes=[*record.notes, _nothing_imported(record.path)])
    found = disagreements(record.submission, record.logs) + duplicate_disagreements(record)
    experiment = _new_experiment(record, found, reference_bpb)
    if official_rows is not None:
        row = _official_row(record, experiment, official_rows)
        experiment.accepted = row is not None
        if row is not None:
            note = official_note(row.score, record)
            if note:
                found.append(disagreement("official", row.score, _mean_of(record.logs), note))
            experiment.source = {**(experiment.source or {}), "official": {
                "run": row.run, "score": row.score, "date": row.date, "author": row.author,
                "note": note}, "disagreements": found}
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    scripts.store_files(session, experiment.id, record.code)
    stated_bytes = as_nonnegative_int(record.submission.get("bytes_total"))  # for logs that state no size
    for log in record.logs:
        _add_run(session, experiment.id, log, experiment.track, stated_bytes)
    # Commits; an import is not news, so no webhook per folder.
    experiments.finalize_experiment(session, experiment.id, announce=False)
    session.refresh(experiment)
    return ImportResult(key=record.key, experiment_id=experiment.id, created=True,
                        name=experiment.name, n_seeds=experiment.n_succeeded,
                        mean_val_bpb=experiment.mean_val_bpb, eligible=experiment.eligible,
                        reasons=list(experiment.reasons), disagreements=found, notes=record.notes,
                        **_verdict_fields(experiment))


def _nothing_imported(folder: Path) -> str:
    """Why a folder gave no experiment, with the files it does hold."""
    files = [f"{path.relative_to(folder).as_posix()}{' (empty)' if _empty(path) else ''}"
             for path in files_below(folder)]
    return (f"nothing imported: no train log (a file with a step or final-score line) among "
            f"{', '.join(files) or 'no files'}")


def _empty(path: Path) -> bool:
    try:
        return plain_file(path) and path.stat().st_size == 0
    except OSError:
        return False


def official_note(official: float | None, record: RecordFolder) -> str | None:
    """Where the leaderboard's score comes from when Caddie's mean is not it (to the table's
    4 decimals): a seed's log, a val_bpb submission.json states, a log not counted, a line of
    the folder's files; None when the mean is the official score (or there is none)."""
    mean = _mean_of(record.logs)
    shown = f"{official:.4f}" if official is not None else ""
    if official is None or (mean is not None and close_as_shown(official, mean, shown)):
        return None
    ours = (f"Caddie's mean of {len([log for log in record.logs if log.scored])} seed(s) "
            f"{mean:.5f}" if mean is not None else "no scored log")
    matches = [label for label, value in _official_candidates(record)
               if close_as_shown(official, value, shown)]
    if matches:
        return f"official {shown} = {matches[0]}; {ours}"
    lines = _lines_with(record.path, shown)
    if lines:
        return f"official {shown} is no final score Caddie counts; it appears in {lines[0]}; {ours}"
    return f"official {shown} not found in the folder's files; {ours}"


def _official_candidates(record: RecordFolder) -> list[tuple[str, float]]:
    """(what, val_bpb) the folder holds, in the order an explanation prefers them."""
    found = [(f"seed {log.seed}'s log ({log.file}, {log.val_bpb:.5f})", log.val_bpb)
             for log in record.logs if log.val_bpb is not None]
    stated = record.submission
    for key, value in stated.items():
        number = as_float(value) if "bpb" in key else None
        if number is not None:
            found.append((f"submission.json's {key} ({value})", number))
    for source_name, seed, entry in seed_entries(stated):
        value = as_float(entry.get("val_bpb"))
        if value is not None:
            found.append((f"submission.json's {source_name} for seed {seed} ({value})", value))
    found += [(f"a log of seed {d['seed']} not counted ({d['file']}, {d['val_bpb']:.5f})", d["val_bpb"])
              for d in record.duplicates if d.get("val_bpb") is not None]
    return found


def _lines_with(folder: Path, number: str) -> list[str]:
    """`file line N: "..."` for each line of the folder's small text files that holds `number`
    (a README's title, a sliding-window score line of a log)."""
    found = []
    for name, text in _folder_texts(folder):
        for index, line in enumerate(text.splitlines(), start=1):
            if re.search(rf"(?<![\d.]){re.escape(number)}(?!\d)", line):
                found.append(f'{name} line {index}: "{line.strip()[:120]}"')
                break
    logs_first = sorted(found, key=lambda line: not line.split(" line ")[0].endswith(LOG_SUFFIXES))
    return logs_first


def _folder_texts(folder: Path) -> list[tuple[str, str]]:
    """(name, text) of the folder's text files (logs, README.md, notes) of at most 50 MB."""
    texts = []
    for path in files_below(folder):
        if path.suffix not in (*LOG_SUFFIXES, ".md", ".json", ".tsv") or not plain_file(path):
            continue
        try:
            if path.stat().st_size <= MAX_LOG_BYTES:
                texts.append((path.relative_to(folder).as_posix(),
                               path.read_text(encoding="utf-8", errors="replace")))
        except OSError:
            continue
    return texts


def _mean_of(logs: list[SeedLog]) -> float | None:
    scores = [log.val_bpb for log in logs if log.val_bpb is not None]
    return statistics.fmean(scores) if scores else None


def _new_experiment(record: RecordFolder, found: list[dict[str, Any]],
                    reference_bpb: float | None) -> Experiment:
    stated = record.submission
    name = clean_text(stated.get("name")) or record.path.name
    date = _date(stated.get("date"), record.path.name)
    source = {"key": record.key, "path": str(record.path.resolve()), "submission": stated,
              "disagreements": found, "notes": record.notes,
              "logs": [{"file": log.file, "sha256": log.sha256, "seed": log.seed,
                        "seed_from": log.seed_from, "counted": True,
                        "why": log.chosen_why or None, "training_from": log.training_from}
                       for log in record.logs],
              "duplicate_logs": record.duplicates}
    return Experiment(
        name=name[:200], author=clean_text(stated.get("author"))[:100], preset=IMPORT_PRESET,
        seeds=[log.seed for log in record.logs], provider=IMPORT_PROVIDER, kind="script",
        status=ExperimentStatus.running, created_at=date, record_date=date,
        track=tracks.from_folder(record.path.parent.name), reference_bpb=reference_bpb,
        source=source)


def _official_row(record: RecordFolder, experiment: Experiment,
                  rows: list[officialboard.Row]) -> officialboard.Row | None:
    stated = as_float(record.submission.get("val_bpb"))
    scores = [log.val_bpb for log in record.logs if log.val_bpb is not None]
    score = stated if stated is not None else (statistics.fmean(scores) if scores else None)
    authors = {experiment.author, clean_text(record.submission.get("github_id"))}
    return officialboard.accepted_row(rows, key=record.key, track=experiment.track, val_bpb=score,
                                      date=as_utc(experiment.record_date).date().isoformat(),
                                      authors=authors, pulls=_pulls_mentioned(record.path))


_PULL_MENTION = re.compile(r"(?:#|/pull/|\bPR ?)(\d{2,6})\b")


def _pulls_mentioned(folder: Path) -> set[int]:
    """Pull request numbers the folder's README.md and submission.json mention ("PR #1851")."""
    return {int(number) for name, text in _folder_texts(folder)
            if name in ("README.md", SUBMISSION) for number in _PULL_MENTION.findall(text)}


def _add_run(session: Session, experiment_id: int, log: SeedLog, track: str, stated_bytes: int | None) -> None:
    parsed = log.parsed
    status = RunStatus.succeeded if log.scored else RunStatus.failed
    reasons = log_reasons(parsed, track, stated_bytes=stated_bytes)
    size, size_from = log_size(parsed, stated_bytes)
    run = Run(experiment_id=experiment_id, seed=log.seed, status=status,
              reason=None if log.scored else "the log has no final metric line",
              val_loss=log.val_loss, val_bpb=log.val_bpb, steps=parsed["steps"],
              train_time_s=_seconds(parsed["train_time_ms"]), eval_time_s=_seconds(parsed["eval_time_ms"]),
              code_bytes=parsed["code_bytes"], model_bytes=parsed["model_bytes"],
              bytes_total=size, val_tokens=parsed["val_tokens"],
              eligible=log.scored and not reasons, reasons=reasons,
              results={"log": {"file": log.file, "sha256": log.sha256, "parsed": parsed,
                               **({"bytes_total_from": size_from} if size_from else {})}})
    session.add(run)
    session.flush()
    assert run.id is not None
    session.add(RunEvent(run_id=run.id, from_status=None, to_status=status,
                         reason=f"imported from {log.file}"))
    run.log_offset = _store_log(session, run.id, log.data)


def _store_log(session: Session, run_id: int, data: bytes) -> int:
    """The log as LogChunk rows of whole lines; returns its length in bytes."""
    return add_log_chunks(session, run_id, 0, data, max_bytes=CHUNK_BYTES, complete=True)


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def clean_text(value: Any) -> str:
    """A stated string without NUL characters or surrounding spaces; "" for a non-string."""
    return value.replace("\x00", "").strip() if isinstance(value, str) else ""


def _date(stated: Any, folder_name: str) -> datetime:
    """The submission's date ("2026-03-18T14:56:29Z" or "2026-04-27"), else the folder's."""
    in_name = _DATE_IN_NAME.match(folder_name)
    for text in (stated if isinstance(stated, str) else None, in_name and in_name.group(1)):
        if not text:
            continue
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            continue
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC)


def run_log_bytes(session: Session, run: Run) -> bytes:
    """A run's stored train log, its LogChunk rows joined in order."""
    chunks = session.exec(select(LogChunk.text).where(LogChunk.run_id == run.id)
                          .order_by(col(LogChunk.offset))).all()
    return "".join(chunks).encode("utf-8")
