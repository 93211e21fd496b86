"""The challenge's official leaderboard: the tables of its repository's README.md.

Two tables: under "## Leaderboard" the 10-minute record track, under "Unlimited Compute
Leaderboard & Non-record Submissions" the non-record track. Each row is `| Run | Score |
Author | Summary | Date | Info |`; its Info links point at the records folder's README
(`records/<track>/<folder>/README.md`) or at a pull request. A folder is accepted when a row
links to it, else when a row of its track has its score (4 decimals), date and author.
"""

import re
from dataclasses import dataclass
from pathlib import Path

from server import tracks

README = "README.md"
_ROW = re.compile(r"^\|(?P<cells>.+)\|\s*$")
_FOLDER_LINK = re.compile(r"records/(?P<track>track_[\w]+)/(?P<folder>[^/)\s]+)/")
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
    return Row(track=track, run=cells[0], score=score, author=cells[2], date=cells[4], folder=folder)


def accepted_row(rows: list[Row], *, key: str, track: str, val_bpb: float | None, date: str,
                 authors: set[str]) -> Row | None:
    """The row that lists the folder `key` ("<track>/<folder>"): by its link, else by
    score (to the table's 4 decimals, within one unit of the last), date and author on the same track."""
    for row in rows:
        if row.folder == key:
            return row
    if val_bpb is None:
        return None
    names = {author.lower() for author in authors if author}
    for row in rows:
        if (row.folder is None and row.track == track and row.score is not None
                and abs(row.score - val_bpb) <= 0.0001 + 1e-9 and row.date == date
                and row.author.lower() in names):
            return row
    return None
