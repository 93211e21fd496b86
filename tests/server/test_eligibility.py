"""The validation-token rule of `server.eligibility`: a missing count says which line is missing."""

from server.eligibility import OFFICIAL_VAL_TOKENS, Measurements, run_reasons


def measured(val_tokens: int | None) -> Measurements:
    return Measurements(bytes_total=15_000_000, train_time_s=590.0, eval_time_s=100.0, observed_wall_s=700.0,
                        val_tokens=val_tokens, gpu_name="NVIDIA H100 80GB HBM3", gpu_count=8, val_bpb=1.2)


def test_a_log_without_a_token_count_names_the_line_it_lacks() -> None:
    (reason,) = run_reasons(measured(None), clock_tolerance_s=5)
    assert reason.startswith("val_tokens unknown: the log has no line saying how many validation tokens")
    assert "val_loader:shards pattern=... tokens:N" in reason and "docs/scripts.md" in reason
    assert "None" not in reason


def test_a_partial_split_and_a_full_one() -> None:
    assert run_reasons(measured(1_000), clock_tolerance_s=5) == [
        "val_tokens 1000 is not a full official validation split"]
    assert run_reasons(measured(OFFICIAL_VAL_TOKENS["sp1024"]), clock_tolerance_s=5) == []
