"""Records folders of the challenge repository: imported as finished experiments, and written
from ours for a pull request.

A records folder (`records/<track>/<date>_<name>/`) holds `submission.json` (the submitter's
stated values), `README.md`, the counted code (`train_gpt.py`) and one train log per seed.

Import reads every such folder under a directory into one finished experiment with one run
per seed log, its numbers read by `server.logparse`, judged by the rules a log can show
(`log_reasons`), and lists where the stated values disagree with the logs. Imported
experiments have provider `import`: their runs are created already ended, with no pod, so
neither the worker nor the reconciler ever acts on them. A folder is imported once, keyed by
`<track>/<folder>`.

Export writes the files of a records folder from an experiment (`export_files`), as a folder
or a zip.
"""

import hashlib
import io
import json
import math
import os
import re
import shutil
import statistics
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from server import experiments, policies, scripts, tracks
from server.config import get_settings
from server.eligibility import MAX_BYTES_TOTAL, MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS
from server.logparse import parse_log
from server.models import Experiment, LogChunk, Run, RunEvent
from server.states import ExperimentStatus, RunStatus

IMPORT_PROVIDER = "import"
IMPORT_PRESET = "script"  # a community train_gpt.py, not one of the trainer's presets
SUBMISSION = "submission.json"
LOG_SUFFIXES = (".log", ".txt")
NOT_LOGS = frozenset({"requirements.txt"})
MAX_LOG_BYTES = 50_000_000  # a real log with its quoted source is well under 1 MB
MAX_SUBMISSION_BYTES = 1_000_000  # real ones are a few KB
CHUNK_BYTES = 64 * 1024  # LogChunk rows of whole lines, at most this long each
# Files kept as the imported experiment's code (ExperimentFile rows), when present.
CODE_FILES = (scripts.ENTRYPOINT, scripts.REQUIREMENTS)
_SEED_IN_NAME = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_DATE_IN_NAME = re.compile(r"^(\d{4}-\d{2}-\d{2})")


@dataclass
class SeedLog:
    """One train log of a records folder, parsed."""

    file: str  # path inside the records folder
    sha256: str
    data: bytes
    parsed: dict[str, Any]
    seed: int = -1  # filled by _assign_seeds
    seed_from: str = "log"  # where the seed came from: log, file name, submission, order
    # The seed's one counted log: why it was chosen over the seed's other logs ("" if alone);
    # and, when it was an eval-only re-run, the log its training numbers come from.
    chosen_why: str = ""
    training_from: str | None = None

    @property
    def scored(self) -> bool:
        return self.parsed["score"] is not None

    @property
    def val_bpb(self) -> float | None:
        return self.parsed["score"]["val_bpb"] if self.scored else None

    @property
    def val_loss(self) -> float | None:
        return self.parsed["score"]["val_loss"] if self.scored else None


@dataclass
class RecordFolder:
    path: Path
    key: str  # "<track>/<folder>": the identity that makes a second import a no-op
    submission: dict[str, Any]
    logs: list[SeedLog]
    code: dict[str, str]  # file name -> text, the code the submission counted
    notes: list[str] = field(default_factory=list)
    # Logs of a seed that already has its counted log: {"file", "seed", "counted", "why"}.
    duplicates: list[dict[str, Any]] = field(default_factory=list)


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


# --- reading a records tree ------------------------------------------------------------


def find_record_folders(root: Path) -> list[Path]:
    """Folders under `root` (itself included) that directly hold a submission JSON or a train
    log. A folder inside one (`logs/`) is part of it, not a record of its own. Symbolic links
    are never followed, so a tree cannot bring in files from outside it."""
    if not root.is_dir():
        raise ValueError(f"{root} is not a directory")
    found: list[Path] = []
    for folder in _folders(root):
        if not any(folder.is_relative_to(record) for record in found) and _is_record_folder(folder):
            found.append(folder)
    return found


def _folders(root: Path) -> list[Path]:
    """`root` and every real folder below it (no symbolic link), parents before children."""
    below = [Path(top) / name for top, names, _files in os.walk(root) for name in names]
    return [root, *sorted(folder for folder in below if not folder.is_symlink())]


def _files_below(folder: Path) -> list[Path]:
    """Every file entry under `folder` at any depth, symbolic links included (not followed)."""
    return sorted(Path(top) / name for top, _names, files in os.walk(folder) for name in files)


def _plain_file(path: Path) -> bool:
    return path.is_file() and not path.is_symlink()


def _is_record_folder(folder: Path) -> bool:
    files = [f for f in folder.iterdir() if _plain_file(f)]
    return any(_is_submission(f) for f in files) or any(
        _may_be_log(f) and _maybe_train_log(f) for f in files)


def _maybe_train_log(path: Path) -> bool:
    """A log too big to read counts (the import says so); else its parse must look like one."""
    try:
        return path.stat().st_size > MAX_LOG_BYTES or _looks_like_train_log(parse_log(path.read_bytes()))
    except OSError:
        return False


def _is_submission(path: Path) -> bool:
    return path.name.startswith("submission") and path.suffix == ".json"


def _may_be_log(path: Path) -> bool:
    return path.suffix in LOG_SUFFIXES and path.name not in NOT_LOGS


def read_record_folder(folder: Path) -> RecordFolder:
    """The folder's stated values, its scored-or-not train logs and its code."""
    notes: list[str] = []
    record = RecordFolder(path=folder, key=f"{folder.parent.name}/{folder.name}",
                          submission=_read_submission(folder, notes), logs=_read_logs(folder, notes),
                          code=_read_code(folder, notes), notes=notes)
    _assign_seeds(record)
    _one_log_per_seed(record)
    return record


def _read_submission(folder: Path, notes: list[str]) -> dict[str, Any]:
    candidates = sorted(f for f in folder.iterdir() if _plain_file(f) and _is_submission(f))
    if not candidates:
        notes.append("no submission.json: nothing stated to compare with")
        return {}
    chosen = next((f for f in candidates if f.name == SUBMISSION), candidates[0])
    try:
        if chosen.stat().st_size > MAX_SUBMISSION_BYTES:
            notes.append(f"{chosen.name} is over {MAX_SUBMISSION_BYTES:,} bytes, not read; "
                         "nothing stated to compare with")
            return {}
        value = _finite(json.loads(chosen.read_text(encoding="utf-8")))
    except (OSError, ValueError, RecursionError) as error:
        # ValueError: bad JSON, bad UTF-8, or an integer of more digits than Python converts.
        notes.append(f"{chosen.name} is unreadable ({type(error).__name__}: {str(error)[:200]}); "
                     "nothing stated to compare with")
        return {}
    if not isinstance(value, dict):
        notes.append(f"{chosen.name} is not a JSON object; nothing stated to compare with")
        return {}
    return value


def _finite(value: Any) -> Any:
    """The JSON with NaN and infinities (which Python's json reads) as null: SQL JSON refuses them."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def _read_logs(folder: Path, notes: list[str]) -> list[SeedLog]:
    logs: list[SeedLog] = []
    seen: set[str] = set()
    for path in _files_below(folder):
        name = path.relative_to(folder).as_posix()
        if not _may_be_log(path):
            continue
        if path.is_symlink():
            notes.append(f"{name}: a symbolic link, not followed")
            continue
        try:
            if path.stat().st_size > MAX_LOG_BYTES:
                notes.append(f"{name}: over {MAX_LOG_BYTES:,} bytes, not read")
                continue
            data = path.read_bytes()
        except OSError as error:
            notes.append(f"{name}: unreadable ({type(error).__name__}), not read")
            continue
        digest = hashlib.sha256(data).hexdigest()
        parsed = parse_log(data)
        if digest in seen or not _looks_like_train_log(parsed):
            continue  # a copy of a log already read, or a text file that is no train log
        seen.add(digest)
        logs.append(SeedLog(file=name, sha256=digest, data=data, parsed=parsed))
    return logs


def _looks_like_train_log(parsed: dict[str, Any]) -> bool:
    return parsed["score"] is not None or parsed["steps"] is not None


def _read_code(folder: Path, notes: list[str]) -> dict[str, str]:
    code: dict[str, str] = {}
    for name in CODE_FILES:
        path = folder / name
        if path.is_symlink():
            notes.append(f"{name} not kept: a symbolic link, not followed")
            continue
        if not path.is_file():
            continue
        try:
            code[name] = scripts.check_files({name: path.read_text(encoding="utf-8")})[name]
        except (OSError, ValueError) as error:
            notes.append(f"{name} not kept: {error}")
    return code


def _assign_seeds(record: RecordFolder) -> None:
    """The log's own seed, else one in its file name, else the submission's only seed, else
    the lowest number no other log uses (said in a note)."""
    stated = stated_seeds(record.submission)
    for log in record.logs:
        in_name = _SEED_IN_NAME.search(Path(log.file).name)
        if _seed_or_none(log.parsed["seed"]) is not None:
            log.seed = int(log.parsed["seed"])
        elif in_name and _seed_or_none(in_name.group(1)) is not None:
            log.seed, log.seed_from = int(in_name.group(1)), "file name"
        elif len(record.logs) == 1 and len(stated) == 1 and _seed_or_none(stated[0]) is not None:
            log.seed, log.seed_from = stated[0], "submission"
    used = {log.seed for log in record.logs if log.seed >= 0}
    for log in record.logs:
        if log.seed < 0:
            log.seed = next(n for n in range(len(used) + len(record.logs) + 1) if n not in used)
            log.seed_from = "order"
            used.add(log.seed)
            record.notes.append(f"{log.file} states no seed; numbered {log.seed}")


def _one_log_per_seed(record: RecordFolder) -> None:
    """A seed is one sample, however many logs it left (re-runs, eval-only re-scorings of
    the same artifact): keep one log per seed and list the others as duplicates.

    The counted log is, in order: the one whose score the submission states for that seed
    (`seed_results`), the one whose score is the submission's `val_bpb`, else the last full
    run (a log that shows training) in file order, else the last scored one. An eval-only
    re-run that is counted takes its training numbers (time, steps, sizes) from the seed's
    training log, since it scored that run's artifact."""
    by_seed: dict[int, list[SeedLog]] = {}
    for log in record.logs:
        by_seed.setdefault(log.seed, []).append(log)
    kept: list[SeedLog] = []
    for seed, logs in by_seed.items():
        if len(logs) == 1:
            kept.append(logs[0])
            continue
        chosen, why = _counted_log(record.submission, seed, logs)
        chosen.chosen_why = why
        _borrow_training(chosen, logs)
        kept.append(chosen)
        others = [log for log in logs if log is not chosen]
        record.duplicates += [{"file": log.file, "seed": seed, "counted": chosen.file,
                               "val_bpb": log.val_bpb, "why": why} for log in others]
        record.notes.append(f"seed {seed} has {len(logs)} logs; counted once, from {chosen.file} "
                            f"({why}); not counted: {', '.join(log.file for log in others)}")
    record.logs = kept


def _counted_log(submission: dict[str, Any], seed: int, logs: list[SeedLog]) -> tuple[SeedLog, str]:
    scored = [log for log in logs if log.scored]
    if not scored:
        return logs[-1], "none of them has a final score; the last in file order"
    for source_name, stated_seed, entry in _seed_entries(submission):
        stated = entry.get("val_bpb")
        match = [log for log in scored if stated_seed == seed and _float(stated) is not None
                 and _close(_float(stated), log.val_bpb or 0.0, stated)]
        if match:
            return match[-1], f"its val_bpb is the one submission.json's {source_name} states"
    stated = submission.get("val_bpb")
    match = [log for log in scored
             if _float(stated) is not None and _close(_float(stated), log.val_bpb or 0.0, stated)]
    if match:
        return match[-1], "its val_bpb is submission.json's val_bpb"
    trained = [log for log in scored if log.parsed["train_time_ms"] is not None]
    if trained:
        return trained[-1], "the last full run (training and score) in file order"
    return scored[-1], "the last scored log in file order"


_TRAINING_FIELDS = ("train_time_ms", "steps", "step_ms", "step_avg_ms", "bytes_total",
                    "code_bytes", "model_bytes", "val_tokens")


def _borrow_training(chosen: SeedLog, logs: list[SeedLog]) -> None:
    if chosen.parsed["train_time_ms"] is not None:
        return
    trained = [log for log in logs if log is not chosen and log.parsed["train_time_ms"] is not None]
    if not trained:
        return
    source = trained[-1]
    chosen.parsed = {**chosen.parsed, **{key: source.parsed.get(key) for key in _TRAINING_FIELDS
                                          if chosen.parsed.get(key) is None}}
    chosen.training_from = source.file


def _seed_or_none(value: Any) -> int | None:
    """A seed the run table can hold (non-negative int32, as the API takes them)."""
    seed = _int(value)
    return seed if seed is not None and seed < policies.SEED_LIMIT else None


def stated_seeds(submission: dict[str, Any]) -> list[int]:
    """Seeds the submission lists (`seeds` as a list or a dict, or `seed_results` keys)."""
    seeds: list[int] = []
    for source in (submission.get("seeds"), submission.get("seed_results")):
        items = source.keys() if isinstance(source, dict) else source if isinstance(source, list) else []
        for item in items:
            seed = _int(item)
            if seed is not None and seed not in seeds:
                seeds.append(seed)
    return seeds


# --- where the submission's word and the logs differ ---------------------------------


def disagreements(submission: dict[str, Any], logs: list[SeedLog]) -> list[dict[str, Any]]:
    """Each stated value the logs contradict: {"field", "stated", "logs", "note"}.

    Our reading of the fields (the one export writes): val_bpb and val_loss are the seed
    means, bytes_total the largest over seeds, bytes_code the largest code size a log
    states. Floats are equal within half a unit of the last decimal the JSON states.
    """
    scored = [log for log in logs if log.scored]
    found: list[dict[str, Any]] = []
    if not scored:
        if submission:
            found.append(_disagreement("logs", None, None, "no train log with a final score"))
        return found
    found += _mean_disagreement(submission, scored, "val_bpb", lambda log: log.val_bpb)
    found += _mean_disagreement(submission, scored, "val_loss", lambda log: log.val_loss)
    found += _max_disagreement(submission, scored, "bytes_total", "bytes_total")
    found += _max_disagreement(submission, scored, "bytes_code", "code_bytes")
    found += _seed_set_disagreement(submission, scored)
    found += _per_seed_disagreements(submission, scored)
    return found


def _disagreement(name: str, stated: Any, logs: Any, note: str) -> dict[str, Any]:
    return {"field": name, "stated": stated, "logs": logs, "note": note}


def _mean_disagreement(submission: dict[str, Any], scored: list[SeedLog], name: str,
                       value: Any) -> list[dict[str, Any]]:
    key = name if name in submission else f"mean_{name}"
    stated = _float(submission.get(key))
    values = {log.seed: value(log) for log in scored if value(log) is not None}
    if stated is None or not values:
        return []
    mean = statistics.fmean(values.values())
    if _close(stated, mean, submission.get(key)):
        return []
    same = [seed for seed, v in values.items() if _close(stated, v, submission.get(key))]
    note = (f"equals seed {same[0]}'s log, not the mean of {len(values)} seed(s)" if same
            else f"matches neither the mean of {len(values)} seed(s) nor any seed's log")
    return [_disagreement(key, stated, mean, note)]


def _max_disagreement(submission: dict[str, Any], scored: list[SeedLog], name: str,
                      parsed_key: str) -> list[dict[str, Any]]:
    stated = _float(submission.get(name))
    values = {log.seed: log.parsed[parsed_key] for log in scored if log.parsed[parsed_key] is not None}
    if stated is None or not values:
        return []
    largest = max(values.values())
    if stated == largest:
        return []
    same = [seed for seed, v in values.items() if v == stated]
    if same:
        note = f"equals seed {same[0]}'s log, not the largest over {len(values)} seed(s)"
    elif len(values) > 1 and round(statistics.fmean(values.values())) == round(stated):
        note = f"is the mean over {len(values)} seeds, not the largest"
    else:
        note = "matches no log"
    return [_disagreement(name, _whole(stated), largest, note)]


def _seed_set_disagreement(submission: dict[str, Any], scored: list[SeedLog]) -> list[dict[str, Any]]:
    stated = set(stated_seeds(submission))
    logged = {log.seed for log in scored}
    if not stated or stated == logged:
        return []
    parts = []
    if stated - logged:
        parts.append(f"no scored log for seed(s) {sorted(stated - logged)}")
    if logged - stated:
        parts.append(f"log(s) of seed(s) {sorted(logged - stated)} are not listed")
    return [_disagreement("seeds", sorted(stated), sorted(logged), "; ".join(parts))]


def _duplicate_disagreements(record: RecordFolder) -> list[dict[str, Any]]:
    """Each seed with more than one log, as a disagreement: which log counted and why."""
    seeds: dict[int, list[str]] = {}
    for duplicate in record.duplicates:
        seeds.setdefault(duplicate["seed"], []).append(duplicate["file"])
    found = []
    for log in record.logs:
        if log.seed in seeds:
            found.append(_disagreement(
                f"seeds.{log.seed}.logs", log.file, seeds[log.seed],
                f"{len(seeds[log.seed]) + 1} logs of seed {log.seed}, one sample: counted "
                f"{log.file} ({log.chosen_why}), not the others"))
    return found


# Per-seed fields of submission.json and the parser's name for each.
_SEED_FIELDS = (("val_bpb", "val_bpb"), ("val_loss", "val_loss"), ("bytes_total", "bytes_total"),
                ("artifact_bytes", "bytes_total"), ("steps", "steps"))


def _per_seed_disagreements(submission: dict[str, Any], scored: list[SeedLog]) -> list[dict[str, Any]]:
    by_seed = {log.seed: log for log in scored}
    found: list[dict[str, Any]] = []
    for source_name, stated_seed, entry in _seed_entries(submission):
        log = by_seed.get(stated_seed)
        if log is None:
            continue  # said once, by _seed_set_disagreement
        actual = {"val_bpb": log.val_bpb, "val_loss": log.val_loss, **log.parsed}
        for stated_name, parsed_name in _SEED_FIELDS:
            stated, value = entry.get(stated_name), actual.get(parsed_name)
            if _float(stated) is None or value is None or _close(_float(stated), value, stated):
                continue
            found.append(_disagreement(f"{source_name}.{stated_seed}.{stated_name}", stated, value,
                                       f"differs from {log.file}"))
    return found


def _seed_entries(submission: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(field, seed, {stated per-seed values}) from `seed_results` and a dict `seeds`."""
    entries = []
    for source_name in ("seed_results", "seeds"):
        source = submission.get(source_name)
        if not isinstance(source, dict):
            continue
        for key, value in source.items():
            seed = _int(key)
            if seed is None:
                continue
            entry = value if isinstance(value, dict) else {"val_bpb": value}
            entries.append((source_name, seed, entry))
    return entries


def _close(stated: float | None, actual: float, text: Any) -> bool:
    """Equal within half a unit of the last decimal `text` (the JSON value) shows."""
    if stated is None:
        return False
    shown = repr(float(text)) if isinstance(text, int | float) else str(text)
    decimals = len(shown.split(".")[1]) if "." in shown and "e" not in shown.lower() else 0
    return abs(stated - actual) <= 0.5 * 10.0 ** -decimals + 1e-12


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _float(value)
    return int(number) if number is not None and number == int(number) and number >= 0 else None


def _whole(value: float) -> int | float:
    return int(value) if value == int(value) else value


# --- our rules, as far as a log can show them --------------------------------------------


def log_reasons(parsed: dict[str, Any]) -> list[str]:
    """Why a run known only from its log is not record-eligible; empty when it is.

    The rules a log can show: a score, bytes_total <= 16,000,000, train and eval time
    <= 600 s each. What a log cannot prove (the hardware, the worker's clock, the full
    validation split, which scripts count differently) is not judged here.
    """
    reasons = []
    if parsed["score"] is None:
        reasons.append("no score: the log has no final metric line")
    total = parsed["bytes_total"]
    if total is None:
        reasons.append("artifact size not stated in the log")
    elif total > MAX_BYTES_TOTAL:
        reasons.append(f"bytes_total {total:,} > {MAX_BYTES_TOTAL:,}")
    for what, ms, cap in (("train", parsed["train_time_ms"], MAX_TRAIN_SECONDS),
                          ("eval", parsed["eval_time_ms"], MAX_EVAL_SECONDS)):
        if ms is None:
            reasons.append(f"{what} time not stated in the log")
        elif ms / 1000 > cap:
            reasons.append(f"{what} time {ms / 1000:.3f} s > {cap:.0f} s")
    return reasons


# --- import --------------------------------------------------------------------------


def import_records(session: Session, root: Path, *,
                   reference_bpb: float | None = None) -> list[ImportResult]:
    """Import every records folder under `root`; folders imported before are left as they are."""
    folders = find_record_folders(root)
    imported = _imported_keys(session)
    session.commit()  # ends the read: on SQLite an open transaction holds the write lock
    results = []
    for folder in folders:
        record = read_record_folder(folder)
        if record.key in imported:
            results.append(_already(session, record.key, imported[record.key]))
        else:
            results.append(import_record(session, record, reference_bpb=reference_bpb))
            if results[-1].experiment_id is not None:
                imported[record.key] = results[-1].experiment_id
        session.commit()
    return results


def _imported_keys(session: Session) -> dict[str, int]:
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
                        notes=[f"already imported as experiment {experiment_id}"])


def import_record(session: Session, record: RecordFolder, *,
                  reference_bpb: float | None = None) -> ImportResult:
    """One finished experiment from one records folder, in one transaction."""
    if not record.logs:
        return ImportResult(key=record.key, experiment_id=None, created=False,
                            notes=[*record.notes, "no train log: nothing imported"])
    found = disagreements(record.submission, record.logs) + _duplicate_disagreements(record)
    experiment = _new_experiment(record, found, reference_bpb)
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    scripts.store_files(session, experiment.id, record.code)
    for log in record.logs:
        _add_run(session, experiment.id, log)
    # Commits; an import is not news, so no webhook per folder.
    experiments.finalize_experiment(session, experiment.id, announce=False)
    session.refresh(experiment)
    return ImportResult(key=record.key, experiment_id=experiment.id, created=True,
                        name=experiment.name, n_seeds=experiment.n_succeeded,
                        mean_val_bpb=experiment.mean_val_bpb, eligible=experiment.eligible,
                        reasons=list(experiment.reasons), disagreements=found, notes=record.notes)


def _new_experiment(record: RecordFolder, found: list[dict[str, Any]],
                    reference_bpb: float | None) -> Experiment:
    stated = record.submission
    name = _text(stated.get("name")) or record.path.name
    date = _date(stated.get("date"), record.path.name)
    source = {"key": record.key, "path": str(record.path.resolve()), "submission": stated,
              "disagreements": found, "notes": record.notes,
              "logs": [{"file": log.file, "sha256": log.sha256, "seed": log.seed,
                        "seed_from": log.seed_from, "counted": True,
                        "why": log.chosen_why or None, "training_from": log.training_from}
                       for log in record.logs],
              "duplicate_logs": record.duplicates}
    return Experiment(
        name=name[:200], author=_text(stated.get("author"))[:100], preset=IMPORT_PRESET,
        seeds=[log.seed for log in record.logs], provider=IMPORT_PROVIDER, kind="script",
        status=ExperimentStatus.running.value, created_at=date, record_date=date,
        track=tracks.from_folder(record.path.parent.name), reference_bpb=reference_bpb,
        source=source)


def _add_run(session: Session, experiment_id: int, log: SeedLog) -> None:
    parsed = log.parsed
    status = RunStatus.succeeded if log.scored else RunStatus.failed
    reasons = log_reasons(parsed)
    run = Run(experiment_id=experiment_id, seed=log.seed, status=status.value,
              reason=None if log.scored else "the log has no final metric line",
              val_loss=log.val_loss, val_bpb=log.val_bpb, steps=parsed["steps"],
              train_time_s=_seconds(parsed["train_time_ms"]), eval_time_s=_seconds(parsed["eval_time_ms"]),
              code_bytes=parsed["code_bytes"], model_bytes=parsed["model_bytes"],
              bytes_total=parsed["bytes_total"], val_tokens=parsed["val_tokens"],
              eligible=log.scored and not reasons, reasons=reasons,
              results={"log": {"file": log.file, "sha256": log.sha256, "parsed": parsed}})
    session.add(run)
    session.flush()
    assert run.id is not None
    session.add(RunEvent(run_id=run.id, from_status=None, to_status=status.value,
                         reason=f"imported from {log.file}"))
    run.log_offset = _store_log(session, run.id, log.data)


def _store_log(session: Session, run_id: int, data: bytes) -> int:
    """The log as LogChunk rows of whole lines; returns its length in bytes."""
    offset = 0
    for chunk in _line_chunks(data):
        text = chunk.decode("utf-8", errors="replace").replace("\x00", "\ufffd")
        session.add(LogChunk(run_id=run_id, offset=offset, nbytes=len(chunk), text=text))
        offset += len(chunk)
    return offset


def _line_chunks(data: bytes) -> list[bytes]:
    chunks, start = [], 0
    while start < len(data):
        end = min(start + CHUNK_BYTES, len(data))
        if end < len(data):
            cut = data.rfind(b"\n", start, end)
            end = cut + 1 if cut >= start else _character_start(data, start, end)
        chunks.append(data[start:end])
        start = end
    return chunks


def _character_start(data: bytes, start: int, end: int) -> int:
    """`end` moved back off UTF-8 continuation bytes (at most 3), so a line longer than a
    chunk is cut between characters and each chunk decodes as it was written."""
    back = end
    while back > start + 1 and end - back < 3 and data[back] & 0xC0 == 0x80:
        back -= 1
    return back if data[back] & 0xC0 != 0x80 else end


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000


def _text(value: Any) -> str:
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


# --- export ----------------------------------------------------------------------------

TRACK = "10min_16mb"


def export_files(session: Session, experiment_id: int, *,
                 github_id: str | None = None) -> dict[str, bytes]:
    """A records folder for a pull request, as {path inside the folder: bytes}: README.md,
    submission.json, one train log per seed and the code that was counted. 404 if unknown.

    Only the control arm's succeeded seeds (never superseded ones) make the submission."""
    experiment = experiments.get_experiment(session, experiment_id)
    runs = _submitted_runs(session, experiment_id)
    logs = {run.id: _log_name(run, runs) for run in runs}
    code = _counted_code(session, experiment, runs)
    submission = submission_json(experiment, runs, github_id=github_id)
    files = {"README.md": readme(experiment, runs, submission, logs, sorted(code)).encode(),
             "submission.json": (json.dumps(submission, indent=2) + "\n").encode()}
    files |= {logs[run.id]: _log_bytes(session, run) for run in runs}
    if experiment.kind == "trainer":
        run_json = {"preset": experiment.preset, **experiment.config}
        files["run.json"] = (json.dumps(run_json, indent=2, sort_keys=True) + "\n").encode()
    return files | code


def export_zip(session: Session, experiment_id: int, *, github_id: str | None = None) -> bytes:
    """export_files as a zip with one top folder, `<date>_<name>/`."""
    experiment = experiments.get_experiment(session, experiment_id)
    files = export_files(session, experiment_id, github_id=github_id)
    top = folder_name(experiment)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in sorted(files.items()):
            archive.writestr(f"{top}/{name}", data)
    return buffer.getvalue()


def export_to(session: Session, experiment_id: int, target: Path, *,
              github_id: str | None = None) -> list[Path]:
    """Write export_files into `target` (created; it must not hold files already)."""
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(f"{target} already exists and is not an empty directory")
    files = export_files(session, experiment_id, github_id=github_id)
    # Written beside the target and renamed into place, so a failure part-way leaves no
    # half-written records folder.
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for name, data in sorted(files.items()):
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        if target.exists():
            target.rmdir()  # empty, checked above
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [target / name for name in sorted(files)]


def folder_name(experiment: Experiment) -> str:
    """`<date>_<name>`, the records folders' naming, with only safe characters."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment.name).strip("_.") or f"experiment{experiment.id}"
    # The stated date is the submitter's text: only a plain YYYY-MM-DD may name a folder.
    date = _submission_date(experiment)[:10]
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", date):
        date = experiment.created_at.date().isoformat()
    return f"{date}_{slug[:80]}"


def _submitted_runs(session: Session, experiment_id: int) -> list[Run]:
    return list(session.exec(
        select(Run).where(Run.experiment_id == experiment_id, Run.variant == "",
                          Run.status == RunStatus.succeeded.value, col(Run.superseded).is_(False),
                          col(Run.val_bpb).is_not(None))
        .order_by(col(Run.id))).all())


def _log_name(run: Run, runs: list[Run]) -> str:
    twins = sum(other.seed == run.seed for other in runs)
    return f"train_seed{run.seed}.log" if twins == 1 else f"train_seed{run.seed}_run{run.id}.log"


def _log_bytes(session: Session, run: Run) -> bytes:
    chunks = session.exec(select(LogChunk.text).where(LogChunk.run_id == run.id)
                          .order_by(col(LogChunk.offset))).all()
    return "".join(chunks).encode("utf-8")


def _counted_code(session: Session, experiment: Experiment, runs: list[Run]) -> dict[str, bytes]:
    """A script's files as submitted, or the trainer bundle a run uploaded (its data dir copy)."""
    assert experiment.id is not None
    if experiment.kind == "script":
        return {f.name: bytes(f.content) for f in scripts.list_files(session, experiment.id)}
    runs_dir = get_settings().runs_dir()
    for run in runs:
        code_dir = runs_dir / str(run.id) / "code"
        if code_dir.is_dir():
            return {p.relative_to(code_dir).as_posix(): p.read_bytes()
                    for p in sorted(code_dir.rglob("*")) if p.is_file()}
    return {}


def submission_json(experiment: Experiment, runs: list[Run], *,
                    github_id: str | None = None) -> dict[str, Any]:
    """submission.json: the community's fields, val_bpb the seed mean, bytes_total the largest."""
    stated = (experiment.source or {}).get("submission") or {}
    bpb = [run.val_bpb for run in runs if run.val_bpb is not None]
    loss = [run.val_loss for run in runs if run.val_loss is not None]
    return {
        "name": experiment.name,
        "author": experiment.author,
        "github_id": github_id or _text(stated.get("github_id")) or experiment.author,
        "date": _submission_date(experiment),
        "track": TRACK,
        "val_bpb": statistics.fmean(bpb) if bpb else None,
        "val_bpb_std": statistics.stdev(bpb) if len(bpb) >= 2 else None,
        "val_loss": statistics.fmean(loss) if len(loss) == len(runs) and loss else None,
        "bytes_total": _largest(run.bytes_total for run in runs),
        "bytes_code": _largest(run.code_bytes for run in runs),
        "seeds": [run.seed for run in runs],
        "seed_results": {str(run.seed): _seed_result(run) for run in runs},
        "statistics": experiment.stats,
        "eligible": experiment.eligible,
        "reasons": experiment.reasons,
        "hardware": _hardware(runs),
        "versions": _versions(runs),
        "config": _config(experiment),
        "caddie_experiment_id": experiment.id,
    }


def _submission_date(experiment: Experiment) -> str:
    stated = ((experiment.source or {}).get("submission") or {}).get("date")
    if isinstance(stated, str) and stated:
        return stated
    # An import's created_at is its submission's date; finished_at, the day it was imported.
    imported = experiment.provider == IMPORT_PROVIDER
    moment = experiment.created_at if imported else experiment.finished_at or experiment.created_at
    return moment.date().isoformat()


def _largest(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def _seed_result(run: Run) -> dict[str, Any]:
    return {"val_bpb": run.val_bpb, "val_loss": run.val_loss, "bytes_total": run.bytes_total,
            "bytes_code": run.code_bytes, "bytes_model": run.model_bytes, "steps": run.steps,
            "train_time_s": run.train_time_s, "eval_time_s": run.eval_time_s,
            "val_tokens": run.val_tokens}


def _hardware(runs: list[Run]) -> str | None:
    kinds = sorted({f"{run.gpu_count}x {run.gpu_name}" for run in runs if run.gpu_name})
    return "; ".join(kinds) if kinds else None


def _versions(runs: list[Run]) -> dict[str, Any]:
    """Library versions the trainer reported, with the Python the worker's preflight found."""
    versions: dict[str, Any] = {}
    for run in runs:
        results = run.results or {}
        preflight = (results.get("worker") or {}).get("preflight") or {}
        if preflight.get("python"):
            versions.setdefault("python", preflight["python"])
        reported = results.get("versions")
        if isinstance(reported, dict):
            versions = {**reported, **versions}
    return versions


def _config(experiment: Experiment) -> dict[str, Any]:
    if experiment.provider == IMPORT_PROVIDER:
        return {"kind": "script", "imported_from": (experiment.source or {}).get("key")}
    if experiment.kind == "script":
        return {"kind": "script", "env": experiment.env}
    return {"kind": "trainer", "preset": experiment.preset, "overrides": experiment.config,
            "variants": experiment.variants}


def readme(experiment: Experiment, runs: list[Run], submission: dict[str, Any],
           logs: dict[int | None, str], code: list[str]) -> str:
    """README.md: what was run, every seed, the statistics, how to reproduce it."""
    parts = [_readme_head(experiment, submission), _readme_config(experiment),
             _readme_seeds(runs, logs), _readme_statistics(experiment),
             _readme_ablation(experiment), _readme_reproduce(experiment, runs, code)]
    return "\n\n".join(part for part in parts if part) + "\n"


def _readme_head(experiment: Experiment, submission: dict[str, Any]) -> str:
    mean, std = submission["val_bpb"], submission["val_bpb_std"]
    score = f"**val_bpb {mean:.8f}**" if mean is not None else "no scored seed"
    spread = f" (std {std:.8f})" if std is not None else ""
    size = submission["bytes_total"]
    return (f"# {experiment.name}\n\n"
            f"By {experiment.author or 'unknown'} (GitHub {submission['github_id'] or 'unknown'}), "
            f"{submission['date']}; track {TRACK}.\n\n"
            f"{score}, the mean of {len(submission['seeds'])} seed(s){spread}, in bits per byte; "
            f"largest artifact {_bytes(size)} (code + compressed model, cap {MAX_BYTES_TOTAL:,}).")


def _readme_config(experiment: Experiment) -> str:
    config = _config(experiment)
    if config["kind"] == "trainer":
        body = (f"The bundled trainer, preset `{experiment.preset}`, with these overrides:\n\n"
                f"```json\n{json.dumps(experiment.config, indent=2, sort_keys=True)}\n```")
    elif experiment.provider == IMPORT_PROVIDER:
        body = f"A community `train_gpt.py`, imported from `{config['imported_from']}`."
    else:
        env = "\n".join(f"- `{k}={v}`" for k, v in sorted(experiment.env.items())) or "- none"
        body = f"The participant's own `train_gpt.py`, with these environment variables:\n\n{env}"
    return f"## Configuration\n\n{body}"


def _readme_seeds(runs: list[Run], logs: dict[int | None, str]) -> str:
    rows = ["| seed | val_bpb (bits/byte) | val_loss (nats/token) | bytes_total | code bytes | "
            "steps | train s | eval s | log |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs:
        rows.append(f"| {run.seed} | {_number(run.val_bpb, 8)} | {_number(run.val_loss, 8)} | "
                    f"{_bytes(run.bytes_total)} | {_bytes(run.code_bytes)} | {_bytes(run.steps)} | "
                    f"{_number(run.train_time_s, 1)} | {_number(run.eval_time_s, 1)} | "
                    f"`{logs[run.id]}` |")
    return "## Results per seed\n\n" + "\n".join(rows)


def _readme_statistics(experiment: Experiment) -> str:
    stats = experiment.stats or {}
    verdict = ("record-eligible" if experiment.eligible
               else "not record-eligible: " + "; ".join(experiment.reasons))
    if "test" not in stats:
        return f"## Statistics\n\nNo significance test was run. {verdict}."
    reference = stats.get("reference") or {}
    against = (f"experiment {reference.get('experiment_id')}" if reference.get("kind") == "experiment"
               else f"val_bpb {reference.get('val_bpb')}")
    lines = [
        f"- test: {stats['test']}, in {stats['units']}, against {against} "
        f"({reference.get('source', 'reference')}) minus the 0.005-nat margin "
        f"({_number(stats.get('margin'), 8)} in these units)",
        f"- threshold {_number(stats.get('threshold'), 8)}; n {stats.get('n')}, "
        f"mean {_number(stats.get('mean'), 8)}, std {_number(stats.get('std'), 8)}",
        f"- t {_number(stats.get('t'), 3)}, df {_number(stats.get('df'), 2)}, "
        f"p {_number(stats.get('p'), 6)} (alpha {stats.get('alpha')})",
        f"- {verdict}",
    ]
    return "## Statistics\n\n" + "\n".join(lines)


def _readme_ablation(experiment: Experiment) -> str:
    table = (experiment.stats or {}).get("ablation")
    if not table:
        return ""
    rows = ["| variant | changes | n | Δ val_bpb (bits/byte) | 95% CI | Δ nats/byte | t | p |",
            "|---|---|---:|---:|---|---:|---:|---:|"]
    for row in table["rows"]:
        changes = ", ".join(f"`{k}={v}`" for k, v in sorted(row["changes"].items()))
        rows.append(f"| {row['variant']} | {changes} | {row['n']} | {_number(row['mean_diff_bpb'], 6)} | "
                    f"[{_number(row['ci_low'], 6)}, {_number(row['ci_high'], 6)}] | "
                    f"{_number(row['mean_diff_nats'], 6)} | {_number(row['t'], 3)} | {_number(row['p'], 4)} |")
    control = table["control"]
    return (f"## Ablation\n\nEach variant against the control (n {control['n']}, mean val_bpb "
            f"{_number(control['mean_val_bpb'], 8)}), paired by seed, two-sided paired t-test:\n\n"
            + "\n".join(rows))


def _readme_reproduce(experiment: Experiment, runs: list[Run], code: list[str]) -> str:
    seeds = " ".join(str(run.seed) for run in runs) or "1337"
    if experiment.kind == "script":
        env = " ".join(f"{k}={v}" for k, v in sorted(experiment.env.items()))
        command = f"SEED=$seed {env + ' ' if env else ''}torchrun --standalone --nproc_per_node=8 train_gpt.py"
    else:
        command = ("SEED=$seed torchrun --standalone --nproc_per_node=8 -m trainer train "
                   "--config run.json --out runs/seed$seed")
    counted = "\n".join(f"- `{name}`" for name in code) or "- (the code was not available to export)"
    return (f"## How to reproduce\n\nOn 8×H100 SXM, with the challenge's data and tokenizer:\n\n"
            f"```sh\nfor seed in {seeds}; do\n  {command}\ndone\n```\n\n"
            f"Code counted in bytes_total:\n\n{counted}")


def _number(value: Any, decimals: int) -> str:
    return "–" if value is None else f"{value:.{decimals}f}"


def _bytes(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"
