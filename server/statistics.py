"""Significance of an experiment's per-seed scores against the record it means to beat.

The challenge's rule: a new record beats the current one by at least 0.005 nats at p < 0.01
over several seeds. The records state that margin in nats per token (the val_loss
difference), so that is the default unit: a val_bpb score becomes nats per token of the
experiment's own validation set as val_bpb × ln 2 × bytes per token (`to_units`). The bytes
per token come from the seeds themselves (val_loss / (val_bpb × ln 2), `bytes_per_token`), so
on one tokenizer the conversion is exactly the val_loss, and across tokenizers a reference's
val_bpb is measured in the tested experiment's tokens. On request the scores stay per byte:
val_bpb (bits per byte, margin 0.005 / ln 2) or val_bpb × ln 2 (nats per byte, margin 0.005;
the same t and p). Callers convert the scores.

Both tests are one-sided and report t with the sign of an improvement: t > 0 means the
experiment's mean lies below the threshold (reference − margin).
"""

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from scipy import stats

RECORD_MARGIN_NATS = 0.005
DEFAULT_ALPHA = 0.01
# Largest total number of seeds the "more seeds" estimate will consider.
MAX_SEEDS = 20

ONE_SAMPLE_TEST = "one-sided one-sample t-test"
WELCH_TEST = "one-sided Welch's t-test"


class Units(StrEnum):
    BITS_PER_BYTE = "bits_per_byte"  # val_bpb
    NATS_PER_BYTE = "nats_per_byte"  # val_bpb × ln 2
    NATS_PER_TOKEN = "nats_per_token"  # val_bpb × ln 2 × bytes per token: val_loss


DEFAULT_UNITS = Units.NATS_PER_TOKEN  # the unit the challenge's records state the margin in


def bytes_per_token(pairs: Iterable[tuple[float | None, float | None]]) -> float | None:
    """Bytes per token of a validation set, from its seeds' (val_loss nats/token, val_bpb
    bits/byte): val_bpb = val_loss / ln 2 × tokens / bytes, so bytes / token = val_loss /
    (val_bpb × ln 2). The mean over seeds that state both; None when none does."""
    ratios = [loss / (bpb * math.log(2)) for loss, bpb in pairs
              if loss is not None and bpb is not None and loss > 0 and bpb > 0]
    return sum(ratios) / len(ratios) if ratios else None


def scale(units: Units | str, per_token_bytes: float | None = None) -> float:
    """What a val_bpb is multiplied by to be in `units`. Per token needs the bytes per token."""
    units = Units(units)
    if units is Units.BITS_PER_BYTE:
        return 1.0
    if units is Units.NATS_PER_BYTE:
        return math.log(2)
    if per_token_bytes is None or not per_token_bytes > 0:
        raise ValueError("units nats_per_token needs the bytes per token of the validation "
                         "set (seeds with both val_loss and val_bpb)")
    return math.log(2) * per_token_bytes


def to_units(val_bpb: float, units: Units | str, per_token_bytes: float | None = None) -> float:
    """A val_bpb (or a difference of two) in `units`: Δnats/token = Δbpb × ln 2 × bytes/token."""
    return val_bpb * scale(units, per_token_bytes)


@dataclass(frozen=True)
class Significance:
    """A test's outcome. Numbers the data cannot define are None, never NaN; `note` says why."""

    test: str
    units: str
    alpha: float
    margin: float  # in `units`: 0.005 nats expressed per byte or per token
    threshold: float | None  # reference (mean) − margin; None without reference scores
    n: int
    mean: float | None
    std: float | None  # sample standard deviation, ddof=1
    t: float | None
    df: float | None
    p: float | None
    significant: bool
    # Estimated extra seeds for p < alpha; None when not needed or out of reach.
    more_seeds: int | None
    note: str
    reference_n: int | None = None  # Welch only: the reference experiment's seeds
    reference_mean: float | None = None
    reference_std: float | None = None
    # Per token: the bytes per token of the tested experiment's validation set (the scale).
    bytes_per_token: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def reason(self) -> str | None:
        """Why these scores do not show the required improvement (for an experiment's list
        of reasons); None when they do."""
        if self.significant:
            return None
        if self.p is None:
            return f"significance unknown: {self.note}"
        text = (f"not significant: p={self.p:.3g} >= {self.alpha} ({self.test}: mean "
                f"{self.mean:.8f} vs threshold {self.threshold:.8f} {self.units})")
        if self.more_seeds:
            text += f"; about {self.more_seeds} more seed(s) would likely be enough"
        return text


def record_margin(units: Units | str) -> float:
    """0.005 nats in the given units: 0.005 / ln 2 bits per byte, else 0.005 nats (per byte
    or per token)."""
    if Units(units) is Units.BITS_PER_BYTE:
        return RECORD_MARGIN_NATS / math.log(2)
    return RECORD_MARGIN_NATS


def one_sample_test(
    scores: Sequence[float],
    reference: float,
    *,
    units: Units | str = Units.BITS_PER_BYTE,
    alpha: float = DEFAULT_ALPHA,
    bytes_per_token: float | None = None,
    max_seeds: int = MAX_SEEDS,
) -> Significance:
    """Test whether the mean of `scores` lies below `reference` − 0.005 nats (in `units`)."""
    units = checked_units(units)
    values = _checked_scores(scores, "scores")
    reference = _checked_number(reference, "reference")
    _check_alpha(alpha)
    margin = record_margin(units)
    threshold = reference - margin
    summary = _Summary.of(values)
    base: dict[str, Any] = dict(test=ONE_SAMPLE_TEST, units=units.value, alpha=alpha, margin=margin,
                threshold=threshold, n=summary.n, mean=summary.mean, std=summary.std,
                bytes_per_token=bytes_per_token)
    undefined = _undefined_reason(summary, "scores")
    if undefined:
        return Significance(**base, t=None, df=None, p=None, significant=False,
                            more_seeds=None, note=undefined)
    result = stats.ttest_1samp(values, threshold, alternative="less")
    t, p, df = -float(result.statistic), float(result.pvalue), float(summary.n - 1)
    mean, std = summary.moments()
    extra, note = _more_seeds(
        summary, alpha, p, t, max_seeds,
        lambda n: _one_sample_p(mean, std, threshold, n),
    )
    return Significance(**base, t=t, df=df, p=p, significant=p < alpha,
                        more_seeds=extra, note=note)


def welch_test(
    scores: Sequence[float],
    reference_scores: Sequence[float],
    *,
    units: Units | str = Units.BITS_PER_BYTE,
    alpha: float = DEFAULT_ALPHA,
    bytes_per_token: float | None = None,
    max_seeds: int = MAX_SEEDS,
) -> Significance:
    """Test whether mean(scores) lies below mean(reference_scores) − 0.005 nats (in `units`),
    without assuming equal variances (Welch–Satterthwaite degrees of freedom)."""
    units = checked_units(units)
    values = _checked_scores(scores, "scores")
    reference = _checked_scores(reference_scores, "reference_scores")
    _check_alpha(alpha)
    margin = record_margin(units)
    mine, theirs = _Summary.of(values), _Summary.of(reference)
    threshold = (theirs.mean - margin) if theirs.mean is not None else None
    base: dict[str, Any] = dict(test=WELCH_TEST, units=units.value, alpha=alpha, margin=margin,
                threshold=threshold, n=mine.n, mean=mine.mean, std=mine.std,
                reference_n=theirs.n, reference_mean=theirs.mean, reference_std=theirs.std,
                bytes_per_token=bytes_per_token)
    undefined = _welch_undefined_reason(mine, theirs)
    if undefined:
        return Significance(**base, t=None, df=None, p=None, significant=False,
                            more_seeds=None, note=undefined)
    # Shifting the reference by the margin leaves its variance alone, so this tests
    # mean(scores) < mean(reference) − margin.
    with warnings.catch_warnings():
        # One side may have no spread (handled above when both do); scipy warns about it.
        warnings.filterwarnings("ignore", message="Precision loss", category=RuntimeWarning)
        result = stats.ttest_ind(values, reference - margin, equal_var=False,
                                 alternative="less")
    t, p, df = -float(result.statistic), float(result.pvalue), float(result.df)
    (mean, std), (reference_mean, reference_std) = mine.moments(), theirs.moments()
    extra, note = _more_seeds(
        mine, alpha, p, t, max_seeds,
        lambda n: _welch_p(mean, std, n, reference_std, theirs.n, reference_mean - margin),
    )
    return Significance(**base, t=t, df=df, p=p, significant=p < alpha,
                        more_seeds=extra, note=note)


@dataclass(frozen=True)
class _Summary:
    n: int
    mean: float | None
    std: float | None  # ddof=1; None below 2 values

    @classmethod
    def of(cls, values: np.ndarray) -> "_Summary":
        n = int(values.size)
        mean = float(values.mean()) if n else None
        std = float(values.std(ddof=1)) if n >= 2 else None
        return cls(n, mean, std)

    def moments(self) -> tuple[float, float]:
        """(mean, std) of at least 2 values; the tests call it once they have checked n."""
        if self.mean is None or self.std is None:
            raise ValueError(f"{self.n} value(s) have no mean and spread")
        return self.mean, self.std


def _undefined_reason(summary: _Summary, name: str) -> str:
    if summary.n < 2:
        return (f"{name}: {summary.n} value(s); a t-test needs at least 2 seeds "
                f"(the challenge expects 3)")
    if _no_spread(summary):
        return (f"{name}: all {summary.n} values are identical (std 0), so the t-test is "
                f"undefined; check that the seeds really differ")
    return ""


def _no_spread(summary: _Summary) -> bool:
    """Identical values, allowing for float rounding (0.1 + 0.2 vs 0.3)."""
    return (summary.std is not None and summary.mean is not None
            and summary.std <= 1e-12 * max(1.0, abs(summary.mean)))


def _welch_undefined_reason(mine: _Summary, theirs: _Summary) -> str:
    for summary, name in ((mine, "scores"), (theirs, "reference_scores")):
        if summary.n < 2:
            return _undefined_reason(summary, name)
    if _no_spread(mine) and _no_spread(theirs):
        return ("scores and reference_scores each have identical values (std 0), so the "
                "t-test is undefined; check that the seeds really differ")
    return ""


def _one_sample_p(mean: float, std: float, threshold: float, n: int) -> float:
    t = (threshold - mean) / (std / math.sqrt(n))
    return float(stats.t.sf(t, n - 1))


def _welch_p(mean: float, std: float, n: int, reference_std: float, reference_n: int,
             threshold: float) -> float:
    mine_var, theirs_var = std**2 / n, reference_std**2 / reference_n
    se = math.sqrt(mine_var + theirs_var)
    df = (mine_var + theirs_var) ** 2 / (
        mine_var**2 / (n - 1) + theirs_var**2 / (reference_n - 1))
    return float(stats.t.sf((threshold - mean) / se, df))


def _more_seeds(summary: _Summary, alpha: float, p: float, t: float, max_seeds: int,
                p_at: Callable[[int], float]) -> tuple[int | None, str]:
    """Smallest number of extra seeds whose p would fall below alpha if the observed mean
    and std held, searched up to `max_seeds` seeds in all."""
    if p < alpha:
        return None, ""
    if t <= 0:
        return None, "the mean is not below the threshold; more seeds of this config will not help"
    for n in range(summary.n + 1, max_seeds + 1):
        if p_at(n) < alpha:
            return n - summary.n, (f"if the observed mean and std hold, about {n - summary.n} "
                                   f"more seed(s) ({n} in all) would give p < {alpha}")
    return None, (f"even {max_seeds} seeds in all would not give p < {alpha} if the observed "
                  f"mean and std hold")


def checked_units(units: Units | str) -> Units:
    """`units` as Units; a ValueError naming the choices if it is none of them."""
    try:
        return Units(units)
    except ValueError:
        choices = ", ".join(u.value for u in Units)
        raise ValueError(f"units: {units!r} is not one of {choices}") from None


def _checked_scores(scores: Sequence[float], name: str) -> np.ndarray:
    if isinstance(scores, (str, bytes)):
        raise ValueError(f"{name}: expected a sequence of numbers, got {type(scores).__name__}")
    return np.array([_checked_number(v, f"{name}[{i}]") for i, v in enumerate(scores)],
                    dtype=float)


def _checked_number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def _check_alpha(alpha: float) -> None:
    if not isinstance(alpha, (int, float)) or not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha: expected a number between 0 and 1, got {alpha!r}")
