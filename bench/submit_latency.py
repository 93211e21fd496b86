"""Submit-to-trainer-start latency for the `local` and `ssh` providers.

For each provider, submits N one-seed experiments one after another to a real stack (the
processes `caddie up` starts) and measures, by this machine's clock:
  launch: POST /api/experiments → the worker launching the trainer (the run's started_at);
  first log: POST → the trainer's first log line stored in the database (polled every 50 ms).
Each run is cancelled once its first log line is stored. Prints medians.

  .venv/bin/python bench/submit_latency.py [--runs 5] [--backend embedded|postgres-redis]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlmodel import Session  # noqa: E402

from cli.demo import prepare_data  # noqa: E402
from cli.stack import Stack  # noqa: E402
from server.auth import Role, create_token  # noqa: E402
from server.config import Settings  # noqa: E402
from server.db import make_engine  # noqa: E402
from server.migrate import upgrade_head  # noqa: E402
from tests.databases import postgres_database  # noqa: E402
from tests.sshd import Sshd, free_port  # noqa: E402

TOKEN: dict[str, str] = {}  # per database URL: an admin token made for this benchmark


def api(url: str, body: dict[str, Any] | None = None, method: str | None = None) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN['current']}"}
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method=method or ("POST" if body is not None else "GET"),
                                     headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def one_submission(stack: Stack, provider: str, config: dict[str, str]) -> tuple[float, float]:
    spec = {"name": f"bench-{provider}", "author": "bench", "preset": "tiny", "provider": provider,
            "seeds": [1], "config": {**config, "iterations": 50}}
    t0 = time.time()
    experiment = api(f"{stack.url}/api/experiments", spec)
    run_id = experiment["runs"][0]["id"] if "runs" in experiment else None
    if run_id is None:
        run_id = api(f"{stack.url}/api/experiments/{experiment['id']}")["runs"][0]["id"]
    while True:
        run = api(f"{stack.url}/api/runs/{run_id}")
        if run["log_offset"] > 0:
            first_log = time.time() - t0
            break
        if run["status"] in {"failed", "cancelled"}:
            raise RuntimeError(f"run {run_id} ended before logging: {run['reason']}")
        time.sleep(0.05)
    started = datetime.fromisoformat(run["started_at"]).replace(tzinfo=UTC).timestamp()
    api(f"{stack.url}/api/runs/{run_id}/cancel", {}, "POST")
    while api(f"{stack.url}/api/runs/{run_id}")["status"] not in {"failed", "cancelled", "succeeded"}:
        time.sleep(0.1)
    return started - t0, first_log


def measure(env: dict[str, str], provider: str, runs: int, config: dict[str, str], tmp: Path) -> None:
    os.environ.update({"CADDIE_DATA_DIR": str(tmp / f"data-{provider}"),
                       "CADDIE_POLL_INTERVAL_S": "0.5", "CADDIE_RECONCILE_INTERVAL_S": "1", **env})
    settings = Settings()
    upgrade_head(settings.resolved_database_url())
    engine = make_engine(settings.resolved_database_url())
    with Session(engine) as session:
        TOKEN["current"] = create_token(session, name="bench", role=Role.admin)[1]
    engine.dispose()
    stack = Stack(settings, port=free_port(), log_dir=tmp / f"logs-{provider}")
    stack.start()
    try:
        stack.wait_healthy()
        samples = [one_submission(stack, provider, config) for _ in range(runs)]
    finally:
        stack.stop()
    launch = [s[0] for s in samples]
    first = [s[1] for s in samples]
    print(f"{provider:>6}: submit→launch median {statistics.median(launch):.2f} s "
          f"(min {min(launch):.2f}, max {max(launch):.2f}); submit→first log line stored "
          f"median {statistics.median(first):.2f} s (min {min(first):.2f}, max {max(first):.2f}); "
          f"n={runs}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--backend", choices=["embedded", "postgres-redis"], default="embedded")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_path, tokenizer = prepare_data(tmp / "demo", vocab_size=512)
        config = {"data_path": str(data_path), "tokenizer_path": str(tokenizer)}
        (tmp / "sshd").mkdir()
        sshd = Sshd(tmp / "sshd")
        sshd.start()
        try:
            ssh_env = {"CADDIE_SSH_HOSTS": sshd.target, "CADDIE_SSH_KEY_FILE": str(sshd.key_path),
                       "CADDIE_SSH_WORKDIR": str(tmp / "pod"), "CADDIE_REMOTE_PYTHON": sys.executable}
            print(f"backend: {args.backend}; {os.cpu_count()} CPUs", flush=True)
            for provider in ("local", "ssh"):
                env = ssh_env if provider == "ssh" else {}
                if args.backend == "postgres-redis":
                    with postgres_database("caddie_bench") as url:
                        env = {**env, "CADDIE_DATABASE_URL": url,
                               "CADDIE_REDIS_URL": "redis://127.0.0.1:6379/14"}
                        measure(env, provider, args.runs, config, tmp)
                else:
                    measure(env, provider, args.runs, config, tmp)
        finally:
            sshd.stop()


if __name__ == "__main__":
    main()
