"""Loss curves from the community's log lines, for the run page's chart and the overlays of
several runs (an experiment's seeds, an ablation's arms, the experiments on /compare).

`step:N/M train_loss:X ...` gives a training point, `step:N/M val_loss:X val_bpb:Y ...` a
validation point (and a val_bpb point), and the last `final_<tag> val_loss:X val_bpb:Y` line the
scored model's final point, placed at the last step seen. static/app.js reads the same lines
from the live stream; this reads the stored log so the chart starts complete.
"""

import math
import re

from sqlmodel import Session

from server import logs

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
TRAIN = re.compile(r"^step:(\d+)/\d+ .*?\btrain_loss:" + NUMBER)
VAL = re.compile(r"^step:(\d+)/\d+ .*?\bval_loss:" + NUMBER)
VAL_BPB = re.compile(r"\bval_bpb:" + NUMBER)
FINAL = re.compile(r"^final_\S+ .*?\bval_loss:" + NUMBER + r"(?:.*?\bval_bpb:" + NUMBER + ")?")

Points = list[tuple[int, float]]  # (step, loss in nats per token, or val_bpb in bits per byte)


def loss_points(text: str) -> dict[str, Points]:
    """{"train", "val", "final": [(step, val_loss)] (at most one point), "val_bpb",
    "final_bpb"} in log order; non-finite values left out."""
    points: dict[str, Points] = {"train": [], "val": [], "final": [], "val_bpb": [], "final_bpb": []}
    final: tuple[float, float | None] | None = None
    for line in text.splitlines():
        if match := TRAIN.match(line):
            _add(points["train"], int(match.group(1)), match.group(2))
        elif match := VAL.match(line):
            _add(points["val"], int(match.group(1)), match.group(2))
            if bpb := VAL_BPB.search(line):
                _add(points["val_bpb"], int(match.group(1)), bpb.group(1))
        elif match := FINAL.match(line):
            final = (float(match.group(1)), float(match.group(2)) if match.group(2) else None)
    if final is not None:
        step = max((p[0] for p in points["train"] + points["val"]), default=0)
        _add(points["final"], step, str(final[0]))
        if final[1] is not None:
            _add(points["final_bpb"], step, str(final[1]))
    return points


def _add(points: Points, step: int, raw: str) -> None:
    value = float(raw)
    if math.isfinite(value):
        points.append((step, value))


def stored_log(session: Session, run_id: int) -> str:
    """The run's whole stored train.log."""
    pieces, offset = [], 0
    while True:
        piece = logs.read_log(session, run_id, offset=offset, limit=logs.MAX_READ_BYTES)
        if piece.next_offset == offset:
            return "".join(pieces)
        pieces.append(piece.text)
        offset = piece.next_offset
