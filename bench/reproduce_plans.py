"""How many records folders of a records tree produce a re-run plan, and why the others do not.

  .venv/bin/python bench/reproduce_plans.py /path/to/records          # one line per folder
  .venv/bin/python bench/reproduce_plans.py /path/to/records --summary

It runs `server.reproduce.plan_folder` over every folder `records/<track>/<folder>` (one level
below each track) and prints, per folder: `plan` or `refused`, the script it launches, the
number of files carried (and how many of them count as code), the seeds, and the refusal's
message. The figures in docs/validation.md come from the challenge's tree.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server import reproduce  # noqa: E402


def folders(root: Path) -> list[Path]:
    return sorted(folder for track in sorted(root.iterdir()) if track.is_dir()
                  for folder in track.iterdir() if folder.is_dir())


def plan_line(folder: Path, root: Path) -> tuple[str, str]:
    name = folder.relative_to(root).as_posix()
    try:
        plan = reproduce.plan_folder(folder, {"kind": "path"})
    except (reproduce.SourceError, ValueError) as error:
        return "refused", f"refused {name}: {error}"
    return "plan", (f"plan    {name}: {plan.entrypoint}, {len(plan.files)} files ({len(plan.counted)} counted: {', '.join(plan.counted)}), "
                    f"seeds {plan.seeds}, env from {plan.env_from}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--summary", action="store_true", help="only the counts")
    args = parser.parse_args()
    found = [plan_line(folder, args.root) for folder in folders(args.root)]
    if not args.summary:
        for _, line in found:
            print(line)
    counts = Counter(kind for kind, _ in found)
    print(f"{len(found)} folders: {counts['plan']} plans, {counts['refused']} refused")


if __name__ == "__main__":
    main()
