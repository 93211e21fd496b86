"""Checking a records folder: where its stated values and its logs differ, and our rules as
far as a log can show them."""

import statistics
from typing import Any

from server import tracks
from server.eligibility import MAX_BYTES_TOTAL, MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS, time_reason
from server.records.reader import (
    RecordFolder,
    SeedLog,
    as_float,
    close_as_shown,
    seed_entries,
    stated_seeds,
)

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
            found.append(disagreement("logs", None, None, "no train log with a final score"))
        return found
    found += _mean_disagreement(submission, scored, "val_bpb", lambda log: log.val_bpb)
    found += _mean_disagreement(submission, scored, "val_loss", lambda log: log.val_loss)
    found += _max_disagreement(submission, scored, "bytes_total", "bytes_total")
    found += _max_disagreement(submission, scored, "bytes_code", "code_bytes")
    found += _seed_set_disagreement(submission, scored)
    found += _per_seed_disagreements(submission, scored)
    return found


def disagreement(name: str, stated: Any, logs: Any, note: str) -> dict[str, Any]:
    """One entry of an experiment's `source["disagreements"]`."""
    return {"field": name, "stated": stated, "logs": logs, "note": note}


def _mean_disagreement(submission: dict[str, Any], scored: list[SeedLog], name: str,
                       value: Any) -> list[dict[str, Any]]:
    key = name if name in submission else f"mean_{name}"
    stated = as_float(submission.get(key))
    values = {log.seed: value(log) for log in scored if value(log) is not None}
    if stated is None or not values:
        return []
    mean = statistics.fmean(values.values())
    if close_as_shown(stated, mean, submission.get(key)):
        return []
    same = [seed for seed, v in values.items() if close_as_shown(stated, v, submission.get(key))]
    note = (f"equals seed {same[0]}'s log, not the mean of {len(values)} seed(s)" if same
            else f"matches neither the mean of {len(values)} seed(s) nor any seed's log")
    return [disagreement(key, stated, mean, note)]


def _max_disagreement(submission: dict[str, Any], scored: list[SeedLog], name: str,
                      parsed_key: str) -> list[dict[str, Any]]:
    stated = as_float(submission.get(name))
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
    return [disagreement(name, _whole(stated), largest, note)]


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
    return [disagreement("seeds", sorted(stated), sorted(logged), "; ".join(parts))]


def duplicate_disagreements(record: RecordFolder) -> list[dict[str, Any]]:
    """Each seed with more than one log, as a disagreement: which log counted and why."""
    seeds: dict[int, list[str]] = {}
    for duplicate in record.duplicates:
        seeds.setdefault(duplicate["seed"], []).append(duplicate["file"])
    found = []
    for log in record.logs:
        if log.seed in seeds:
            found.append(disagreement(
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
    for source_name, stated_seed, entry in seed_entries(submission):
        log = by_seed.get(stated_seed)
        if log is None:
            continue  # said once, by _seed_set_disagreement
        actual = {"val_bpb": log.val_bpb, "val_loss": log.val_loss, **log.parsed}
        for stated_name, parsed_name in _SEED_FIELDS:
            stated, value = entry.get(stated_name), actual.get(parsed_name)
            if as_float(stated) is None or value is None or close_as_shown(as_float(stated), value, stated):
                continue
            found.append(disagreement(f"{source_name}.{stated_seed}.{stated_name}", stated, value,
                                       f"differs from {log.file}"))
    return found


def _whole(value: float) -> int | float:
    return int(value) if value == int(value) else value


# --- our rules, as far as a log can show them --------------------------------------------


# Where a run's size comes from when its log states no exact total.
MEGABYTES = "the log's megabytes, rounded up"
STATED = "submission.json"


def log_size(parsed: dict[str, Any], stated_bytes: int | None) -> tuple[int | None, str | None]:
    """A run's artifact size in bytes and where it came from (None: the log's exact total):
    the log's total, else the most a total it states only in megabytes can be, else the
    size submission.json states."""
    if parsed["bytes_total"] is not None:
        return parsed["bytes_total"], None
    if parsed.get("bytes_total_at_most") is not None:
        return parsed["bytes_total_at_most"], MEGABYTES
    return stated_bytes, STATED if stated_bytes is not None else None


def log_reasons(parsed: dict[str, Any], track: str = tracks.RECORD_TRACK, *,
                stated_bytes: int | None = None) -> list[str]:
    """Why a run known only from its log is not eligible on its track; empty when it is.

    The rules a log can show: a score, bytes_total <= 16,000,000, and on the record track
    train and eval time <= 600 s each (the non-record track has no time cap). What a log
    cannot prove (the hardware, the worker's clock, the full validation split, which scripts
    count differently) is not judged here. The size: the log's exact total, else the most a
    total it states only in megabytes can be, else `stated_bytes` (submission.json's), as the
    challenge's reviewers read it.
    """
    reasons = []
    if parsed["score"] is None:
        reasons.append("no score: the log has no final metric line")
    total, source = log_size(parsed, stated_bytes)
    if total is None:
        reasons.append("artifact size not stated in the log")
    elif total > MAX_BYTES_TOTAL and source == MEGABYTES:
        reasons.append(f"the log states the size only in megabytes: up to {total:,} bytes, "
                       f"which may pass {MAX_BYTES_TOTAL:,}")
    elif total > MAX_BYTES_TOTAL:
        reasons.append(f"bytes_total {total:,} > {MAX_BYTES_TOTAL:,}"
                       + (" (as submission.json states)" if source == STATED else ""))
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
