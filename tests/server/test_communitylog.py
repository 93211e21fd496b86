"""The community log parser: real record logs against the values their submissions reported
(tests/fixtures/record-logs/truth.json), and synthetic logs for the edge cases."""

import json
import random
import re

import pytest

from server.communitylog import parse_log
from tests.fixture_files import RECORD_LOGS, record_log

TRUTH_FILE = RECORD_LOGS / "truth.json"
TRUTH = json.loads(TRUTH_FILE.read_text())
FIXTURES = sorted(name for name in TRUTH if not name.startswith("_"))
TRAPS = {name for name in FIXTURES if "TRAP" in TRUTH[name].get("note", "")}


def _fixture(name: str) -> bytes:
    return record_log(name)


def test_fixtures_are_present() -> None:
    assert all((RECORD_LOGS / name).is_file() for name in FIXTURES)
    assert len(FIXTURES) >= 10, f"{TRUTH_FILE} lists too few logs"


@pytest.mark.parametrize("name", FIXTURES)
def test_record_log_reproduces_submission(name: str) -> None:
    truth = TRUTH[name]
    result = parse_log(_fixture(name))
    assert result["score"] is not None
    assert result["score"]["tag"] == truth["headline_tag"]
    assert result["score"]["val_bpb"] == pytest.approx(truth["val_bpb"], abs=1e-9)
    assert result["score"]["val_loss"] == pytest.approx(truth["val_loss"], abs=1e-9)
    assert result["bytes_total"] == truth["bytes_total"]
    for key in ("seed", "steps", "train_time_ms"):
        if key in truth:
            assert result[key] == truth[key], key
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("name", FIXTURES)
def test_every_metric_comes_from_a_real_result_line(name: str) -> None:
    data = _fixture(name)
    lines = data.decode().splitlines()
    result = parse_log(data)
    assert result["score"]["tag"] in {m["tag"] for m in result["metrics"]}
    for metric in result["metrics"] + result["diagnostics"]:
        line = re.sub(r"^\d+\.\d+ ", "", lines[metric["line"] - 1])
        assert line.startswith(metric["tag"] + " "), line
        printed = re.search(r" val_bpb:\s*([0-9.]+)", line)
        assert printed and float(printed[1]) == metric["val_bpb"], line
    for metric in result["metrics"]:
        assert "diagnostic" not in metric["tag"].lower()
        assert "pre-quantization" not in metric["tag"]
    # The score also exists in the code + model = total accounting the log states.
    if result["code_bytes"] is not None and result["model_bytes"] is not None:
        assert result["code_bytes"] + result["model_bytes"] == result["bytes_total"]


@pytest.mark.parametrize("name", FIXTURES)
def test_clean_single_run_logs_raise_no_warnings(name: str) -> None:
    result = parse_log(_fixture(name))
    if name in TRAPS or "runs one after another" in TRUTH[name].get("note", ""):
        assert result["warnings"]
    else:
        assert result["warnings"] == [], result["warnings"]
        assert result["runs"] == 1


def test_diverged_ttt_is_listed_and_flagged_not_scored() -> None:
    result = parse_log(_fixture("trap_diverged_ttt_seed42.log"))
    ttt = [m for m in result["metrics"] if m["tag"] == "final_int6_ttt"]
    assert len(ttt) == 1 and ttt[0]["val_bpb"] == pytest.approx(1.336032)
    assert result["score"]["tag"] == "final_int6_sliding_window"
    assert any("final_int6_ttt" in w and "worse" in w for w in result["warnings"])
    assert result["eval_time_ms"] == next(
        m["eval_time_ms"] for m in result["metrics"] if m["tag"] == "final_int6_sliding_window")


def test_over_cap_size_is_flagged() -> None:
    result = parse_log(_fixture("trap_over_size_cap.log"))
    assert result["bytes_total"] > 16_000_000
    assert any("16,000,000" in w for w in result["warnings"])


def test_three_runs_in_one_file_report_the_last() -> None:
    result = parse_log(_fixture("mixedquant_int6int8.log"))
    assert result["runs"] == 3
    assert any("3 runs" in w for w in result["warnings"])
    # Only the last run's final metrics, not the two earlier runs'.
    assert len(result["metrics"]) == 4
    assert min(m["line"] for m in result["metrics"]) > 500


def test_timestamped_lines_and_ttt_timer() -> None:
    result = parse_log(_fixture("phased_ttt_timestamped_seed1.log"))
    assert result["seed"] == 1
    assert result["val_tokens"] == 40_540_160
    assert result["eval_time_ms"] == 515_324
    assert [d["tag"] for d in result["diagnostics"]] == [
        "diagnostic pre-quantization post-ema", "diagnostic quantized"]


# ---- synthetic logs (written for these tests; numbers are made up) ----

def _run(seed: int, bpb: str, *, steps: int = 900, final: bool = True) -> list[str]:
    loss = f"{float(bpb) * 1.6931:.8f}"
    lines = [
        "val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=./tok/sp1024.model",
        "val_loader:shards pattern=./val/fineweb_val_*.bin tokens:62021632",
        f"seed:{seed}",
        "warmup_step:1/5",
        "step:0/1000 val_loss:6.9000 val_bpb:4.0900 train_time:0ms step_avg:0.02ms",
        "step:1/1000 train_loss:6.9100 train_time:70ms step_avg:70.00ms",
        f"step:{steps}/1000 val_loss:2.1000 val_bpb:1.2400 train_time:{steps * 66}ms "
        "step_avg:66.00ms",
        f"stopping_early: wallclock_cap train_time:{steps * 66}ms step:{steps}/1000",
        "DIAGNOSTIC post_ema val_loss:2.0000 val_bpb:1.1100 eval_time:900ms",
        "Serialized model: 60000000 bytes",
        "Code size: 50000 bytes",
        "Total submission size: 60050000 bytes",
        "Serialized model int8+zlib: 15000000 bytes",
        "Total submission size int8+zlib: 15050000 bytes",
    ]
    if final:
        lines += [
            f"final_int8_zlib_roundtrip val_loss:{float(loss):.4f} val_bpb:{float(bpb):.4f} "
            "eval_time:1500ms",
            f"final_int8_zlib_roundtrip_exact val_loss:{loss} val_bpb:{bpb}",
        ]
    return lines


QUOTED_SOURCE = [
    '"""Train a tiny GPT. Example of the last line it prints:',
    "final_int8_zlib_roundtrip_exact val_loss:0.10000000 val_bpb:0.05000000",
    '"""',
    "import os",
    "Total submission size int8+zlib: 123 bytes",
    "def main():",
    '    log0(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")',
    '    log0(f"Total submission size int8+zlib: {total} bytes")',
    "=" * 100,
]


def _text(lines: list[str], newline: str = "\n") -> str:
    return newline.join(lines) + newline


def test_synthetic_run_is_read() -> None:
    result = parse_log(_text(_run(7, "1.23456789")))
    assert result["score"] == {"tag": "final_int8_zlib_roundtrip_exact",
                               "val_loss": pytest.approx(1.23456789 * 1.6931, abs=1e-8),
                               "val_bpb": 1.23456789}
    assert (result["seed"], result["steps"], result["train_time_ms"]) == (7, 900, 900 * 66)
    assert result["step_avg_ms"] == 66.0
    assert (result["bytes_total"], result["code_bytes"], result["model_bytes"]) == (
        15_050_000, 50_000, 15_000_000)
    assert result["eval_time_ms"] == 1500
    assert result["val_tokens"] == 62_021_632
    assert result["warnings"] == []


def test_quoted_source_is_never_read_as_results() -> None:
    result = parse_log(_text(QUOTED_SOURCE + _run(3, "1.25000000")))
    assert result["runs"] == 1
    assert result["score"]["val_bpb"] == 1.25
    assert result["bytes_total"] == 15_050_000
    assert all(m["val_bpb"] != 0.05 for m in result["metrics"])
    # The two quoted lines that look like results are pointed out.
    assert sum("inside quoted source code" in w for w in result["warnings"]) == 2


def test_source_without_closing_separator_is_still_parsed_by_anchored_patterns() -> None:
    # Without a separator the region is not skipped; indented code must still not match.
    result = parse_log(_text(["import os", QUOTED_SOURCE[6], QUOTED_SOURCE[7]]
                             + _run(3, "1.25000000")))
    assert [m["val_bpb"] for m in result["metrics"]] == [1.25, 1.25]


def test_two_runs_report_the_last() -> None:
    result = parse_log(_text(_run(1, "1.26000000", steps=800) + _run(2, "1.24000000")))
    assert result["runs"] == 2
    assert result["seed"] == 2 and result["steps"] == 900
    assert result["score"]["val_bpb"] == 1.24
    assert [m["val_bpb"] for m in result["metrics"]] == [1.24, 1.24]
    assert [d["line"] for d in result["diagnostics"]] == [len(_run(1, "1.26")) + 9]
    assert any("2 runs" in w for w in result["warnings"])


def test_two_runs_in_code_embedding_logs_split_at_the_source() -> None:
    result = parse_log(_text(QUOTED_SOURCE + _run(1, "1.26000000")
                             + QUOTED_SOURCE + _run(2, "1.24000000")))
    assert result["runs"] == 2 and result["seed"] == 2
    second = len(QUOTED_SOURCE + _run(1, "1.26")) + 1
    assert f"reporting run 2 (from line {second})" in result["warnings"][-1]


def test_crashed_last_run_is_flagged() -> None:
    lines = _run(1, "1.26000000") + _run(2, "1.24000000", final=False)
    result = parse_log(_text(lines))
    assert result["score"]["val_bpb"] == 1.26 and result["seed"] == 1
    later = len(_run(1, "1.26")) + 1
    assert any(f"line {later} has no final metric" in w for w in result["warnings"])


def test_no_final_line_gives_null_score_and_a_warning() -> None:
    result = parse_log(_text(_run(5, "1.2", final=False)))
    assert result["score"] is None and result["metrics"] == []
    assert result["eval_time_ms"] is None
    assert result["steps"] == 900  # what the log does say is still reported
    assert any("no final metric" in w for w in result["warnings"])
    json.dumps(result, allow_nan=False)


def test_empty_log() -> None:
    result = parse_log("")
    assert result["score"] is None and result["bytes_total"] is None and result["seed"] is None
    assert result["warnings"]


def test_crlf_and_lone_cr_line_endings_read_the_same() -> None:
    lines = QUOTED_SOURCE + _run(9, "1.21000000")
    expected = parse_log(_text(lines))
    assert parse_log(_text(lines, "\r\n")) == expected
    assert parse_log(_text(lines, "\r")) == expected
    assert parse_log(_text(lines, "\r\n").encode()) == expected


def test_garbage_bytes_are_survived_and_reported() -> None:
    noise = random.Random(0)
    lines = [line.encode() for line in _run(4, "1.22000000")]
    mixed: list[bytes] = []
    for line in lines:
        mixed += [line, bytes([0xFF, 0xFE]) + noise.randbytes(40).replace(b"\n", b"")]
    mixed[-2] += b"\xc3\x28\x00"  # invalid UTF-8 and a NUL right after the final number
    result = parse_log(b"\n".join(mixed))
    assert result["score"]["val_bpb"] == 1.22
    assert result["seed"] == 4 and result["bytes_total"] == 15_050_000
    assert any("not UTF-8" in w for w in result["warnings"])


def test_non_finite_final_metric_is_not_a_score() -> None:
    lines = _run(6, "1.2", final=False) + [
        "final_int8_zlib_roundtrip_exact val_loss:nan val_bpb:nan"]
    result = parse_log(_text(lines))
    assert result["score"] is None
    assert any("not finite" in w for w in result["warnings"])
    json.dumps(result, allow_nan=False)


def test_worse_sliding_falls_back_to_the_better_round_trip() -> None:
    lines = _run(6, "1.20000000") + [
        "final_sliding_window val_loss:2.5000 val_bpb:1.4800 stride:64 eval_time:70000ms",
        "final_sliding_window_exact val_loss:2.50000000 val_bpb:1.48000000",
    ]
    result = parse_log(_text(lines))
    assert result["score"]["tag"] == "final_int8_zlib_roundtrip_exact"
    assert any("final_sliding_window_exact" in w and "worse" in w for w in result["warnings"])


def test_ttt_better_than_sliding_is_the_score() -> None:
    lines = _run(6, "1.20000000") + [
        "final_sliding_window_exact val_loss:2.00000000 val_bpb:1.19000000",
        "legal_ttt val_loss:1.9900 val_bpb:1.1850 eval_time:400000ms",
        "legal_ttt_exact val_loss:1.99000000 val_bpb:1.18500000",
        "final_int8_zlib_roundtrip_exact val_loss:2.00000000 val_bpb:1.19000000",
    ]
    result = parse_log(_text(lines))
    assert result["score"]["tag"] == "legal_ttt_exact"
    assert result["eval_time_ms"] == 400_000
    assert result["warnings"] == []


def test_unnamed_total_only_is_reported_with_a_warning() -> None:
    lines = [line for line in _run(6, "1.2") if "int8+zlib:" not in line]
    result = parse_log(_text(lines))
    assert result["bytes_total"] == 60_050_000
    assert any("unnamed 'Total submission size'" in w for w in result["warnings"])


def test_text_of_another_type_is_refused() -> None:
    with pytest.raises(TypeError, match="text must be str or bytes"):
        parse_log(12)  # type: ignore[arg-type]


def test_crash_before_quantization_reports_no_artifact_size() -> None:
    lines = _run(6, "1.2", final=False)
    lines = lines[:lines.index("Serialized model: 60000000 bytes") + 1]
    result = parse_log(_text(lines))
    assert result["model_bytes"] is None and result["bytes_total"] is None
    assert result["code_bytes"] is None


def test_exact_value_wins_over_its_rounded_twin_in_any_order() -> None:
    lines = _run(6, "1.2", final=False) + [
        "final_sliding_window_exact val_loss:2.01234567 val_bpb:1.19187654",
        "final_sliding_window val_loss:2.0123 val_bpb:1.1919 stride:64 eval_time:70000ms",
    ]
    result = parse_log(_text(lines))
    assert result["score"] == {"tag": "final_sliding_window_exact",
                               "val_loss": 2.01234567, "val_bpb": 1.19187654}
    assert result["eval_time_ms"] == 70_000


def test_parenthesised_settings_before_the_numbers() -> None:
    lines = _run(6, "1.2", final=False) + [
        "final_sliding (stride=16, T=0.90) val_loss:1.9800 val_bpb:1.1700 eval_time:90000ms"]
    result = parse_log(_text(lines))
    assert result["score"] == {"tag": "final_sliding", "val_loss": 1.98, "val_bpb": 1.17}
    assert result["eval_time_ms"] == 90_000


def test_source_opening_with_a_raw_docstring_is_skipped() -> None:
    source = ['r"""A script.', "final_int8_zlib_roundtrip_exact val_loss:0.1 val_bpb:0.05",
              '"""', "=" * 100]
    result = parse_log(_text(source + _run(3, "1.25000000")))
    assert result["score"]["val_bpb"] == 1.25
    assert all(m["val_bpb"] != 0.05 for m in result["metrics"])


# Size lines of non-record scripts, in the forms the challenge's records print them (the
# numbers are made up).
BUDGET_LOG = """step:50/50 val_loss:2.9692 val_bpb:1.1497 train_time:7763355ms
artifact:15.60MB binary:97320960(13685760B) fp:2542200(2585072B) code:70399
budget:15670651/16000000 (15.67/16.00MB) FITS
final_sliding val_loss:2.9027 val_bpb:1.1239 (stride=16, T=0.90) eval_time:768782ms
"""
MEGABYTES_LOG = """step:100/100 val_loss:3.3425 val_bpb:1.2942 train_time:9738936ms
--- Compression ---:
  INT4+fp8+brotli: 15.67MB model + 0.077MB code = {total}/16.00MB FITS
final_sliding val_loss:3.1157 val_bpb:1.2064 (stride=16, T=1.02) time:130598ms
"""


def test_a_budget_line_states_the_exact_total() -> None:
    result = parse_log(BUDGET_LOG)
    assert result["bytes_total"] == 15_670_651 and result["bytes_total_at_most"] is None
    assert result["score"]["val_bpb"] == 1.1239


@pytest.mark.parametrize(("total", "at_most"), [("15.75", 15_755_000), ("15.9", 15_950_000),
                                                 ("15.999", 15_999_500)])
def test_a_total_in_megabytes_is_bounded_by_half_its_last_digit(total: str, at_most: int) -> None:
    result = parse_log(MEGABYTES_LOG.format(total=total))
    assert result["bytes_total"] is None
    assert result["bytes_total_at_most"] == at_most
    assert any(f"only as {total} MB" in warning for warning in result["warnings"])
