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

Export, the other direction, lives in `server/export.py`.
"""

import hashlib
import json
import math
import os
import re
import statistics
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlmodel import Session, col, select

from server import experiments, officialboard, policies, scripts, tracks
from server.eligibility import MAX_BYTES_TOTAL, MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS, time_reason
from server.logparse import parse_log
from server.models import Experiment, LogChunk, Run, RunEvent, as_utc
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
    track: str = ""
    date: str = ""  # the record's date, YYYY-MM-DD
    accepted: bool | None = None  # listed on the challenge's leaderboard; None: not known
    official_score: float | None = None  # the leaderboard's score for it
    stated_val_bpb: float | None = None  # submission.json's val_bpb
    test: dict[str, Any] | None = None  # the record test: units, delta, p, and its reference
    rule: str = ""  # what an accepted non-record verdict checked, in words ("" on the record track)
    official_note: str = ""  # where the official score comes from, when it is not Caddie's mean


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


def log_reasons(parsed: dict[str, Any], track: str = tracks.RECORD_TRACK) -> list[str]:
    """Why a run known only from its log is not eligible on its track; empty when it is.

    The rules a log can show: a score, bytes_total <= 16,000,000, and on the record track
    train and eval time <= 600 s each (the non-record track has no time cap). What a log
    cannot prove (the hardware, the worker's clock, the full validation split, which scripts
    count differently) is not judged here.
    """
    reasons = []
    if parsed["score"] is None:
        reasons.append("no score: the log has no final metric line")
    total = parsed["bytes_total"]
    if total is None:
        reasons.append("artifact size not stated in the log")
    elif total > MAX_BYTES_TOTAL:
        reasons.append(f"bytes_total {total:,} > {MAX_BYTES_TOTAL:,}")
    if track == tracks.NON_RECORD_TRACK:
        return reasons
    step_ms = parsed.get("step_ms")
    for what, ms, step, cap in (("train", parsed["train_time_ms"], step_ms, MAX_TRAIN_SECONDS),
                                ("eval", parsed["eval_time_ms"], None, MAX_EVAL_SECONDS)):
        if ms is None:
            reasons.append(f"{what} time not stated in the log")
            continue
        # The official script stops after the step that reaches the cap: one step may pass it.
        why = time_reason(what, ms / 1000, None if step is None else step / 1000, cap)
        if why:
            reasons.append(why)
    return reasons


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
    imported = _imported_keys(session)
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
            "stated_val_bpb": _float((source.get("submission") or {}).get("val_bpb")),
            "test": {key: test.get(key) for key in keep} if test else None,
            "rule": str(stats.get("rule") or "")}


def import_record(session: Session, record: RecordFolder, *, reference_bpb: float | None = None,
                  official_rows: list[officialboard.Row] | None = None) -> ImportResult:
    """One finished experiment from one records folder, in one transaction. With the
    official leaderboard's rows, `accepted` says whether it lists the folder."""
    if not record.logs:
        return ImportResult(key=record.key, experiment_id=None, created=False,
                            name=_text(record.submission.get("name")) or record.path.name,
                            track=tracks.from_folder(record.path.parent.name),
                            date=_date(record.submission.get("date"), record.path.name).date().isoformat(),
                            stated_val_bpb=_float(record.submission.get("val_bpb")),
                            notes=[*record.notes, _nothing_imported(record.path)])
    found = disagreements(record.submission, record.logs) + _duplicate_disagreements(record)
    experiment = _new_experiment(record, found, reference_bpb)
    if official_rows is not None:
        row = _official_row(record, experiment, official_rows)
        experiment.accepted = row is not None
        if row is not None:
            note = official_note(row.score, record)
            if note:
                found.append(_disagreement("official", row.score, _mean_of(record.logs), note))
            experiment.source = {**(experiment.source or {}), "official": {
                "run": row.run, "score": row.score, "date": row.date, "author": row.author,
                "note": note}, "disagreements": found}
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    scripts.store_files(session, experiment.id, record.code)
    for log in record.logs:
        _add_run(session, experiment.id, log, experiment.track)
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
             for path in _files_below(folder)]
    return (f"nothing imported: no train log (a file with a step or final-score line) among "
            f"{', '.join(files) or 'no files'}")


def _empty(path: Path) -> bool:
    try:
        return _plain_file(path) and path.stat().st_size == 0
    except OSError:
        return False


def official_note(official: float | None, record: RecordFolder) -> str | None:
    """Where the leaderboard's score comes from when Caddie's mean is not it (to the table's
    4 decimals): a seed's log, a val_bpb submission.json states, a log not counted, a line of
    the folder's files; None when the mean is the official score (or there is none)."""
    mean = _mean_of(record.logs)
    shown = f"{official:.4f}" if official is not None else ""
    if official is None or (mean is not None and _close(official, mean, shown)):
        return None
    ours = (f"Caddie's mean of {len([log for log in record.logs if log.scored])} seed(s) "
            f"{mean:.5f}" if mean is not None else "no scored log")
    matches = [label for label, value in _official_candidates(record)
               if _close(official, value, shown)]
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
        number = _float(value) if "bpb" in key else None
        if number is not None:
            found.append((f"submission.json's {key} ({value})", number))
    for source_name, seed, entry in _seed_entries(stated):
        value = _float(entry.get("val_bpb"))
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
    for path in _files_below(folder):
        if path.suffix not in (*LOG_SUFFIXES, ".md", ".json", ".tsv") or not _plain_file(path):
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
        status=ExperimentStatus.running, created_at=date, record_date=date,
        track=tracks.from_folder(record.path.parent.name), reference_bpb=reference_bpb,
        source=source)


def _official_row(record: RecordFolder, experiment: Experiment,
                  rows: list[officialboard.Row]) -> officialboard.Row | None:
    stated = _float(record.submission.get("val_bpb"))
    scores = [log.val_bpb for log in record.logs if log.val_bpb is not None]
    score = stated if stated is not None else (statistics.fmean(scores) if scores else None)
    authors = {experiment.author, _text(record.submission.get("github_id"))}
    return officialboard.accepted_row(rows, key=record.key, track=experiment.track, val_bpb=score,
                                      date=as_utc(experiment.record_date).date().isoformat(),
                                      authors=authors, pulls=_pulls_mentioned(record.path))


_PULL_MENTION = re.compile(r"(?:#|/pull/|\bPR ?)(\d{2,6})\b")


def _pulls_mentioned(folder: Path) -> set[int]:
    """Pull request numbers the folder's README.md and submission.json mention ("PR #1851")."""
    return {int(number) for name, text in _folder_texts(folder)
            if name in ("README.md", SUBMISSION) for number in _PULL_MENTION.findall(text)}


def _add_run(session: Session, experiment_id: int, log: SeedLog, track: str) -> None:
    parsed = log.parsed
    status = RunStatus.succeeded if log.scored else RunStatus.failed
    reasons = log_reasons(parsed, track)
    run = Run(experiment_id=experiment_id, seed=log.seed, status=status,
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
    session.add(RunEvent(run_id=run.id, from_status=None, to_status=status,
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


def _log_bytes(session: Session, run: Run) -> bytes:
    """A run's stored train log, its LogChunk rows joined in order."""
    chunks = session.exec(select(LogChunk.text).where(LogChunk.run_id == run.id)
                          .order_by(col(LogChunk.offset))).all()
    return "".join(chunks).encode("utf-8")
