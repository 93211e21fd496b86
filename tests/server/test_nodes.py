"""The slow node rule: a seed's ms/step against the median of its experiment's other seeds."""

from sqlmodel import Session

from server.models import Run
from server.nodes import flag_slow_nodes, slow_node_flag, step_ms
from tests.factories import make_experiment, make_scored_run


def seed(session: Session, experiment, number: int, train_time_s: float, **fields) -> int:
    run = make_scored_run(session, experiment, seed=number, val_bpb=1.2, train_time_s=train_time_s,
                          steps=1000, **fields)
    assert run.id is not None
    return run.id


def flags(session: Session, run_id: int) -> list[str]:
    session.expire_all()
    run = session.get(Run, run_id)
    assert run is not None
    return run.flags


def test_step_time_and_the_flag_text():
    assert step_ms(Run(experiment_id=1, seed=1, train_time_s=123.4, steps=1000)) == 123.4
    assert step_ms(Run(experiment_id=1, seed=1, train_time_s=123.4, steps=0)) is None
    assert step_ms(Run(experiment_id=1, seed=1, steps=10)) is None
    assert slow_node_flag(123.4, [100.0, 100.4, 99.0], 1.15) == \
        "slow node: 123.4 ms/step, 1.23× the median of the other seeds"
    assert slow_node_flag(114.0, [100.0], 1.15) is None  # within the ratio
    assert slow_node_flag(500.0, [], 1.15) is None  # nothing to compare with


def test_a_slow_seed_is_flagged_and_the_others_are_not(session):
    experiment = make_experiment(session)
    fast = [seed(session, experiment, n, 100.0 + n) for n in range(3)]
    slow = seed(session, experiment, 9, 130.0, flags=["clock: reported more time than observed"])
    assert flag_slow_nodes(session, experiment.id, ratio=1.15) == [slow]
    assert flags(session, slow) == ["clock: reported more time than observed",  # other flags stay
                                    "slow node: 130.0 ms/step, 1.29× the median of the other seeds"]
    assert all(flags(session, run_id) == [] for run_id in fast)
    assert flag_slow_nodes(session, experiment.id, ratio=1.15) == []  # nothing changes twice


def test_earlier_seeds_are_looked_at_again_when_a_new_one_ends(session):
    experiment = make_experiment(session)
    first = seed(session, experiment, 1, 100.0)
    second = seed(session, experiment, 2, 120.0)
    assert flag_slow_nodes(session, experiment.id, ratio=1.15) == [second]  # 1.20× the only other seed
    third = seed(session, experiment, 3, 125.0)  # the first pod was the odd one out
    assert flag_slow_nodes(session, experiment.id, ratio=1.15) == [second]  # its flag is gone again
    assert flags(session, second) == [] and flags(session, third) == [] and flags(session, first) == []


def test_only_succeeded_seeds_of_the_same_variant_and_experiment_count(session):
    experiment, other = make_experiment(session), make_experiment(session, name="other")
    control = [seed(session, experiment, n, 100.0) for n in range(2)]
    wide = [seed(session, experiment, n, 150.0, variant="wide") for n in range(2)]  # another model
    seed(session, experiment, 5, 50.0, status="failed")
    seed(session, other, 1, 10.0)
    assert flag_slow_nodes(session, experiment.id, ratio=1.15) == []
    assert all(flags(session, run_id) == [] for run_id in control + wide)
