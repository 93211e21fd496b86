"""Reading a records folder: its submission.json, train logs (one counted per seed) and code."""

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server import policies, scripts
from server.communitylog import parse_log

SUBMISSION = "submission.json"
LOG_SUFFIXES = (".log", ".txt")
NOT_LOGS = frozenset({"requirements.txt"})
MAX_LOG_BYTES = 50_000_000  # a real log with its quoted source is well under 1 MB
MAX_SUBMISSION_BYTES = 1_000_000  # real ones are a few KB
# Files kept as the imported experiment's code (ExperimentFile rows), when present.
CODE_FILES = (scripts.ENTRYPOINT, scripts.REQUIREMENTS)
_SEED_IN_NAME = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)


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


def files_below(folder: Path) -> list[Path]:
    """Every file entry under `folder` at any depth, symbolic links included (not followed)."""
    return sorted(Path(top) / name for top, _names, files in os.walk(folder) for name in files)


def plain_file(path: Path) -> bool:
    """A regular file, not a symbolic link (links in a records folder are never followed)."""
    return path.is_file() and not path.is_symlink()


def _is_record_folder(folder: Path) -> bool:
    files = [f for f in folder.iterdir() if plain_file(f)]
    return any(is_submission(f) for f in files) or any(
        _may_be_log(f) and _maybe_train_log(f) for f in files)


def _maybe_train_log(path: Path) -> bool:
    """A log too big to read counts (the import says so); else its parse must look like one."""
    try:
        return path.stat().st_size > MAX_LOG_BYTES or looks_like_train_log(parse_log(path.read_bytes()))
    except OSError:
        return False


def is_submission(path: Path) -> bool:
    """A `submission*.json` file: the submitter's stated values."""
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
    candidates = sorted(f for f in folder.iterdir() if plain_file(f) and is_submission(f))
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
    for path in files_below(folder):
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
        if digest in seen or not looks_like_train_log(parsed):
            continue  # a copy of a log already read, or a text file that is no train log
        seen.add(digest)
        logs.append(SeedLog(file=name, sha256=digest, data=data, parsed=parsed))
    return logs


def looks_like_train_log(parsed: dict[str, Any]) -> bool:
    """A parsed log (`parse_log`) that shows a final score or a step count."""
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
    for source_name, stated_seed, entry in seed_entries(submission):
        stated = entry.get("val_bpb")
        match = [log for log in scored if stated_seed == seed and as_float(stated) is not None
                 and close_as_shown(as_float(stated), log.val_bpb or 0.0, stated)]
        if match:
            return match[-1], f"its val_bpb is the one submission.json's {source_name} states"
    stated = submission.get("val_bpb")
    match = [log for log in scored
             if as_float(stated) is not None and close_as_shown(as_float(stated), log.val_bpb or 0.0, stated)]
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
    seed = as_nonnegative_int(value)
    return seed if seed is not None and seed < policies.SEED_LIMIT else None


def stated_seeds(submission: dict[str, Any]) -> list[int]:
    """Seeds the submission lists (`seeds` as a list or a dict, or `seed_results` keys)."""
    seeds: list[int] = []
    for source in (submission.get("seeds"), submission.get("seed_results")):
        items = source.keys() if isinstance(source, dict) else source if isinstance(source, list) else []
        for item in items:
            seed = as_nonnegative_int(item)
            if seed is not None and seed not in seeds:
                seeds.append(seed)
    return seeds


def seed_entries(submission: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    """(field, seed, {stated per-seed values}) from `seed_results` and a dict `seeds`."""
    entries = []
    for source_name in ("seed_results", "seeds"):
        source = submission.get(source_name)
        if not isinstance(source, dict):
            continue
        for key, value in source.items():
            seed = as_nonnegative_int(key)
            if seed is None:
                continue
            entry = value if isinstance(value, dict) else {"val_bpb": value}
            entries.append((source_name, seed, entry))
    return entries


def close_as_shown(stated: float | None, actual: float, text: Any) -> bool:
    """Equal within half a unit of the last decimal `text` (the JSON value) shows."""
    if stated is None:
        return False
    shown = repr(float(text)) if isinstance(text, int | float) else str(text)
    decimals = len(shown.split(".")[1]) if "." in shown and "e" not in shown.lower() else 0
    return abs(stated - actual) <= 0.5 * 10.0 ** -decimals + 1e-12


def as_float(value: Any) -> float | None:
    """A finite JSON number or numeric string as a float; None for anything else, booleans included."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except (ValueError, OverflowError):  # OverflowError: an int beyond any float
        return None
    return number if math.isfinite(number) else None


def as_nonnegative_int(value: Any) -> int | None:
    """A whole number >= 0 (as `as_float` reads it), else None."""
    number = as_float(value)
    return int(number) if number is not None and number == int(number) and number >= 0 else None
