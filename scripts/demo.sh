#!/usr/bin/env bash
# The README's first command: install Caddie and run its demo on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/caddie demo "$@"
