"""The challenge's rules on what the worker measured: the time caps as the official script
keeps them (it checks its clock after each step without waiting for the GPU, so its last step
and one still running may end past 600 s), and the validation-token rule (a missing count says
which line is missing)."""

from server.eligibility import OFFICIAL_VAL_TOKENS, Measurements, run_reasons, time_reason

RECORD = Measurements(bytes_total=15_900_000, train_time_s=599.0, eval_time_s=300.0,
                      observed_wall_s=1_500.0, val_tokens=62_021_632,
                      gpu_name="NVIDIA H100 80GB HBM3", gpu_count=8, val_bpb=1.2)


def with_times(train_s: float, step_s: float | None, eval_s: float = 300.0,
               eval_step_s: float | None = None) -> list[str]:
    m = Measurements(**{**RECORD.__dict__, "train_time_s": train_s, "train_step_s": step_s,
                        "eval_time_s": eval_s, "eval_step_s": eval_step_s})
    return run_reasons(m, clock_tolerance_s=5.0)


def test_a_run_within_the_caps_has_no_reason() -> None:
    assert with_times(599.0, 0.085) == []


def test_the_last_step_may_pass_the_cap() -> None:
    assert with_times(600.085, 0.085) == []  # 600.000 s before its last step
    assert with_times(600.137, 0.2) == []


def test_more_than_those_steps_past_the_cap_fails_and_says_by_how_much() -> None:
    assert with_times(600.170, 0.085) == []  # exactly two steps past
    (why,) = with_times(600.186, 0.085)
    assert why == ("train time 600.186 s > 600 s: 0.186 s over, 2.2 steps of 85.0 ms, more than "
                   "the last step (and the one the GPU was still running) that the official "
                   "script lets pass the cap")


def test_without_a_step_time_the_plain_cap_holds() -> None:
    assert with_times(600.001, None) == ["train time 600.001 s > 600 s (step time unknown)"]


def test_eval_uses_its_own_steps_where_known() -> None:
    assert with_times(599.0, 0.085, eval_s=600.5, eval_step_s=1.0) == []
    assert with_times(599.0, 0.085, eval_s=600.5)[0].startswith("eval time 600.500 s > 600 s")


def test_time_reason_at_exactly_the_cap() -> None:
    assert time_reason("train", 600.0, None, 600.0) is None


def measured_tokens(val_tokens: int | None) -> Measurements:
    return Measurements(bytes_total=15_000_000, train_time_s=590.0, eval_time_s=100.0, observed_wall_s=700.0,
                        val_tokens=val_tokens, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=8, val_bpb=1.2)


def test_a_log_without_a_token_count_names_the_line_it_lacks() -> None:
    (reason,) = run_reasons(measured_tokens(None), clock_tolerance_s=5)
    assert reason.startswith("val_tokens unknown: the log has no line saying how many validation tokens")
    assert "val_loader:shards pattern=... tokens:N" in reason and "docs/scripts.md" in reason
    assert "None" not in reason


def test_a_partial_split_and_a_full_one() -> None:
    assert run_reasons(measured_tokens(1_000), clock_tolerance_s=5) == [
        "val_tokens 1000 is not a full official validation split"]
    assert run_reasons(measured_tokens(OFFICIAL_VAL_TOKENS["sp1024"]), clock_tolerance_s=5) == []
