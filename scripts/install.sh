#!/usr/bin/env bash
# Creates .venv and installs Caddie into it (with the trainer extra, and test tools with --test).
# --run-user (as root): also creates the unprivileged account scripts run as on the local
# provider (CADDIE_LOCAL_RUN_USER, default caddie-run; docs/security.md).
set -euo pipefail
cd "$(dirname "$0")/.."
extras="trainer"
for arg in "$@"; do
  case "$arg" in
    --test) extras="trainer,test" ;;
    --run-user)
      account="${CADDIE_LOCAL_RUN_USER:-caddie-run}"
      id "$account" >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
        --shell /usr/sbin/nologin "$account"
      echo "scripts on the local provider run as $account" ;;
    *) echo "unknown option $arg (known: --test, --run-user)" >&2; exit 2 ;;
  esac
done
if ! python3 -c 'import sys; assert sys.version_info >= (3, 11)' 2>/dev/null; then
  echo "Caddie needs Python 3.11 or newer as python3" >&2
  exit 1
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
  echo "python3 -m venv is missing: install python3-venv" >&2; exit 1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch is pinned to the CPU build in pyproject.toml; a pod installs its own CUDA build.
.venv/bin/python -m pip install -q -e ".[${extras}]"
