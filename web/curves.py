"""Loss curves from the community's log lines, for the run page's chart.

`step:N/M train_loss:X ...` gives a training point, `step:N/M val_loss:X val_bpb:Y ...` a
validation point. static/app.js reads the same lines from the live stream; this reads the
stored log so the chart starts complete.
"""

import math
import re

NUMBER = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
TRAIN = re.compile(r"^step:(\d+)/\d+ .*?\btrain_loss:" + NUMBER)
VAL = re.compile(r"^step:(\d+)/\d+ .*?\bval_loss:" + NUMBER)

Points = list[tuple[int, float]]  # (step, loss in nats per token)


def loss_points(text: str) -> dict[str, Points]:
    """{"train": [(step, loss)], "val": [(step, loss)]} in log order; non-finite values left out."""
    points: dict[str, Points] = {"train": [], "val": []}
    for line in text.splitlines():
        for name, pattern in (("train", TRAIN), ("val", VAL)):
            match = pattern.match(line)
            if match:
                value = float(match.group(2))
                if math.isfinite(value):
                    points[name].append((int(match.group(1)), value))
                break
    return points
