"""Loss curves for the run page's chart and the overlays of several runs (an experiment's
seeds, an ablation's arms, the experiments on /compare), without reading a large log whole.

From `metrics.jsonl` when the worker downloaded one into the run's folder (our trainer writes
it; a finished run has it): `train_step`, `val` and `final` events, read a line at a time.
Otherwise from the community's log lines in the stored log, read in batches, and of a log
longer than 2 x LOG_SCAN_BYTES only its first and last LOG_SCAN_BYTES (a 197 MB log cost 1.6 s
and all of it in memory per view): `step:N/M train_loss:X ...` gives a training point,
`step:N/M val_loss:X val_bpb:Y ...` a validation point (and a val_bpb point), and the last
`final_<tag> val_loss:X val_bpb:Y` line the scored model's final point, placed at the last step
seen. static/app.js reads the same lines from the live stream, so the chart follows a live run.
"""

import json
import math
import re
from collections.abc import Iterable, Iterator

from sqlmodel import Session

from server import runlog
from trainer import contract
from web.downloads import run_file

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
TRAIN = re.compile(r"^step:(\d+)/\d+ .*?\btrain_loss:" + NUMBER)
VAL = re.compile(r"^step:(\d+)/\d+ .*?\bval_loss:" + NUMBER)
VAL_BPB = re.compile(r"\bval_bpb:" + NUMBER)
FINAL = re.compile(r"^final_\S+ .*?\bval_loss:" + NUMBER + r"(?:.*?\bval_bpb:" + NUMBER + ")?")

Points = list[tuple[int, float]]  # (step, loss in nats per token, or val_bpb in bits per byte)
CURVES = ("train", "val", "final", "val_bpb", "final_bpb")

METRICS_FILE = contract.METRICS  # the trainer's events, one JSON object a line
TRAIN_EVENT, VAL_EVENT, FINAL_EVENT = contract.EVENT_TRAIN_STEP, contract.EVENT_VAL, contract.EVENT_FINAL
LOG_SCAN_BYTES = 8 * 1024 * 1024


def run_curves(session: Session, run_id: int, log_bytes: int) -> dict[str, Points]:
    """The run's curves: from metrics.jsonl if downloaded, else from its stored log."""
    metrics = run_file(run_id, METRICS_FILE)
    if metrics is not None:
        with metrics.open(encoding="utf-8", errors="replace") as lines:
            return metric_points(lines)
    return loss_points(_log_lines(session, run_id, log_bytes))


def metric_points(lines: Iterable[str]) -> dict[str, Points]:
    """The curves of loss_points() from metrics.jsonl's events; a line cut short is skipped."""
    points: dict[str, Points] = {name: [] for name in CURVES}
    final: dict | None = None
    for line in lines:
        try:
            record = json.loads(line)
            event = record["event"]
            if event == TRAIN_EVENT:
                _add(points["train"], int(record["step"]), record["train_loss"])
            elif event == VAL_EVENT:
                _add(points["val"], int(record["step"]), record["val_loss"])
                if "val_bpb" in record:
                    _add(points["val_bpb"], int(record["step"]), record["val_bpb"])
            elif event == FINAL_EVENT:
                final = record
        except (ValueError, TypeError, KeyError, AttributeError):
            continue  # a line cut short, or an event without the fields
    if final is not None:
        _add_final(points, final.get("val_loss"), final.get("val_bpb"))
    return points


def loss_points(lines: Iterable[str]) -> dict[str, Points]:
    """{"train", "val", "final": [(step, val_loss)] (at most one point), "val_bpb",
    "final_bpb"} in log order; non-finite values left out."""
    points: dict[str, Points] = {name: [] for name in CURVES}
    final: tuple[str, str | None] | None = None
    for line in lines:
        if match := TRAIN.match(line):
            _add(points["train"], int(match.group(1)), match.group(2))
        elif match := VAL.match(line):
            _add(points["val"], int(match.group(1)), match.group(2))
            if bpb := VAL_BPB.search(line):
                _add(points["val_bpb"], int(match.group(1)), bpb.group(1))
        elif match := FINAL.match(line):
            final = (match.group(1), match.group(2))
    if final is not None:
        _add_final(points, *final)
    return points


def _add_final(points: dict[str, Points], loss: object, bpb: object) -> None:
    """The final point, at the last step seen."""
    step = max((p[0] for p in points["train"] + points["val"]), default=0)
    if loss is not None:
        _add(points["final"], step, loss)
    if bpb is not None:
        _add(points["final_bpb"], step, bpb)


def _add(points: Points, step: int, raw: object) -> None:
    value = float(raw)  # type: ignore[arg-type]  # a number or its text; ValueError otherwise
    if math.isfinite(value):
        points.append((step, value))


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
        piece = runlog.read_log(session, run_id, offset=offset,
                              limit=min(runlog.MAX_READ_BYTES, end - offset))
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
