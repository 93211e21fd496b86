"""The challenge's official leaderboard: the tables of its repository's README.md.

Two tables: under "## Leaderboard" the 10-minute record track, under "Unlimited Compute
Leaderboard & Non-record Submissions" the non-record track. Each row is `| Run | Score |
Author | Summary | Date | Info |`; its Info links point at the records folder's README
(`records/<track>/<folder>/README.md`) or at a pull request. A folder is accepted when a row
links to it, else when a row of its track has its score (4 decimals), date and author (or its
run's name within the folder's name, where the row names its author by another handle).
"""

import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from server import tracks

README = "README.md"
_ROW = re.compile(r"^\|(?P<cells>.+)\|\s*$")
_FOLDER_LINK = re.compile(r"records/(?P<track>track_[\w]+)/(?P<folder>[^/)\s]+)/")
_PULL_LINK = re.compile(r"/pull/(\d+)")
# A row's date may be its pull request's, a folder's its own run's: a few days apart.
DATE_SLACK_DAYS = 3
# Letters and digits a row's run name needs before it may stand for its author (see accepted_row):
# shorter ones ("SP8192") name many folders.
MIN_RUN_NAME = 8
_NON_RECORD_HEADING = re.compile(r"^#+ .*non-record", re.IGNORECASE)
_RECORD_HEADING = re.compile(r"^#+ Leaderboard\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Row:
    track: str
    run: str
    score: float | None
    author: str
    date: str  # YYYY-MM-DD as the table writes it
    folder: str | None  # "<track>/<folder>" when the row links to a records folder
    pull: int | None = None  # the pull request number when the row links to one


def find_readme(start: Path) -> Path | None:
    """The challenge's README.md: in `start` or a folder above it that holds `records/`."""
    for folder in [start.resolve(), *start.resolve().parents]:
        if (folder / README).is_file() and (folder / "records").is_dir():
            return folder / README
    return None


def read_rows(readme: Path) -> list[Row]:
    """Every row of the two leaderboard tables."""
    rows: list[Row] = []
    track: str | None = None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("#"):
            track = (tracks.NON_RECORD_TRACK if _NON_RECORD_HEADING.match(line)
                     else tracks.RECORD_TRACK if _RECORD_HEADING.match(line) else None)
            continue
        match = _ROW.match(line)
        if track is None or not match:
            continue
        row = _row(track, [cell.strip() for cell in match["cells"].split("|")])
        if row is not None:
            rows.append(row)
    return rows


def _row(track: str, cells: list[str]) -> Row | None:
    if len(cells) < 6 or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", cells[4]):
        return None  # the header, its rule, or a row of another shape
    try:
        score: float | None = float(cells[1])
    except ValueError:
        score = None
    link = _FOLDER_LINK.search(cells[5])
    folder = f"{link['track']}/{link['folder']}" if link else None
    pull = _PULL_LINK.search(cells[5])
    return Row(track=track, run=cells[0], score=score, author=cells[2], date=cells[4], folder=folder,
               pull=int(pull.group(1)) if pull else None)


def accepted_row(rows: list[Row], *, key: str, track: str, val_bpb: float | None, date: str,
                 authors: set[str], pulls: Collection[int] = ()) -> Row | None:
    """The row that lists the folder `key` ("<track>/<folder>"): by its link; else an
    unlinked row of the same track with the score (to the table's 4 decimals, within one unit
    of the last), the date, and the author or the row's run named in the folder's name; else
    with the score, a date at most DATE_SLACK_DAYS apart, and the author or the row's pull
    request among those the folder mentions (`pulls`)."""
    for row in rows:
        if row.folder == key:
            return row
    if val_bpb is None:
        return None
    names = {author.lower() for author in authors if author}
    scored = [row for row in rows if row.folder is None and row.track == track
              and row.score is not None and abs(row.score - val_bpb) <= 0.0001 + 1e-9]
    for row in scored:
        if row.date == date and (row.author.lower() in names or _names_folder(row.run, key)):
            return row
    for row in scored:
        near = _days_apart(row.date, date) <= DATE_SLACK_DAYS
        if near and (row.author.lower() in names or row.pull in pulls):
            return row
    return None


def _names_folder(run: str, key: str) -> bool:
    """Whether the row's run name, in letters and digits, is in the folder's name: a row may name
    its author by a handle the folder does not (ByteJEPA: `hardik-bhadani-git`, `Hardik`)."""
    wanted = _letters_digits(run)
    return len(wanted) >= MIN_RUN_NAME and wanted in _letters_digits(key.rpartition("/")[2])


def _letters_digits(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def _days_apart(first: str, second: str) -> int:
    try:
        return abs((date.fromisoformat(first) - date.fromisoformat(second)).days)
    except ValueError:
        return 1 << 30
