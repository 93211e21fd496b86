"""`caddie logs parse FILE [--json]`: read a community training log into its numbers."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from server.communitylog import parse_log

# Exit status for a file that cannot be read (argparse's own usage-error status).
UNREADABLE_FILE = 2


def register(subparsers: Any) -> None:
    """Add `logs parse` to the `caddie` command's subparsers."""
    logs = subparsers.add_parser("logs", help="read training logs of record submissions")
    actions = logs.add_subparsers(dest="logs_command", required=True)
    parse = actions.add_parser(
        "parse", help="print a log's score, sizes, steps and times (and any warnings)")
    parse.add_argument("file", type=Path, help="a train.log or logs/<run>.txt")
    parse.add_argument("--json", action="store_true", help="print the full result as JSON")
    parse.set_defaults(func=cmd_parse)


def cmd_parse(args: argparse.Namespace) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as error:
        print(f"caddie logs parse: cannot read {args.file}: {error.strerror or error}",
              file=sys.stderr)
        return UNREADABLE_FILE
    result = parse_log(data)
    print(json.dumps(result, indent=2) if args.json else summary(result))
    return 0


def summary(result: dict[str, Any]) -> str:
    """A few lines for a person: score, size, training, evaluation, then warnings."""
    score = result["score"]
    lines = [
        (f"score   {score['val_bpb']:.8f} bpb, {score['val_loss']:.8f} nats/token "
         f"({score['tag']})") if score else "score   none (no final metric line)",
        f"size    {_size(result)}",
        f"train   {_training(result)}",
        f"eval    {_seconds(result['eval_time_ms'])}",
        f"seed    {_or_unknown(result['seed'])}; val tokens {_count(result['val_tokens'])}",
    ]
    if result["runs"] > 1:
        lines.append(f"runs    {result['runs']} in this file")
    lines += [f"warning: {warning}" for warning in result["warnings"]]
    return "\n".join(lines)


def _size(result: dict[str, Any]) -> str:
    total = result["bytes_total"]
    if total is None:
        return "not stated"
    return (f"{total:,} bytes (code {_count(result['code_bytes'])} + "
            f"model {_count(result['model_bytes'])})")


def _training(result: dict[str, Any]) -> str:
    if result["steps"] is None and result["train_time_ms"] is None:
        return "not stated"
    text = f"{_count(result['steps'])} steps in {_seconds(result['train_time_ms'])}"
    if result["step_avg_ms"] is not None:
        text += f" ({result['step_avg_ms']:.2f} ms/step)"
    return text


def _seconds(ms: float | None) -> str:
    return "not stated" if ms is None else f"{ms / 1000:.1f} s"


def _count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def _or_unknown(value: object) -> str:
    return "not stated" if value is None else str(value)
