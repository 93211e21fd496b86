"""Slow nodes: a seed whose pod trained far slower than the pods of its experiment's other seeds.

A seed's step time is train_time_s / steps, in ms. A succeeded seed is flagged when its step
time passes `ratio` (settings.slow_node_ratio) times the median step time of the other
succeeded seeds of the same experiment and variant (an ablation variant may change the model,
and with it the step time). Every seed is looked at again whenever another one succeeds, so a
flag comes and goes as the median moves. Flags are information for people (hardware varies:
a fresh 8xH100 pod can be much slower than the next); they never change eligibility.
"""

from collections import defaultdict
from statistics import median

from sqlmodel import Session, select

from server.models import Run
from server.runs import update_run
from server.states import RunStatus

FLAG = "slow node:"  # start of the flag's text in Run.flags


def step_ms(run: Run) -> float | None:
    """Milliseconds per training step, or None when the run did not report both numbers."""
    if not run.steps or run.train_time_s is None or run.train_time_s <= 0:
        return None
    return run.train_time_s * 1000 / run.steps


def slow_node_flag(ms: float, others: list[float], ratio: float) -> str | None:
    """The flag for a seed at `ms` ms/step among `others`' step times, or None."""
    if not others:
        return None
    middle = median(others)
    if middle <= 0 or ms <= ratio * middle:
        return None
    return f"{FLAG} {ms:,.1f} ms/step, {ms / middle:.2f}× the median of the other seeds"


def flag_slow_nodes(session: Session, experiment_id: int, *, ratio: float) -> list[int]:
    """Set or clear the slow node flag of every succeeded seed of the experiment; returns the
    ids of runs whose flags changed."""
    query = select(Run).where(Run.experiment_id == experiment_id, Run.status == RunStatus.succeeded)
    groups: dict[str, list[tuple[Run, float]]] = defaultdict(list)
    for run in session.exec(query).all():
        ms = step_ms(run)
        if ms is not None:
            groups[run.variant].append((run, ms))
    changes: dict[int, list[str]] = {}
    for seeds in groups.values():
        for run, ms in seeds:
            others = [other_ms for other, other_ms in seeds if other.id != run.id]
            flag = slow_node_flag(ms, others, ratio)
            flags = [f for f in run.flags if not f.startswith(FLAG)] + ([flag] if flag else [])
            if flags != run.flags:
                assert run.id is not None
                changes[run.id] = flags
    for run_id, flags in changes.items():
        update_run(session, run_id, fence=None, flags=flags)  # a final run holds no lease
    return sorted(changes)
