"""Loss curves for the run page's chart, without reading a large log whole.

From `metrics.jsonl` when the worker downloaded one into the run's folder (our trainer
writes it; a finished run has it): `train_step` and `val` events, read a line at a time.
Otherwise from the community's log lines in the stored log: `step:N/M train_loss:X ...`
gives a training point, `step:N/M val_loss:X val_bpb:Y ...` a validation point, read in
batches, and of a log longer than 2 x LOG_SCAN_BYTES only its first and last LOG_SCAN_BYTES
(a 197 MB log cost 1.6 s and all of it in memory per view). static/app.js reads the same
lines from the live stream, so the chart follows a live run.
"""

import json
import math
import re
from collections.abc import Iterable, Iterator

from sqlmodel import Session

from server import logs
from web.downloads import run_file

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
TRAIN = re.compile(r"^step:(\d+)/\d+ .*?\btrain_loss:" + NUMBER)
VAL = re.compile(r"^step:(\d+)/\d+ .*?\bval_loss:" + NUMBER)

Points = list[tuple[int, float]]  # (step, loss in nats per token)

METRICS_FILE = "metrics.jsonl"  # the trainer's events (trainer/contract.py METRICS)
# metrics.jsonl events (trainer/contract.py EVENT_TRAIN_STEP, EVENT_VAL) -> curve and loss key
EVENTS = {"train_step": ("train", "train_loss"), "val": ("val", "val_loss")}
LOG_SCAN_BYTES = 8 * 1024 * 1024


def run_curves(session: Session, run_id: int, log_bytes: int) -> dict[str, Points]:
    """The run's curves: from metrics.jsonl if downloaded, else from its stored log."""
    metrics = run_file(run_id, METRICS_FILE)
    if metrics is not None:
        with metrics.open(encoding="utf-8", errors="replace") as lines:
            return metric_points(lines)
    return loss_points(_log_lines(session, run_id, log_bytes))


def metric_points(lines: Iterable[str]) -> dict[str, Points]:
    points: dict[str, Points] = {"train": [], "val": []}
    for line in lines:
        try:
            record = json.loads(line)
            curve, key = EVENTS[record["event"]]
            step, value = int(record["step"]), float(record[key])
        except (ValueError, TypeError, KeyError):
            continue  # another event, or a line cut short
        if math.isfinite(value):
            points[curve].append((step, value))
    return points


def _log_lines(session: Session, run_id: int, log_bytes: int) -> Iterator[str]:
    if log_bytes <= 2 * LOG_SCAN_BYTES:
        yield from _lines_between(session, run_id, 0, log_bytes)
        return
    yield from _lines_between(session, run_id, 0, LOG_SCAN_BYTES)
    yield from _lines_between(session, run_id, log_bytes - LOG_SCAN_BYTES, log_bytes)


def _lines_between(session: Session, run_id: int, start: int, end: int) -> Iterator[str]:
    """Whole lines of the stored log in bytes [start, end), read a batch at a time (a line
    cut at `start` is dropped: it may be the end of one)."""
    carry, offset, first = "", start, start > 0
    while offset < end:
        piece = logs.read_log(session, run_id, offset=offset,
                              limit=min(logs.MAX_READ_BYTES, end - offset))
        if piece.next_offset == offset:
            break
        *lines, carry = (carry + piece.text).split("\n")
        if first and lines:
            lines, first = lines[1:], False
        yield from lines
        offset = piece.next_offset
    session.commit()  # end the read
    if carry and not first:
        yield carry


def loss_points(lines: Iterable[str]) -> dict[str, Points]:
    """{"train": [(step, loss)], "val": [(step, loss)]} in log order; non-finite values left out."""
    points: dict[str, Points] = {"train": [], "val": []}
    for line in lines:
        for name, pattern in (("train", TRAIN), ("val", VAL)):
            match = pattern.match(line)
            if match:
                value = float(match.group(2))
                if math.isfinite(value):
                    points[name].append((int(match.group(1)), value))
                break
    return points
