#!/usr/bin/env bash
# The README's second command: install everything the tests need and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/install.sh --test
# Lint first: a second is cheap next to the tests, and a style slip fails CI before them.
.venv/bin/ruff check --quiet .
# Then the types (pyproject.toml [tool.mypy]): 20 s from a fresh clone on 2 cores (19 s of CPU),
# about 3 s once .mypy_cache exists.
.venv/bin/mypy
# Two test processes: most tests wait on subprocesses, sshd, Redis or a browser, so a second
# one uses the idle core (788 s -> 512 s on 2 cores). Tests that share a service keep to
# their own Redis database or PostgreSQL database; `-n 0` runs them in one process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 "$@"
