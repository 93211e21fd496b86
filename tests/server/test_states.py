"""Every move of a run, a pod and an experiment, legal and illegal, through its one writer;
and a check over the source that nothing else writes those statuses."""

import ast
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import StatementError
from sqlmodel import Session, select

from server.errors import InvalidTransition
from server.experiments import move_experiment
from server.models import Experiment, Pod, Run, RunEvent
from server.pods import move_pod
from server.runs import transition
from server.states import (
    EXPERIMENT_MOVES,
    POD_MOVES,
    ExperimentStatus,
    PodStatus,
    RunStatus,
    allowed_next,
)
from tests.factories import make_experiment, make_pod, make_run

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "server", "worker", "web", "cli")
# The one writer of each status; everything else creates rows (a status at birth) or reads.
WRITERS = {"server/runs.py", "server/pods.py", "server/experiments.py"}


@pytest.mark.parametrize("from_status", list(RunStatus))
def test_a_run_moves_only_where_its_table_allows(session: Session, from_status: RunStatus) -> None:
    experiment = make_experiment(session)
    for seed, to_status in enumerate(RunStatus):
        run = make_run(session, experiment, seed=seed, status=from_status.value)
        if to_status in allowed_next(from_status):
            transition(session, run.id, to_status, fence=None, reason="walk")
            session.refresh(run)
            assert run.status == to_status.value
            event = session.exec(select(RunEvent).where(RunEvent.run_id == run.id)
                                 .order_by(RunEvent.id.desc())).first()  # type: ignore[union-attr]
            assert (event.from_status, event.to_status) == (from_status.value, to_status.value)
        else:
            with pytest.raises(InvalidTransition, match=f"{from_status} -> {to_status}"):
                transition(session, run.id, to_status, fence=None)
            session.refresh(run)
            assert run.status == from_status.value


def test_the_run_table_is_the_happy_path_plus_failing_and_cancelling() -> None:
    assert allowed_next(RunStatus.queued) == {RunStatus.provisioning, RunStatus.failed, RunStatus.cancelled}
    assert allowed_next(RunStatus.verifying) == {RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled}
    assert all(not allowed_next(s) for s in (RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled))


@pytest.mark.parametrize("from_status", list(PodStatus))
def test_a_pod_moves_only_where_its_table_allows(session: Session, from_status: PodStatus) -> None:
    for to_status in PodStatus:
        pod = make_pod(session, None, status=from_status.value)
        if to_status in POD_MOVES[from_status] or to_status == from_status:
            move_pod(session, pod, to_status, host="10.0.0.9")
            stored = session.get(Pod, pod.id, populate_existing=True)
            assert (stored.status, stored.host) == (to_status.value, "10.0.0.9")
            assert (stored.terminated_at is not None) == (to_status == PodStatus.terminated)
        else:
            with pytest.raises(InvalidTransition, match=f"{from_status} -> {to_status} is not allowed"):
                move_pod(session, pod, to_status, host="10.0.0.9")
            stored = session.get(Pod, pod.id, populate_existing=True)
            assert (stored.status, stored.host) == (from_status.value, None)


def test_a_pod_table_holds_the_moves_the_workers_make() -> None:
    made = {(PodStatus.requested, PodStatus.starting), (PodStatus.starting, PodStatus.ready),
            (PodStatus.requested, PodStatus.ready), (PodStatus.ready, PodStatus.requested),
            (PodStatus.ready, PodStatus.busy), (PodStatus.busy, PodStatus.ready),
            *((s, end) for s in (PodStatus.requested, PodStatus.starting, PodStatus.ready, PodStatus.busy)
              for end in (PodStatus.released, PodStatus.terminated))}
    assert made == {(a, b) for a, moves in POD_MOVES.items() for b in moves}


def test_a_pod_read_before_another_worker_ended_it_cannot_be_moved_on(session: Session, engine) -> None:
    pod = make_pod(session, None, status=PodStatus.ready.value)
    with Session(engine) as other:
        move_pod(other, other.get(Pod, pod.id), PodStatus.terminated)
    assert pod.status == PodStatus.ready.value  # the stale copy this session holds
    with pytest.raises(InvalidTransition, match="terminated -> busy"):
        move_pod(session, pod, PodStatus.busy)
    assert session.get(Pod, pod.id, populate_existing=True).status == PodStatus.terminated.value


@pytest.mark.parametrize("from_status", list(ExperimentStatus))
def test_an_experiment_moves_only_where_its_table_allows(session: Session,
                                                        from_status: ExperimentStatus) -> None:
    for to_status in ExperimentStatus:
        experiment = make_experiment(session, status=from_status.value)
        if to_status in EXPERIMENT_MOVES[from_status] or to_status == from_status:
            move_experiment(session, experiment, to_status)
            session.commit()
            assert session.get(Experiment, experiment.id, populate_existing=True).status == to_status.value
        else:
            with pytest.raises(InvalidTransition, match=f"{from_status} -> {to_status} is not allowed"):
                move_experiment(session, experiment, to_status)
            assert session.get(Experiment, experiment.id, populate_existing=True).status == from_status.value


def test_an_experiment_read_before_it_was_cancelled_cannot_be_finished(session: Session, engine) -> None:
    experiment = make_experiment(session, status=ExperimentStatus.running.value)
    with Session(engine) as other:
        row = other.get(Experiment, experiment.id)
        move_experiment(other, row, ExperimentStatus.cancelled)
        other.commit()
    with pytest.raises(InvalidTransition, match="running -> finished"):
        move_experiment(session, experiment, ExperimentStatus.finished)
    assert session.get(Experiment, experiment.id, populate_existing=True).status == "cancelled"


def _status_writes(tree: ast.AST) -> list[int]:
    """Lines that assign `<x>.status` or pass `status=` to an UPDATE's `.values(...)`."""
    lines = []
    for node in ast.walk(tree):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for target in targets:
            parts = target.elts if isinstance(target, ast.Tuple) else [target]
            lines += [node.lineno for part in parts
                      if isinstance(part, ast.Attribute) and part.attr == "status"]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "values" and any(k.arg == "status" for k in node.keywords)):
            lines.append(node.lineno)
    return lines


def test_only_the_writers_write_a_status() -> None:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = path.relative_to(ROOT).as_posix()
            lines = _status_writes(ast.parse(path.read_text(), filename=name))
            if lines and name not in WRITERS:
                found[name] = lines
    assert found == {}


def test_the_source_check_sees_each_way_of_writing_a_status() -> None:
    source = ("pod.status = 'ready'\n"
              "pod.host, pod.status = None, 'requested'\n"
              "session.execute(update(t).values(status='busy'))\n"
              "Pod(status='requested')\n")  # a row born with a status is not a move
    assert _status_writes(ast.parse(source)) == [1, 2, 3]


def test_no_provider_module_writes_a_row() -> None:
    for path in sorted((ROOT / "worker" / "providers").glob("*.py")):
        text = path.read_text()
        for call in ("session.add(", "session.commit(", "session.execute(", "move_pod("):
            assert call not in text, f"{path.name} calls {call}"


def test_the_writers_commit_only_a_legal_move(session: Session) -> None:
    """A run, its pod and its experiment, each through its writer, as a worker moves them."""
    experiment = make_experiment(session)
    run = make_run(session, experiment, seed=1)
    pod = make_pod(session, run, status=PodStatus.requested.value)
    transition(session, run.id, RunStatus.provisioning, fence=None)
    move_experiment(session, experiment, ExperimentStatus.running)
    session.commit()
    for step in (PodStatus.starting, PodStatus.ready, PodStatus.busy, PodStatus.terminated):
        move_pod(session, pod, step)
    with pytest.raises(InvalidTransition):
        move_pod(session, pod, PodStatus.ready)
    rows = (session.get(Run, run.id, populate_existing=True), session.get(Pod, pod.id, populate_existing=True),
            session.get(Experiment, experiment.id, populate_existing=True))
    assert [row.status for row in rows] == ["provisioning", "terminated", "running"]


def test_a_status_is_stored_as_its_text_and_read_back_as_its_member(session: Session) -> None:
    run = make_run(session, make_experiment(session), seed=1, status=RunStatus.running.value)
    stored = session.execute(text("SELECT status FROM run WHERE id = :id"), {"id": run.id}).scalar_one()
    assert (type(stored), stored) == (str, "running")
    assert session.get(Run, run.id, populate_existing=True).status is RunStatus.running


def test_a_status_outside_its_enum_is_refused_and_nothing_is_written(session: Session) -> None:
    experiment = make_experiment(session)
    with pytest.raises(StatementError, match="'finishd' is not a valid RunStatus"):
        make_run(session, experiment, seed=1, status="finishd")
    session.rollback()
    assert session.exec(select(Run).where(Run.experiment_id == experiment.id)).all() == []
