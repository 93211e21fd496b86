"""No secret leaks: a real experiment end to end (API server, worker and beat as `caddie up`
starts them, PostgreSQL, Redis, the `ssh` provider on a real sshd, the real trainer on CPU),
with a RunPod account key, the SSH private key and a webhook URL with a token configured.

Then every place a secret could end up is searched for each of them: every line the server,
worker and beat logged (json format: each line must also parse), every row of every table,
every Redis value, every file the run left on the "pod" and in the data dir, the environment
of every process Python ran on the pod (the trainer's included: the pod's Python is a wrapper
that appends its environment to a file before it starts the real one), the API's answers
and the webhook's bodies.
"""

import json
import re
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import MetaData, select

from server.db import make_engine
from tests.e2e.stacks import api, postgres_and_redis, ssh_provider, start_stack
from tests.e2e.test_submit_to_leaderboard import submit_and_wait
from tests.server.test_notify import Webhook
from tests.sshd import Sshd
from tests.worker.runpod_standin import RunPodStandIn

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis, pytest.mark.sshd]
SECRETS_REDIS_DB = 12
CELERY_NOTICE = re.compile(r"^worker: (Warm|Cold) shutdown \(MainProcess\)$")  # printed, not logged


def key_secrets(key_file: Path) -> list[str]:
    """The private key whole and each line of its body (a leak may carry either)."""
    text = key_file.read_text()
    return [text.strip()] + [line.strip() for line in text.splitlines() if line.strip() and "-----" not in line]


def leaks(places: dict[str, str], named: dict[str, str]) -> list[str]:
    """`place: secret name` for each secret found in each place."""
    return [f"{place}: {name}" for place, text in places.items() for name, value in named.items() if value in text]


def files_under(folder: Path) -> dict[str, str]:
    return {str(p): p.read_bytes().decode("utf-8", errors="replace") for p in folder.rglob("*") if p.is_file()}


def database_rows(url: str) -> dict[str, str]:
    """Every row of every table, every column as text (binary columns decoded as UTF-8)."""
    engine = make_engine(url)
    metadata = MetaData()
    metadata.reflect(engine)
    places = {}
    with engine.connect() as connection:
        for table in metadata.tables.values():
            rows = connection.execute(select(table)).all()
            places[f"table {table.name}"] = "\n".join(" | ".join(map(_text, row)) for row in rows)
    engine.dispose()
    return places


def _text(value: object) -> str:
    if isinstance(value, bytes | memoryview):
        return bytes(value).decode("utf-8", errors="replace")
    return value if isinstance(value, str) else json.dumps(value, default=str)


def redis_values(client: redis.Redis) -> dict[str, str]:
    values = {}
    for key in client.scan_iter():
        kind = client.type(key).decode()
        if kind == "string":
            value: object = client.get(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "set":
            value = client.smembers(key)
        else:
            value = client.zrange(key, 0, -1)
        values[f"redis {key.decode()}"] = repr(value)
    return values


def log_records(log_dir: Path) -> Iterator[dict[str, object]]:
    """Every record of the stack's logs; each line must be one JSON object."""
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text().splitlines():
            if line.strip() and not CELERY_NOTICE.match(line):
                try:
                    yield {"file": path.name, **json.loads(line)}
                except ValueError:
                    raise AssertionError(f"{path.name}: not a JSON record: {line!r}") from None


@pytest.fixture
def python_wrapper(tmp_path: Path) -> tuple[Path, Path]:
    """The pod's Python: appends its command line and environment to a file, then runs ours."""
    dump = tmp_path / "pod-environments.txt"
    wrapper = tmp_path / "pod-python"
    wrapper.write_text(f'#!/bin/sh\n{{ echo "== argv: $*"; env; }} >> {dump}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper, dump


def test_no_secret_reaches_logs_rows_pods_or_answers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sshd: Sshd,
                                                      dataset: dict[str, str],
                                                      python_wrapper: tuple[Path, Path]) -> None:
    account_key = "rpa_" + secrets.token_hex(16).upper()
    hook_token = "hooktoken" + secrets.token_hex(12)
    webhook = Webhook()
    hook_url = f"{webhook.url}/services/T0CADDIE/B0CADDIE/{hook_token}"
    named = {"runpod key": account_key, "webhook token": hook_token, "webhook url": hook_url}
    named |= {f"ssh key part {i}": part for i, part in enumerate(key_secrets(sshd.key_path))}
    runpod = RunPodStandIn(sshd, account_key)  # the reconciler lists the account's pods there
    runpod.start()
    wrapper, environments = python_wrapper
    try:
        with postgres_and_redis("caddie_secrets", SECRETS_REDIS_DB) as services:
            database_url, broker = services["CADDIE_DATABASE_URL"], services["CADDIE_REDIS_URL"]
            stack = start_stack(monkeypatch, tmp_path, {
                **services, **ssh_provider(sshd, tmp_path / "pod", python=str(wrapper)), "CADDIE_LOG_FORMAT": "json",
                "CADDIE_RUNPOD_API_KEY": account_key, "CADDIE_RUNPOD_API_URL": f"{runpod.url}/v2",
                "CADDIE_RUNPOD_GRAPHQL_URL": f"{runpod.url}/graphql", "CADDIE_WEBHOOK_URL": hook_url,
            })
            try:
                experiment = submit_and_wait(stack, dataset, "ssh")
                (run,) = experiment["runs"]
                answers = {"api experiment": json.dumps(experiment),
                           "api run": json.dumps(api(f"{stack.url}/api/runs/{run['id']}")),
                           "api leaderboard": json.dumps(api(f"{stack.url}/api/leaderboard"))}
                _wait_for_webhook(webhook, stack)
            finally:
                stack.stop()
            rows = database_rows(database_url)
    finally:
        runpod.stop()
        webhook.server.shutdown()
    assert run["status"] == "succeeded", run

    records = list(log_records(tmp_path / "logs"))
    # The API server logs only warnings and errors here (its json lines: tests/server/test_logsetup.py).
    assert {r["file"] for r in records} >= {"worker.log", "beat.log"}
    assert (tmp_path / "logs" / "server.log").exists()
    ours = [r for r in records if r.get("run_id") == run["id"]]
    assert ours and any(r.get("pod_id") for r in ours)  # the worker's lines carry the run and its pod
    pod_environments = environments.read_text()
    # The trainer's own start (`-m trainer train ...` or `code/train_gpt.py train ...`) is in the dump.
    assert re.search(r"^== argv: .*\btrain --config ", pod_environments, re.M), pod_environments[:2000]
    places = {
        **{f"log {r['file']}": json.dumps(r) for r in records},
        **rows, **redis_values(redis.Redis.from_url(broker)), **answers,
        **files_under(tmp_path / "pod"), **files_under(tmp_path / "data"),
        "pod environments": pod_environments,
        "webhook bodies": json.dumps(webhook.bodies),
    }
    assert "train_loss" in places["table logchunk"] and "val_bpb" in places["api run"]  # the search sees data
    assert leaks({"the key file itself": sshd.key_path.read_text()}, named)  # and would see a secret
    assert leaks(places, named) == []


def _wait_for_webhook(webhook: Webhook, stack: object, timeout_s: float = 30.0) -> None:
    """The worker posts run.ended and experiment.ended shortly after the experiment ends."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if {"run.ended", "experiment.ended"} <= {b.get("event") for b in webhook.bodies}:
            return
        time.sleep(0.2)
    raise AssertionError(f"the webhook got {webhook.bodies}")
