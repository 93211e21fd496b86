"""Many log watchers on the embedded default: N Server-Sent Events clients on one running run.

Starts the API (uvicorn, as `caddie up` does) on a fresh SQLite database in a temporary data
dir, makes one running run, opens N streams of its log, and stores a chunk of log lines
every `--every` seconds for the given seconds the way the worker does (a write transaction
each; the worker looks at a running trainer every CADDIE_POLL_INTERVAL_S, 2 s by default).
Meanwhile GET /healthz every 0.25 s. Prints: streams that received the first line, streams that received
every line and the `end` event, HTTP errors, and /healthz response times.

  .venv/bin/python bench/log_watchers.py [--clients 200] [--seconds 20] [--every 2] [--lines 20]
"""

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from sqlmodel import Session  # noqa: E402

from server.db import make_engine  # noqa: E402
from server.migrate import upgrade_head  # noqa: E402
from server.models import LogChunk, Run  # noqa: E402
from tests.factories import make_experiment, make_run  # noqa: E402
from tests.sshd import free_port  # noqa: E402


def line(n: int) -> str:
    return f"step:{n}/1000 train_loss:{6 - n / 1000:.4f} train_time:{n * 100}ms step_avg:100.00ms\n"


def store_lines(url: str, run_id: int, count: int, every_s: float, per_chunk: int) -> None:
    """The worker's side: a committed chunk of `per_chunk` lines every `every_s`, then the
    run ends."""
    engine = make_engine(url)
    for first in range(0, count, per_chunk):
        with Session(engine) as session:
            run = session.get(Run, run_id)
            assert run is not None
            text = "".join(line(n) for n in range(first, min(count, first + per_chunk)))
            session.add(LogChunk(run_id=run_id, offset=run.log_offset, nbytes=len(text), text=text))
            run.log_offset += len(text)
            session.add(run)
            session.commit()
        time.sleep(every_s)
    with Session(engine) as session:
        run = session.get(Run, run_id)
        assert run is not None
        run.status = "succeeded"
        session.add(run)
        session.commit()
    engine.dispose()


async def watch(http: httpx.AsyncClient, url: str, result: dict[str, object]) -> None:
    try:
        async with http.stream("GET", url) as response:
            result["status"] = response.status_code
            kind = None
            async for text in response.aiter_lines():
                if text.startswith("event:"):
                    kind = text.partition(":")[2].strip()
                elif text.startswith("data:") and kind == "log":
                    result["first_at"] = result.get("first_at") or time.monotonic()
                    result["bytes"] = json.loads(text[5:])["next"]
                elif text.startswith("data:") and kind == "end":
                    result["ended"] = True
    except httpx.HTTPError as exc:
        result["error"] = type(exc).__name__


async def probe(http: httpx.AsyncClient, url: str, stop: asyncio.Event,
                times: list[float], failures: list[str]) -> None:
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = await http.get(url, timeout=10)
            if response.status_code != 200:
                failures.append(str(response.status_code))
        except httpx.HTTPError as exc:
            failures.append(type(exc).__name__)
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.25)


async def load(base: str, run_id: int, clients: int, writer: threading.Thread) -> None:
    results: list[dict[str, object]] = [{} for _ in range(clients)]
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=120), limits=limits) as http:
        stop, times, failures = asyncio.Event(), [], []
        prober = asyncio.create_task(probe(http, f"{base}/healthz", stop, times, failures))
        url = f"{base}/api/runs/{run_id}/logs/stream"
        watchers = [asyncio.create_task(watch(http, url, r)) for r in results]
        await asyncio.sleep(1)
        writer.start()
        await asyncio.gather(*watchers)
        stop.set()
        await prober
    total = sum(len(line(n)) for n in range(COUNT))
    got_first = sum(1 for r in results if r.get("first_at"))
    complete = sum(1 for r in results if r.get("bytes") == total and r.get("ended"))
    errors = [r.get("error") or r.get("status") for r in results
              if r.get("error") or r.get("status") != 200]
    times.sort()
    print(f"streams: {clients}; got the first line: {got_first}; got every line and `end`: "
          f"{complete}; errors: {len(errors)} {sorted(set(map(str, errors)))}")
    print(f"/healthz: {len(times)} probes, median {statistics.median(times) * 1000:.0f} ms, "
          f"p95 {times[int(len(times) * 0.95)] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms, "
          f"failures {len(failures)} {sorted(set(failures))}")


COUNT = 0


def main() -> None:
    global COUNT
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between chunks")
    parser.add_argument("--lines", type=int, default=20, help="log lines per chunk")
    args = parser.parse_args()
    COUNT = int(args.seconds / args.every) * args.lines
    with tempfile.TemporaryDirectory() as data_dir:
        url = f"sqlite:///{Path(data_dir, 'caddie.db')}"
        upgrade_head(url)
        engine = make_engine(url)
        with Session(engine, expire_on_commit=False) as session:
            run = make_run(session, make_experiment(session), seed=1, status="running")
        engine.dispose()
        port = free_port()
        env = {**os.environ, "CADDIE_DATA_DIR": data_dir, "CADDIE_DATABASE_URL": "",
               "CADDIE_REDIS_URL": ""}
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:app", "--port",
                                   str(port), "--log-level", "warning"], cwd=ROOT, env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the API did not start")
                time.sleep(0.2)
            writer = threading.Thread(target=store_lines,
                                      args=(url, run.id, COUNT, args.every, args.lines))
            asyncio.run(load(base, run.id, args.clients, writer))
            writer.join()
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
