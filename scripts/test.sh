#!/usr/bin/env bash
# The README's second command: install everything the tests need and run them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/install.sh --test
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
