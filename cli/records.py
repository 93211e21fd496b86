"""`caddie import records DIR` and `caddie export EXPERIMENT DIR`: the challenge's records folders."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlmodel import Session

from server import export, records
from server.db import get_engine
from server.errors import NotFound

NOT_FOUND = 2  # exit status for an unknown experiment


def register(subparsers: Any) -> None:
    """Add `import records` and `export` to the `caddie` command's subparsers."""
    importing = subparsers.add_parser("import", help="bring the challenge's records into Caddie")
    kinds = importing.add_subparsers(dest="import_command", required=True)
    tree = kinds.add_parser(
        "records", help="import every records folder under DIR as a finished experiment")
    tree.add_argument("dir", type=Path, help="records/, a track folder, or one record's folder")
    tree.add_argument("--reference-bpb", type=reference_bpb, default=None,
                      help="judge significance against this val_bpb (default: the usual reference)")
    tree.add_argument("--json", action="store_true", help="print the outcome as JSON")
    tree.set_defaults(func=cmd_import)
    writing = subparsers.add_parser(
        "export", help="write an experiment as a records folder a reviewer can run")
    writing.add_argument("experiment", type=int, help="the experiment's id")
    writing.add_argument("dir", type=Path, help="the folder to write (new or empty)")
    writing.add_argument("--github-id", default=None, help="submission.json's github_id")
    writing.add_argument("--blurb", default=None, help="submission.json's blurb (default: a summary)")
    writing.add_argument("--compressed", action="store_true",
                         help="train_gpt.py in the records' lzma form, its readable source beside it")
    writing.set_defaults(func=cmd_export)


def reference_bpb(text: str) -> float:
    """A val_bpb the API would take as `reference_bpb`: a finite number in (0, 10)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 10:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not a val_bpb between 0 and 10")
    return value


def cmd_import(args: argparse.Namespace) -> int:
    with Session(get_engine()) as session:
        results = records.import_records(session, args.dir, reference_bpb=args.reference_bpb)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    for result in results:
        print(summary(result))
    if not results:
        print(f"no records folder (submission.json or train logs) under {args.dir}")
    return 0


def summary(result: records.ImportResult) -> str:
    """A few lines per folder: what became of it, its verdict, and every disagreement."""
    if result.experiment_id is None:
        head = f"{result.key}: not imported"
    else:
        verb = "imported as" if result.created else "already imported as"
        score = f"mean val_bpb {result.mean_val_bpb:.8f}" if result.mean_val_bpb is not None else "no score"
        verdict = "record-eligible" if result.eligible else "not record-eligible"
        head = (f"{result.key}: {verb} experiment {result.experiment_id} '{result.name}', "
                f"{result.n_seeds} scored seed(s), {score}, {verdict}")
    lines = [head]
    lines += [f"  reason: {reason}" for reason in result.reasons]
    lines += [f"  disagrees: {d['field']} stated {d['stated']}, logs {d['logs']} ({d['note']})"
              for d in result.disagreements]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def cmd_export(args: argparse.Namespace) -> int:
    with Session(get_engine()) as session:
        try:
            written = export.export_to(session, args.experiment, args.dir, github_id=args.github_id,
                                       blurb=args.blurb, compressed=args.compressed)
        except NotFound as error:
            print(f"caddie: {error.message}")
            return NOT_FOUND
    print(f"wrote {len(written)} file(s) to {args.dir}")
    for path in written:
        print(f"  {path.relative_to(args.dir)}")
    return 0
