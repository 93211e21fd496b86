"""Reads the training logs of the community's record submissions into numbers.

The logs are prose written by many different scripts (see the research notes on their
formats): some begin with the whole training script's source, some hold several runs one
after another, some prefix every line with an epoch timestamp. The rules here:

- only lines that start with a known tag followed by digits count; quoted source code (the
  region from its first line to the next `=====` separator) is skipped altogether;
- progress lines (`step:N/M`, `ttt_chunk`, `running_bpb`, `key=value`) and diagnostics
  (`diagnostic quantized`, `DIAGNOSTIC post_ema`, `pre-quantization post-ema`) are never results;
- a new run starts where a run header (hyperparameters, seed, tokenizer, step 0, quoted
  source) follows lines of an earlier run's progress; the last run with a result is reported;
- the score is the final metric of the most refined evaluation (TTT > sliding window >
  round trip), unless that result is worse than another final metric of the run, as a
  diverged TTT is: then the better one is the score and a warning says why.

`parse_log(text)` returns a JSON-ready dict; every value the log does not state is None.
"""

import bisect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from server.eligibility import MAX_BYTES_TOTAL

# Two val_bpb values closer than this are equal: 4-decimal lines round by up to 5e-5.
SAME_SCORE_BPB = 1e-4

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_VALUE = rf"(?P<{{name}}>{_NUMBER}|[-+]?(?:nan|inf))(?![\w.])"
_LOSS = _VALUE.format(name="loss")
_BPB = _VALUE.format(name="bpb")

_TIMESTAMP = re.compile(r"^\d{9,11}\.\d{1,6}[ \t]")
_SEPARATOR = re.compile(r"^={20,}\s*$")
# First line of a quoted source file, or the header some scripts print above it.
_SOURCE_START = re.compile(
    r'^(?:import [\w.]+|from [\w.]+ import \w|[rRbBuU]?(?:"""|\'\'\')|#!|# |def \w|class \w|@\w'
    r"|Source code:\s*$)"
)
# `<tag> [stride:64] [(stride=16, T=0.90)] val_loss:X val_bpb:Y [...]`; a multi-word label
# is a diagnostic.
_METRIC = re.compile(
    rf"^(?P<label>[A-Za-z][\w.+-]*(?: [A-Za-z][\w.+-]*)*)(?: [a-z_]+:\d+)*(?: \([^()]*\))?"
    rf" val_loss:\s*{_LOSS} val_bpb:\s*{_BPB}(?P<rest>.*)$",
    re.IGNORECASE,
)
_DIAGNOSTIC_WORDS = ("diagnostic", "pre-quantization", "pre_quantization", "post_ema", "post-ema")
_EVAL_TIME = re.compile(r"\beval_time:\s*(\d+(?:\.\d+)?)ms")
_STEP_GEN1 = re.compile(r"^step:(?P<step>\d+)/(?P<of>\d+) (?:train|val)_loss:")
_STEP_GEN2 = re.compile(r"^(?P<step>\d+)/(?P<of>\d+) (?:train|val)_loss:")
_STEP_TIME = re.compile(r"\btrain_time:(\d+(?:\.\d+)?)ms")
_STEP_AVG = re.compile(r"\bstep_avg:(\d+(?:\.\d+)?)ms")
_STOP = re.compile(
    r"^stopping_early:.*?\btrain_time:\s*(?P<ms>\d+(?:\.\d+)?)ms\s+step:\s*(?P<step>\d+)/\d+"
)
_TOTAL = re.compile(r"^Total submission size(?: (?P<kind>[^:]+?))?:\s*(?P<n>\d+) bytes")
# Some non-record scripts state the size their own way: exactly (`budget:15670651/16000000
# (15.67/16.00MB) FITS`), or only in megabytes (`INT4+fp8+brotli: 15.67MB model + 0.077MB code =
# 15.75/16.00MB FITS`), which bounds it to within half the last printed digit.
_BUDGET = re.compile(r"^budget:\s*(?P<n>\d+)/\d+\b")
_MB_TOTAL = re.compile(r"^\s*(?:[\w+.-]+:\s*)?\d+(?:\.\d+)?MB model \+ \d+(?:\.\d+)?MB code = "
                       r"(?P<mb>\d+(?:\.(?P<decimals>\d+))?)/\d+(?:\.\d+)?MB")
_MODEL = re.compile(r"^Serialized model(?: (?P<kind>[^:]+?))?:\s*(?P<n>\d+) bytes")
_CODE = re.compile(r"^Code size(?: \((?P<kind>\w+)\))?:\s*(?P<n>\d+) bytes")
_SEED = re.compile(r"^\s*seed:\s*(\d+)\s*$")
# A settings line of `key=value` words only (`... run_id=x seed=1337 seq_len_start=0 ...`).
_SETTINGS_SEED = re.compile(r"^(?:\w+=\S+ )*seed=(\d+)(?: \w+=\S+)*\s*$")
_VAL_TOKENS = re.compile(r"^(?:val_tokens:\s*|val_loader:.*\btokens:)(\d+)\s*$")
_RUN_HEADER = re.compile(
    r"^(?:Hyperparameters:\s*$|val_bpb:enabled\b|Running Python\b|logs/\S+\.txt\s*$"
    r"|train_shards:|train_loader:|warmup_step:\s*1/|(?:step:)?0/\d+ val_loss:)"
)


@dataclass
class _Metric:
    tag: str
    val_loss: float
    val_bpb: float
    eval_time_ms: float | None
    line: int
    decimals: int  # of val_bpb as printed: 8 for `_exact` lines, 4 for their rounded twins

    @property
    def base_tag(self) -> str:
        return self.tag.removesuffix("_exact")

    def as_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "val_loss": self.val_loss, "val_bpb": self.val_bpb,
                "eval_time_ms": _whole(self.eval_time_ms), "line": self.line}


@dataclass
class _Run:
    first_line: int
    # Saw training, sizes or results: a run header after this starts a new run.
    progressed: bool = False
    seed: int | None = None
    val_tokens: int | None = None
    steps: int | None = None
    train_time_ms: float | None = None
    step_avg_ms: float | None = None
    # (step, train_time_ms) of the last two logged steps: the recent pace of a step.
    timed_steps: list[tuple[int, float]] = field(default_factory=list)
    code_bytes: int | None = None
    code_bytes_compressed: int | None = None
    model_bytes: int | None = None
    totals: list[tuple[str | None, int, int]] = field(default_factory=list)  # kind, bytes, line
    megabytes: tuple[str, int] | None = None  # a total stated only in MB (as printed), its line
    metrics: list[_Metric] = field(default_factory=list)
    diagnostics: list[_Metric] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def parse_log(text: str | bytes) -> dict[str, Any]:
    """Parse one training log (str, or bytes decoded as UTF-8) into a JSON-ready dict:
    score {tag, val_loss, val_bpb}, metrics [every final metric], diagnostics, bytes_total,
    code_bytes, model_bytes, steps, train_time_ms, step_avg_ms, step_ms (a training step's
    time, for the one-step time rule), eval_time_ms, seed,
    val_tokens, runs (how many the file holds) and warnings."""
    text, warnings = _decoded(text)
    lines = [_TIMESTAMP.sub("", line) for line in re.split(r"\r\n|\r|\n", text)]
    source = _quoted_source(lines, warnings)
    runs = _read_runs(lines, source)
    run = _reported_run(runs, warnings)
    return _report(run, len(runs), warnings)


def _decoded(text: str | bytes) -> tuple[str, list[str]]:
    if isinstance(text, bytes):
        decoded = text.decode("utf-8", errors="replace")
        bad = decoded.count("\ufffd") - text.count("\ufffd".encode())
        warnings = [f"{bad} byte sequence(s) were not UTF-8 and were replaced"] if bad else []
        return decoded.removeprefix("\ufeff"), warnings
    if not isinstance(text, str):
        raise TypeError(f"parse_log: text must be str or bytes, got {type(text).__name__}")
    return text.removeprefix("\ufeff"), []


def _quoted_source(lines: list[str], warnings: list[str]) -> set[int]:
    """Indexes of lines inside quoted source code: from a line that opens a Python file
    up to the next `=====` separator. Without a closing separator nothing is skipped."""
    separators = [i for i, line in enumerate(lines) if _SEPARATOR.match(line)]
    skipped: set[int] = set()
    i = 0
    while i < len(lines):
        end = _source_end(separators, i) if _SOURCE_START.match(lines[i]) else None
        if end is None:
            i += 1
            continue
        for j in range(i, end + 1):
            if _METRIC.match(lines[j]) or _TOTAL.match(lines[j]):
                warnings.append(f"line {j + 1} looks like a result but lies inside quoted "
                                f"source code (lines {i + 1}-{end + 1}); ignored")
        skipped.update(range(i, end + 1))
        i = end + 1
    return skipped


def _source_end(separators: list[int], start: int) -> int | None:
    """The closing separator of the source region opened at `start` (separators right after
    a `Source code:` header open the region rather than close it)."""
    k = bisect.bisect_right(separators, start)
    after = start + 1
    while k < len(separators) and separators[k] == after:
        k, after = k + 1, after + 1
    return separators[k] if k < len(separators) else None


def _read_runs(lines: list[str], source: set[int]) -> list[_Run]:
    runs = [_Run(first_line=1)]
    for index, line in enumerate(lines):
        number = index + 1
        if index in source:
            if index - 1 not in source and runs[-1].progressed:
                runs.append(_Run(first_line=number))
            continue
        if runs[-1].progressed and (_RUN_HEADER.match(line) or _SEED.match(line)):
            runs.append(_Run(first_line=number))
        _read_line(runs[-1], line, number)
    return runs


def _read_line(run: _Run, line: str, number: int) -> None:
    for pattern, handler in _HANDLERS:
        match = pattern.match(line)
        if match:
            handler(run, match, number)
            return


def _on_metric(run: _Run, m: re.Match[str], number: int) -> None:
    label = m["label"]
    try:
        loss, bpb = _finite(m["loss"]), _finite(m["bpb"])
    except ValueError:
        run.warnings.append(f"line {number}: {label} reports val_loss {m['loss']} "
                            f"val_bpb {m['bpb']}, not finite numbers; ignored")
        run.progressed = True
        return
    eval_time = _EVAL_TIME.search(m["rest"])
    decimals = len(m["bpb"].partition(".")[2])
    metric = _Metric(label, loss, bpb, float(eval_time[1]) if eval_time else None, number, decimals)
    is_diagnostic = " " in label or any(w in label.lower() for w in _DIAGNOSTIC_WORDS)
    (run.diagnostics if is_diagnostic else run.metrics).append(metric)
    run.progressed = True


def _on_step(run: _Run, m: re.Match[str], _number: int) -> None:
    run.progressed = True
    run.steps = int(m["step"])
    rest = m.string[m.end():]
    train_time, step_avg = _STEP_TIME.search(rest), _STEP_AVG.search(rest)
    if train_time:
        run.train_time_ms = float(train_time[1])
        run.timed_steps = [*run.timed_steps[-1:], (run.steps, run.train_time_ms)]
    if step_avg:
        run.step_avg_ms = float(step_avg[1])


def _on_stop(run: _Run, m: re.Match[str], _number: int) -> None:
    run.progressed = True
    run.steps = int(m["step"])
    run.train_time_ms = float(m["ms"])


def _on_total(run: _Run, m: re.Match[str], number: int) -> None:
    run.progressed = True
    run.totals.append((m["kind"], int(m["n"]), number))


def _on_budget(run: _Run, m: re.Match[str], number: int) -> None:
    run.progressed = True
    run.totals.append(("budget", int(m["n"]), number))


def _on_megabytes(run: _Run, m: re.Match[str], number: int) -> None:
    run.progressed = True
    run.megabytes = (m["mb"], number)


def _on_model(run: _Run, m: re.Match[str], _number: int) -> None:
    run.progressed = True
    if m["kind"]:  # the unnamed one is the raw fp32/bf16 state dict, not the artifact
        run.model_bytes = int(m["n"])


def _on_code(run: _Run, m: re.Match[str], _number: int) -> None:
    if m["kind"] == "compressed":
        run.code_bytes_compressed = int(m["n"])
    else:
        run.code_bytes = int(m["n"])


def _on_seed(run: _Run, m: re.Match[str], _number: int) -> None:
    if run.seed is None:
        run.seed = int(m[1])


def _on_val_tokens(run: _Run, m: re.Match[str], _number: int) -> None:
    if run.val_tokens is None:
        run.val_tokens = int(m[1])


_HANDLERS: list[tuple[re.Pattern[str], Callable[[_Run, re.Match[str], int], None]]] = [
    (_STEP_GEN1, _on_step),
    (_STEP_GEN2, _on_step),
    (_STOP, _on_stop),
    (_METRIC, _on_metric),
    (_TOTAL, _on_total),
    (_BUDGET, _on_budget),
    (_MB_TOTAL, _on_megabytes),
    (_MODEL, _on_model),
    (_CODE, _on_code),
    (_SEED, _on_seed),
    (_SETTINGS_SEED, _on_seed),
    (_VAL_TOKENS, _on_val_tokens),
]


def _reported_run(runs: list[_Run], warnings: list[str]) -> _Run:
    """The last run with a final metric (the submitted one when a file holds several)."""
    scored = [i for i, run in enumerate(runs) if run.metrics]
    chosen = scored[-1] if scored else len(runs) - 1
    if len(runs) > 1:
        warnings.append(f"the log holds {len(runs)} runs; reporting run {chosen + 1} "
                        f"(from line {runs[chosen].first_line})")
    for later in runs[chosen + 1:]:
        warnings.append(f"the run from line {later.first_line} has no final metric "
                        f"(crashed or cut short?)")
    return runs[chosen]


def _report(run: _Run, run_count: int, warnings: list[str]) -> dict[str, Any]:
    warnings.extend(run.warnings)
    _fill_eval_times(run.metrics)
    score = _score(run.metrics, warnings)
    code_bytes = run.code_bytes_compressed or run.code_bytes
    bytes_total = _bytes_total(run, code_bytes, warnings)
    return {
        "score": ({"tag": score.tag, "val_loss": score.val_loss, "val_bpb": score.val_bpb}
                  if score else None),
        "metrics": [metric.as_dict() for metric in run.metrics],
        "diagnostics": [metric.as_dict() for metric in run.diagnostics],
        "bytes_total": bytes_total,
        "bytes_total_at_most": None if bytes_total is not None else _at_most(run, warnings),
        "code_bytes": code_bytes,
        "model_bytes": run.model_bytes,
        "steps": run.steps,
        "train_time_ms": _whole(run.train_time_ms),
        "step_avg_ms": run.step_avg_ms,
        "step_ms": _step_ms(run),
        "eval_time_ms": _whole(score.eval_time_ms) if score else None,
        "seed": run.seed,
        "val_tokens": run.val_tokens,
        "runs": run_count,
        "warnings": warnings,
    }


def _step_ms(run: _Run) -> float | None:
    """How long a training step took, for the time rule: the pace between the last two
    logged steps (the last steps of a run are often slower than its mean), else the last
    logged `step_avg`, else the training time over the steps."""
    if len(run.timed_steps) == 2 and run.timed_steps[1][0] > run.timed_steps[0][0]:
        (first, first_ms), (last, last_ms) = run.timed_steps
        return round((last_ms - first_ms) / (last - first), 3)
    if run.step_avg_ms is not None:
        return run.step_avg_ms
    if run.train_time_ms is not None and run.steps:
        return round(run.train_time_ms / run.steps, 3)
    return None


def _fill_eval_times(metrics: list[_Metric]) -> None:
    """An `_exact` line repeats its rounded twin's numbers without the eval time."""
    timed = {m.base_tag: m.eval_time_ms for m in metrics if m.eval_time_ms is not None}
    for metric in metrics:
        if metric.eval_time_ms is None:
            metric.eval_time_ms = timed.get(metric.base_tag)


def _score(metrics: list[_Metric], warnings: list[str]) -> _Metric | None:
    if not metrics:
        warnings.append("no final metric line (e.g. final_..._exact val_loss:X val_bpb:Y): "
                        "the run did not finish, or its format is unknown")
        return None
    best = min(metrics, key=lambda m: m.val_bpb)
    for candidate in sorted(_most_precise(metrics), key=_refinement, reverse=True):
        if candidate.val_bpb <= best.val_bpb + SAME_SCORE_BPB:
            return candidate
        warnings.append(
            f"{candidate.tag} val_bpb {candidate.val_bpb:.8f} (line {candidate.line}) is worse "
            f"than {best.tag} val_bpb {best.val_bpb:.8f} (line {best.line}): a diverged "
            f"evaluation is not taken as the score"
        )
    return best


def _most_precise(metrics: list[_Metric]) -> list[_Metric]:
    """One metric per tag family (`x` and `x_exact`): the one printed with most decimals."""
    chosen: dict[str, _Metric] = {}
    for metric in metrics:
        held = chosen.get(metric.base_tag)
        if held is None or metric.decimals >= held.decimals:
            chosen[metric.base_tag] = metric
    return list(chosen.values())


def _refinement(metric: _Metric) -> tuple[int, int]:
    """TTT builds on sliding-window evaluation, which builds on the plain round trip."""
    tag = metric.tag.lower()
    rank = 2 if "ttt" in tag else 1 if "sliding" in tag else 0
    return rank, metric.line


def _bytes_total(run: _Run, code_bytes: int | None, warnings: list[str]) -> int | None:
    """The last `Total submission size <kind>` line; the kind-less one counts the raw model."""
    named = [(kind, n, line) for kind, n, line in run.totals if kind]
    if not named and run.totals:
        _, n, line = run.totals[-1]
        warnings.append(f"only an unnamed 'Total submission size' (line {line}) is given; "
                        f"it usually counts the uncompressed model")
    chosen = (named or run.totals or [None])[-1]
    if chosen is None:
        return None
    bytes_total = chosen[1]
    if len({n for _, n, _ in named}) > 1:
        warnings.append("'Total submission size' lines disagree: "
                        + ", ".join(f"{kind} {n}" for kind, n, _ in named)
                        + f"; reporting the last, {bytes_total}")
    if code_bytes is not None and run.model_bytes is not None and named \
            and code_bytes + run.model_bytes != bytes_total:
        warnings.append(f"code_bytes {code_bytes} + model_bytes {run.model_bytes} "
                        f"!= bytes_total {bytes_total}")
    if bytes_total > MAX_BYTES_TOTAL:
        warnings.append(f"bytes_total {bytes_total:,} is over the {MAX_BYTES_TOTAL:,}-byte cap: "
                        f"not record-eligible")
    return bytes_total


def _at_most(run: _Run, warnings: list[str]) -> int | None:
    """The most bytes a total stated only in megabytes can be: the printed value plus half its
    last digit (15.75 MB: at most 15,755,000 bytes)."""
    if run.megabytes is None:
        return None
    printed, line = run.megabytes
    decimals = len(printed.partition(".")[2])
    at_most = math.floor((Decimal(printed) + Decimal(5) / 10 ** (decimals + 1)) * 10**6)
    warnings.append(f"the artifact's size is stated only as {printed} MB (line {line}): "
                    f"at most {at_most:,} bytes")
    return at_most


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def _whole(value: float | None) -> int | float | None:
    """Milliseconds as an int when the log printed a whole number."""
    if value is None:
        return None
    return int(value) if value.is_integer() else value
