"""`caddie import records DIR` and `caddie export EXPERIMENT DIR`: the challenge's records folders."""

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlmodel import Session

from server import disagreements, export, records, tracks
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
    tree.add_argument("--table", action="store_true",
                      help="print one line per folder: record, official score, Caddie's score, "
                           "the challenge's word, Caddie's verdict and its reasons, then counts")
    tree.add_argument("--readme", type=Path, default=None,
                      help="the challenge's README.md with the official leaderboard "
                           "(default: found in DIR or above it)")
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
        results = records.import_records(session, args.dir, reference_bpb=args.reference_bpb,
                                         readme=args.readme)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
        return 0
    if args.table:
        print(verdict_table(results))
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
    lines += [f"  disagrees: {disagreements.sentence(d)}" for d in result.disagreements]
    lines += [f"  note: {note}" for note in result.notes]
    return "\n".join(lines)


def verdict_table(results: list[records.ImportResult]) -> str:
    """Tab-separated: track, folder, the challenge's word and score, Caddie's score and
    verdict, the record test (Δ in its units, p, against which record), the reasons, and
    where the official score comes from when it is not Caddie's mean; then the counts per
    track."""
    head = ("track\tfolder\tchallenge\tofficial\tstated\tcaddie_mean\tn\tverdict\t"
            "delta\tp\tagainst\treasons\tofficial_note")
    lines = [head]
    for result in results:
        test = result.test or {}
        against = test.get("reference") or {}
        lines.append("\t".join([
            result.track, result.key.split("/", 1)[-1], _challenge_word(result.accepted),
            _cell(result.official_score, 4), _cell(result.stated_val_bpb, 5),
            _cell(result.mean_val_bpb, 5), str(result.n_seeds),
            _verdict_word(result),
            f"{_cell(test.get('delta'), 5)} {test.get('units') or ''}".strip(), _cell(test.get("p"), 3),
            _against(against), _why(result), result.official_note]))
    return "\n".join(lines + ["", *verdict_counts(results)])


def verdict_counts(results: list[records.ImportResult]) -> list[str]:
    """Per track: folders, accepted by the challenge, eligible by Caddie (on the non-record
    track: within its rules), and both."""
    lines = []
    for track in sorted({result.track for result in results if result.track}):
        mine = [r for r in results if r.track == track and r.experiment_id is not None]
        accepted = [r for r in mine if r.accepted]
        nothing = sum(r.track == track and r.experiment_id is None for r in results)
        word = ("within the track's rules", "so") if track == tracks.NON_RECORD_TRACK else (
            "record-eligible", "eligible")
        lines.append(f"{track}: {len(mine)} folders, {len(accepted)} accepted by the challenge, "
                     f"{sum(r.eligible for r in mine)} {word[0]} by Caddie, "
                     f"{sum(r.eligible for r in accepted)} of the accepted {word[1]}"
                     + (f"; {nothing} folder(s) with nothing to import" if nothing else ""))
    return lines


def _why(result: records.ImportResult) -> str:
    """The reasons; an accepted non-record verdict's rule; a folder not imported: its notes."""
    if result.experiment_id is None:
        return "; ".join(result.notes)
    return "; ".join(result.reasons) or result.rule


def _verdict_word(result: records.ImportResult) -> str:
    """Eligible as a record on the record track; accepted or not on the non-record track."""
    if result.experiment_id is None:
        return "not imported"
    if result.track == tracks.NON_RECORD_TRACK:
        return "non-record ok" if result.eligible else "non-record: no"
    return "eligible" if result.eligible else "not eligible"


def _challenge_word(accepted: bool | None) -> str:
    return "unknown" if accepted is None else "accepted" if accepted else "not listed"


def _cell(value: Any, decimals: int) -> str:
    return f"{value:.{decimals}f}" if isinstance(value, (int, float)) else "-"


def _against(reference: dict[str, Any]) -> str:
    if reference.get("kind") in ("record", "experiment"):
        return f"{reference.get('name')} {_cell(reference.get('val_bpb'), 5)} {reference.get('date')}"
    if reference.get("kind") == "value":
        return f"{_cell(reference.get('val_bpb'), 5)} ({reference.get('source')})"
    return "nothing before it" if reference.get("kind") == "none" else "-"


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
