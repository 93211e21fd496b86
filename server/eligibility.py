"""The challenge's rules, applied to what the worker measured. Each failed rule is a reason.

Facts of the challenge: code + compressed model <= 16,000,000 bytes (decimal); training
<= 600 s and evaluation <= 600 s on 8×H100 SXM; the full validation split is scored.

The time caps are judged as the challenge's own `train_gpt.py` keeps them: it reads its wall
clock after each step and stops once the cap is reached, so a run legally ends up to one step
past 600 s. A time is over the cap only when the time before its last step already was
(`time_reason`); without a known step time the plain cap applies.
"""

from dataclasses import dataclass

MAX_BYTES_TOTAL = 16_000_000
MAX_TRAIN_SECONDS = 600.0
MAX_EVAL_SECONDS = 600.0
RECORD_GPU_NAME = "H100"  # must appear in nvidia-smi's name, e.g. "NVIDIA H100 80GB HBM3"
RECORD_GPU_COUNT = 8
# Target tokens in the official validation split (first 50,000 documents), per tokenizer.
OFFICIAL_VAL_TOKENS = {
    "sp1024": 62_021_632,
    "sp4096": 45_508_608,
    "sp8192": 40_540_160,
}


@dataclass(frozen=True)
class Measurements:
    """What the worker measured itself (bytes, hardware, wall time) or read from results."""

    bytes_total: int | None
    train_time_s: float | None
    eval_time_s: float | None
    observed_wall_s: float | None  # launch -> exit, by the worker's clock
    val_tokens: int | None
    gpu_name: str | None
    gpu_count: int | None
    val_bpb: float | None
    train_step_s: float | None = None  # how long a training step took (the last, or the mean)
    eval_step_s: float | None = None  # how long an evaluation step took, where known


def run_reasons(m: Measurements, *, clock_tolerance_s: float) -> list[str]:
    """Why a finished run is not record-eligible; empty when it is."""
    reasons: list[str] = []
    if m.val_bpb is None:
        reasons.append("no score: the run reported no val_bpb")
    if m.bytes_total is None:
        reasons.append("artifact size unknown")
    elif m.bytes_total > MAX_BYTES_TOTAL:
        reasons.append(f"bytes_total {m.bytes_total:,} > {MAX_BYTES_TOTAL:,}")
    reasons += _time_reasons(m, clock_tolerance_s)
    if m.val_tokens not in OFFICIAL_VAL_TOKENS.values():
        reasons.append(f"val_tokens {m.val_tokens} is not a full official validation split")
    if not m.gpu_name or RECORD_GPU_NAME not in m.gpu_name or m.gpu_count != RECORD_GPU_COUNT:
        hardware = f"{m.gpu_count}×{m.gpu_name}" if m.gpu_name else "no GPU"
        reasons.append(f"hardware {hardware} is not {RECORD_GPU_COUNT}×{RECORD_GPU_NAME}")
    return reasons


def _time_reasons(m: Measurements, clock_tolerance_s: float) -> list[str]:
    reasons: list[str] = []
    for what, seconds, step_s, cap in (("train", m.train_time_s, m.train_step_s, MAX_TRAIN_SECONDS),
                                       ("eval", m.eval_time_s, m.eval_step_s, MAX_EVAL_SECONDS)):
        if seconds is None:
            reasons.append(f"{what} time unknown")
            continue
        why = time_reason(what, seconds, step_s, cap)
        if why:
            reasons.append(why)
    reported = (m.train_time_s or 0.0) + (m.eval_time_s or 0.0)
    if m.observed_wall_s is not None and reported > m.observed_wall_s + clock_tolerance_s:
        reasons.append(
            f"clocks disagree: trainer reports {reported:.1f} s of train+eval, "
            f"the worker saw the process run {m.observed_wall_s:.1f} s"
        )
    return reasons


def time_reason(what: str, seconds: float, step_s: float | None, cap: float) -> str | None:
    """Why `seconds` of `what` (train or eval) break the cap, or None. The official script
    checks its clock after each step, so the last step may end past the cap: the time is over
    only when the time without that step (`step_s`) is past the cap."""
    if seconds <= cap:
        return None
    if step_s is None or not step_s > 0:
        return f"{what} time {seconds:.3f} s > {cap:.0f} s (step time unknown)"
    before = seconds - step_s
    if before <= cap:
        return None
    return (f"{what} time {seconds:.3f} s > {cap:.0f} s: {before - cap:.3f} s over the cap before "
            f"its last step ({step_s * 1000:.1f} ms a step), more than the one step the official "
            f"script allows")
