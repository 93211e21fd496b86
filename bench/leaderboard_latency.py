"""Leaderboard response time with 10,000 runs: the JSON API and the HTML page.

Seeds a fresh, migrated database (PostgreSQL on 127.0.0.1:5432 by default, or SQLite) with
finished experiments of 4 seeds each (2,500 experiments = 10,000 runs, each run with a priced,
terminated pod; statistics with p and a reference), then times requests to the app on a real
uvicorn over loopback, one after another, and prints median and p95:

  GET /api/leaderboard?order=X          first page of 50 (the API's default) by every order
  GET /api/leaderboard?...&offset=2450  last pages, ranked and by cost descending
  GET /, /?sort=X                       the HTML page, 25 entries, ranked and by a few columns
  GET /?page=100                        the HTML page's last page

  .venv/bin/python bench/leaderboard_latency.py [--runs 10000] [--requests 40] [--db postgres|sqlite]
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.config import get_settings  # noqa: E402
from server.db import get_engine  # noqa: E402
from server.leaderboard import LeaderboardOrder  # noqa: E402
from server.migrate import upgrade_head  # noqa: E402
from server.models import Experiment, Pod, Run, utcnow  # noqa: E402
from tests.databases import postgres_database  # noqa: E402
from tests.web.live import LiveServer  # noqa: E402

SEEDS = 4
PATHS = [
    *(f"/api/leaderboard?order={order.value}" for order in LeaderboardOrder),
    "/api/leaderboard?offset=2450", "/api/leaderboard?order=cost&desc=true&offset=2450",
    "/", "/?sort=name", "/?sort=-delta", "/?sort=bytes", "/?sort=cost", "/?page=100",
]


def seed_database(runs: int) -> None:
    """Finished experiments of SEEDS succeeded, measured runs each, in bulk."""
    rng = random.Random(0)
    engine = get_engine()
    experiments = []
    for index in range(runs // SEEDS):
        scores = [1.22 + rng.gauss(0, 0.02) for _ in range(SEEDS)]
        experiments.append({
            "name": f"exp-{index:05d}", "author": f"author-{index % 97}", "preset": "baseline",
            "config": {}, "seeds": list(range(SEEDS)), "provider": "local", "status": "finished",
            "created_at": utcnow(), "finished_at": utcnow(), "n_succeeded": SEEDS,
            "mean_val_bpb": statistics.fmean(scores), "std_val_bpb": statistics.stdev(scores),
            "eligible": index % 3 == 0, "reasons": [] if index % 3 == 0 else ["not verified"],
            "stats": {"p": rng.random() / 100, "reference": {"kind": "value", "val_bpb": 1.2244}},
            "scores": scores})
    with engine.begin() as conn:
        for start in range(0, len(experiments), 500):
            batch = experiments[start:start + 500]
            ids = [conn.execute(Experiment.__table__.insert().values(
                {k: v for k, v in e.items() if k != "scores"})).inserted_primary_key[0]
                for e in batch]
            run_ids = conn.execute(Run.__table__.insert().returning(Run.__table__.c.id), [
                {"experiment_id": eid, "seed": seed, "status": "succeeded", "created_at": utcnow(),
                 "updated_at": utcnow(), "val_bpb": score, "val_loss": score * 1.69,
                 "bytes_total": 15_800_000 - rng.randrange(1_000_000),
                 "train_time_s": 599.0 - rng.random() * 10, "eval_time_s": 120.0,
                 "eligible": True, "reasons": [], "fence": 0, "attempts": 0,
                 "cancel_requested": False, "log_offset": 0, "variant": "",
                 "superseded": False, "flags": []}
                for eid, e in zip(ids, batch, strict=True) for seed, score in enumerate(e["scores"])
            ]).scalars().all()
            conn.execute(Pod.__table__.insert(), [
                {"run_id": run_id, "provider": "runpod", "name": f"caddie-run-{run_id}",
                 "status": "terminated", "created_at": utcnow(), "updated_at": utcnow(),
                 "terminated_at": utcnow() + timedelta(minutes=rng.randrange(12, 30)),
                 "cost_per_hour": 21.52} for run_id in run_ids])


def time_path(client: httpx.Client, path: str, requests: int) -> tuple[float, float, int]:
    client.get(path).raise_for_status()  # warm-up
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    times.sort()
    return statistics.median(times), times[max(0, round(0.95 * len(times)) - 1)], len(response.content)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    args = parser.parse_args()
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        url = (stack.enter_context(postgres_database("caddie_bench")) if args.db == "postgres"
               else f"sqlite:///{folder / 'caddie.db'}")
        upgrade_head(url)
        os.environ.update(CADDIE_DATABASE_URL=url, CADDIE_DATA_DIR=str(folder),
                          CADDIE_REDIS_URL="")
        get_settings.cache_clear()
        get_engine.cache_clear()
        t0 = time.perf_counter()
        seed_database(args.runs)
        print(f"{args.db}: {args.runs:,} runs in {args.runs // SEEDS:,} finished experiments "
              f"(seeded in {time.perf_counter() - t0:.1f} s); {args.requests} requests each")
        server = LiveServer().start()
        stack.callback(server.stop)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            print(f"{'request':56} {'median ms':>10} {'p95 ms':>8} {'bytes':>9}")
            for path in PATHS:
                median, p95, size = time_path(client, path, args.requests)
                print(f"GET {path:52} {median:10.1f} {p95:8.1f} {size:9,}")
        get_engine().dispose()


if __name__ == "__main__":
    main()
