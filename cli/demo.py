"""`caddie demo`: the whole path on one machine, offline, in a few minutes on 2 CPU cores.

Corpus → SentencePiece tokenizer → official-format shards → the stack (`caddie up`'s
processes) → an experiment of 3 seeds on the local provider with the `tiny` preset →
progress while it runs → the leaderboard of seeds with the reasons it is not a record.
"""

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from sqlmodel import Session

from cli.corpus import prepare_dataset, write_corpus
from cli.ports import free_port, holder, port_is_free
from cli.stack import Stack
from server.auth import Role, create_token
from server.config import Settings
from server.db import get_engine

FINAL = {"succeeded", "failed", "cancelled"}


def prepare_data(work: Path, vocab_size: int) -> tuple[Path, Path]:
    """Build (once) the demo's dataset folder and tokenizer; returns (data_path, tokenizer_path)."""
    return prepare_dataset(work, f"demo_sp{vocab_size}", lambda: write_corpus(work / "corpus"),
                           vocab_size, val_docs=200)


def api(url: str, method: str = "GET", body: dict[str, Any] | None = None,
        token: str | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{method} {url} -> {error.code}: {error.read().decode()}") from error


def follow(base: str, experiment_id: int, stack: Stack, timeout_s: float) -> dict[str, Any]:
    """Print each run's state changes and progress until every run has ended."""
    seen: dict[int, tuple[str, int]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stack.check_alive()
        experiment = api(f"{base}/api/experiments/{experiment_id}")
        for run in experiment["runs"]:
            state = (run["status"], run.get("log_offset") or 0)
            if seen.get(run["id"], ("", -1))[0] != state[0]:
                print(f"  seed {run['seed']:>5}  {run['status']}"
                      + (f"  ({run['reason']})" if run.get("reason") else ""), flush=True)
            seen[run["id"]] = state
        if all(run["status"] in FINAL for run in experiment["runs"]) and experiment["status"] != "running":
            return experiment
        time.sleep(1.0)
    raise RuntimeError(f"the demo experiment did not finish in {timeout_s:.0f} s")


def print_leaderboard(board: dict[str, Any], experiment_id: int) -> None:
    for entry in board["data"]:
        if entry["experiment_id"] != experiment_id:
            continue
        print(f"\nexperiment {entry['experiment_id']} '{entry['name']}' preset={entry['preset']} "
              f"provider={entry['provider']}")
        print(f"{'seed':>6} {'status':>10} {'val_bpb':>9} {'val_loss':>9} {'bytes':>10} "
              f"{'train s':>8} {'eval s':>7}  eligible")
        for seed in entry["seeds"]:
            print(f"{seed['seed']:>6} {seed['status']:>10} {_num(seed['val_bpb'], 4):>9} "
                  f"{_num(seed['val_loss'], 4):>9} {_num(seed['bytes_total'], 0):>10} "
                  f"{_num(seed['train_time_s'], 1):>8} {_num(seed['eval_time_s'], 1):>7}  "
                  f"{'yes' if seed['eligible'] else 'no'}")
        print(f"\nmean val_bpb {_num(entry['mean_val_bpb'], 4)} ± {_num(entry['std_val_bpb'], 4)} "
              f"over {entry['n']} seeds; max bytes {_num(entry['max_bytes_total'], 0)}; record-eligible: "
              f"{'yes' if entry['eligible'] else 'no'}")
        for reason in entry["reasons"]:
            print(f"  - {reason}")


def _num(value: float | int | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def demo_token() -> str:
    """A fresh admin token for the demo's submission (its sha256 alone is stored): the demo
    runs on the local provider, which is for admins."""
    with Session(get_engine()) as session:
        return create_token(session, name="caddie-demo", role=Role.admin)[1]


def run_demo(settings: Settings, *, seeds: list[int], port: int, timeout_s: float,
             iterations: int | None = None) -> int:
    work = settings.data_dir.resolve() / "demo"
    data_path, tokenizer = prepare_data(work, vocab_size=512)
    # The demo runs on this machine: its stack turns the local provider on for admins, unless
    # the operator chose otherwise (CADDIE_LOCAL_PROVIDER).
    os.environ.setdefault("CADDIE_LOCAL_PROVIDER", "admin")
    stack = Stack(settings, port=port, log_dir=settings.data_dir.resolve() / "logs")
    if not port_is_free(stack.host, port):  # the demo's server is throwaway: any free port will do
        stack.port = free_port(stack.host)
        print(f"port {port} is already in use by {holder(port)}; the demo uses port {stack.port} "
              "instead (choose one with --port)", flush=True)
    print(f"starting the stack (API {stack.url}, worker, beat; logs in {stack.log_dir}) ...", flush=True)
    stack.start()
    try:
        stack.wait_healthy()
        config: dict[str, Any] = {"data_path": str(data_path), "tokenizer_path": str(tokenizer)}
        if iterations is not None:
            config["iterations"] = iterations
        spec = {"name": "demo", "author": "caddie-demo", "preset": "tiny", "config": config,
                "seeds": seeds, "provider": "local"}
        experiment = api(f"{stack.url}/api/experiments", "POST", spec, token=demo_token())
        print(f"submitted experiment {experiment['id']} with seeds {seeds}", flush=True)
        follow(stack.url, experiment["id"], stack, timeout_s)
        board = (f"{stack.url}/api/leaderboard?track={experiment['track']}&author=caddie-demo"
                 "&unverified=true&failed=true&limit=200")
        print_leaderboard(api(board), experiment["id"])
    finally:
        stack.stop()
    return 0
