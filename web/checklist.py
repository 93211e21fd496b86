"""The run page's verification checklist: each challenge rule, its limit, what the worker
measured and whether it holds.

The worker's stored `reasons` stay the authority on eligibility (they also carry the
clock cross-check); this list lays the same limits out next to the measured values.
"""

from dataclasses import dataclass

from server.eligibility import (
    MAX_BYTES_TOTAL,
    MAX_EVAL_SECONDS,
    MAX_TRAIN_SECONDS,
    OFFICIAL_VAL_TOKENS,
    RECORD_GPU_COUNT,
    RECORD_GPU_NAME,
)
from server.experiments import RunPublic
from web.rendering import MISSING, count, seconds


@dataclass(frozen=True)
class Check:
    rule: str
    limit: str
    measured: str  # MISSING when nothing was measured yet
    passed: bool | None  # None: not measured


def run_checks(run: RunPublic) -> list[Check]:
    return [_bytes_check(run), _time_check("Train time", run.train_time_s, MAX_TRAIN_SECONDS),
            _time_check("Eval time", run.eval_time_s, MAX_EVAL_SECONDS), _split_check(run),
            _hardware_check(run)]


def _bytes_check(run: RunPublic) -> Check:
    limit = f"≤ {MAX_BYTES_TOTAL:,} bytes"
    if run.bytes_total is None:
        return Check("Artifact size (code + model)", limit, MISSING, None)
    measured = f"{run.bytes_total:,} bytes"
    if run.code_bytes is not None and run.model_bytes is not None:
        measured += f" (code {run.code_bytes:,} + model {run.model_bytes:,})"
    headroom = MAX_BYTES_TOTAL - run.bytes_total
    measured += f"; {headroom:,} to spare" if headroom >= 0 else f"; {-headroom:,} over"
    return Check("Artifact size (code + model)", limit, measured, headroom >= 0)


def _time_check(rule: str, value: float | None, cap: float) -> Check:
    passed = None if value is None else value <= cap
    return Check(rule, f"≤ {cap:.0f} s", seconds(value), passed)


def _split_check(run: RunPublic) -> Check:
    limit = "full split: " + ", ".join(
        f"{name} {tokens:,}" for name, tokens in OFFICIAL_VAL_TOKENS.items()) + " tokens"
    if run.val_tokens is None:
        return Check("Full validation split", limit, MISSING, None)
    official = [name for name, tokens in OFFICIAL_VAL_TOKENS.items() if tokens == run.val_tokens]
    measured = f"{count(run.val_tokens)} tokens"
    measured += f" ({official[0]})" if official else " (not a full split)"
    return Check("Full validation split", limit, measured, bool(official))


def _hardware_check(run: RunPublic) -> Check:
    limit = f"{RECORD_GPU_COUNT} × {RECORD_GPU_NAME}"
    if run.gpu_name is None and run.gpu_count is None:
        return Check("Hardware", limit, MISSING, None)
    name = run.gpu_name or "no GPU"
    measured = f"{run.gpu_count} × {name}" if run.gpu_count is not None else name
    passed = (run.gpu_name is not None and RECORD_GPU_NAME in run.gpu_name
              and run.gpu_count == RECORD_GPU_COUNT)
    return Check("Hardware", limit, measured, passed)
