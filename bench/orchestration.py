"""Orchestration figures: overhead per run, log latency, and 20 concurrent tiny runs.

Trainer: the fake trainer of the worker tests (tests/worker/fake_trainer), so the figures are
the orchestrator's own and not torch's. Pods: this machine (`local`) and real sshd processes on
loopback (`ssh`).

  overhead  one run at a time through the director (no broker): wall time from `queued` to
            `succeeded` minus the trainer's own time on the pod (its `starts` file to its
            results.json, by file mtimes); median of --runs.
  latency   a trainer writes a line every 0.2 s with its wall-clock time in it; the time from
            that stamp to the line's LogChunk row (created_at) is the pod → database latency
            (what a log stream can show at best); median and p95.
  concurrent  a real Celery worker (prefork, --concurrency 2) and beat on the embedded default
            (SQLite + filesystem transport); 20 one-seed runs submitted at once; all must end
            `succeeded`; wall time, and the worker's CPU seconds and peak RSS (its process group;
            the trainers run in their own sessions and are not counted).

  .venv/bin/python bench/orchestration.py [overhead|latency|concurrent|all] [--runs 5] [--poll 0.5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlmodel import Session, SQLModel, select  # noqa: E402

from server.config import Settings  # noqa: E402
from server.db import make_engine  # noqa: E402
from server.migrate import upgrade_head  # noqa: E402
from server.models import LogChunk, Run  # noqa: E402
from tests.sshd import Sshd  # noqa: E402
from tests.worker.harness import FAKE_TRAINER, drive, new_run, read_run  # noqa: E402
from worker.bundle import TrainerBundle  # noqa: E402
from worker.director import RunDirector  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled"}
TICK = os.sysconf("SC_CLK_TCK")


def director_for(folder: Path, poll_s: float, sshd: Sshd | None) -> RunDirector:
    engine = make_engine(f"sqlite:///{folder / 'caddie.db'}")
    SQLModel.metadata.create_all(engine)
    settings = Settings(data_dir=folder / "data", poll_interval_s=poll_s, run_grace_s=30)
    if sshd is not None:
        settings = settings.model_copy(update={
            "ssh_hosts": sshd.target, "ssh_key_file": sshd.key_path, "ssh_workdir": str(folder / "pod"),
            "remote_python": sys.executable})
    return RunDirector(settings, engine, bundle=TrainerBundle(FAKE_TRAINER), finalize=lambda s, e: None)


@contextmanager
def _director(provider: str, poll_s: float) -> Iterator[RunDirector]:
    """A director in a fresh temporary folder; for `ssh`, with an sshd of its own until the end."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        sshd = _sshd(folder) if provider == "ssh" else None
        try:
            yield director_for(folder, poll_s, sshd)
        finally:
            if sshd is not None:
                sshd.stop()


def overhead(runs: int, poll_s: float) -> None:
    print(f"overhead per run (poll every {poll_s:g} s, fake trainer, {runs} runs each)")
    for provider in ("local", "ssh"):
        walls, own = [], []
        with _director(provider, poll_s) as director:
            for i in range(runs):
                run_id = new_run(director.engine, provider=provider, seed=i, fake_pause_s=1.0)
                start = time.time()
                run = drive(director, run_id, until={"succeeded", "failed"}, timeout_s=120)  # type: ignore[arg-type]
                walls.append(time.time() - start)
                assert run.status == "succeeded", run.reason
                pod = Path(run.remote_dir or "")
                own.append((pod / "results.json").stat().st_mtime - (pod / "starts").stat().st_mtime)
        spent = [w - o for w, o in zip(walls, own, strict=True)]
        print(f"  {provider:5} wall {statistics.median(walls):.2f} s, trainer {statistics.median(own):.2f} s, "
              f"overhead {statistics.median(spent):.2f} s (min {min(spent):.2f}, max {max(spent):.2f})")


STAMPER = """\
import sys, time
out = open(sys.argv[1], "a")
for i in range(int(sys.argv[2])):
    out.write(f"stamp {time.time():.6f} line {i}\\n"); out.flush(); time.sleep(0.2)
"""


def latency(lines: int, poll_s: float) -> None:
    """Drives a sleeping fake run and appends stamped lines to its train.log from outside."""
    print(f"log latency pod file → database row (poll every {poll_s:g} s, {lines} lines)")
    for provider in ("local", "ssh"):
        with _director(provider, poll_s) as director:
            run_id = new_run(director.engine, provider=provider, fake_mode="sleep")
            drive(director, run_id, until={"running"}, timeout_s=60)  # type: ignore[arg-type]
            while read_run(director.engine, run_id).log_offset == 0:
                director.advance(run_id)
            log = Path(read_run(director.engine, run_id).remote_dir or "", "train.log")
            writer = subprocess.Popen([sys.executable, "-c", STAMPER, str(log), str(lines)])
            while writer.poll() is None:  # as the worker does: the next look after poll_s
                if not director.advance(run_id):
                    time.sleep(poll_s)
            for _ in range(int(3 / poll_s) + 2):
                director.advance(run_id)
                time.sleep(poll_s)
            delays = _stamp_delays(director, run_id)
            _cancel(director, run_id)
        delays.sort()
        p95 = delays[min(len(delays) - 1, int(0.95 * len(delays)))]
        print(f"  {provider:5} {len(delays)} lines: median {statistics.median(delays) * 1000:.0f} ms, "
              f"p95 {p95 * 1000:.0f} ms")


def _stamp_delays(director: RunDirector, run_id: int) -> list[float]:
    delays = []
    with Session(director.engine) as session:
        for chunk in session.exec(select(LogChunk).where(LogChunk.run_id == run_id)).all():
            created = chunk.created_at  # SQLite gives naive UTC back
            stored = (created if created.tzinfo else created.replace(tzinfo=UTC)).timestamp()
            for line in chunk.text.splitlines():
                if line.startswith("stamp "):
                    delays.append(stored - float(line.split()[1]))
    return delays


def _cancel(director: RunDirector, run_id: int) -> None:
    from server.experiments import cancel_run

    with Session(director.engine) as session:
        cancel_run(session, run_id)
    drive(director, run_id, until=FINAL, timeout_s=60)  # type: ignore[arg-type]


def concurrent(count: int, poll_s: float) -> None:
    print(f"{count} concurrent runs, real Celery worker (prefork, 2 processes) + beat, embedded default")
    concurrent_on("local", count, poll_s)
    concurrent_on("ssh", count, poll_s)


def concurrent_on(provider: str, count: int, poll_s: float, hosts: int = 5) -> None:
    """The ssh pool is `hosts` sshd processes on loopback, one run per host at a time."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        env = {**os.environ, "CADDIE_DATA_DIR": str(folder / "data"), "CADDIE_POLL_INTERVAL_S": str(poll_s),
               "CADDIE_RECONCILE_INTERVAL_S": "1", "CADDIE_RUN_GRACE_S": "60"}
        servers = [_sshd(folder, name=f"sshd{i}") for i in range(hosts)] if provider == "ssh" else []
        for server in servers[1:]:  # one client key for the whole pool
            (server.folder / "authorized_keys").write_text(Path(f"{servers[0].key_path}.pub").read_text())
        if servers:
            env.update({"CADDIE_SSH_HOSTS": ",".join(s.target for s in servers),
                        "CADDIE_SSH_KEY_FILE": str(servers[0].key_path),
                        "CADDIE_SSH_WORKDIR": str(folder / "pod"), "CADDIE_REMOTE_PYTHON": sys.executable})
        try:
            _concurrent_runs(folder, env, provider, count)
        finally:
            for server in servers:
                server.stop()


def _concurrent_runs(folder: Path, env: dict[str, str], provider: str, count: int) -> None:
    env.pop("CADDIE_DATABASE_URL", None)
    env.pop("CADDIE_REDIS_URL", None)
    settings = Settings(data_dir=folder / "data")  # SQLite in it, as the worker's env says
    upgrade_head(settings.resolved_database_url())
    engine = make_engine(settings.resolved_database_url())
    ids = [new_run(engine, provider=provider, seed=i, fake_log_lines=200) for i in range(count)]
    logs = open(folder / "stack.log", "ab")
    worker = subprocess.Popen([sys.executable, "-m", "tests.faults.celery_worker", "worker", "--pool",
                               "prefork", "--concurrency", "2", "--loglevel", "WARNING"],
                              cwd=ROOT, env=env, stdout=logs, stderr=logs, start_new_session=True)
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "worker.app", "beat", "--loglevel",
                             "WARNING", "--schedule", str(folder / "beat")],
                            cwd=ROOT, env=env, stdout=logs, stderr=logs, start_new_session=True)
    start, peak_rss, cpu = time.time(), 0, 0.0
    try:
        while True:
            rss, cpu_now = _group_usage(worker.pid)
            peak_rss, cpu = max(peak_rss, rss), max(cpu, cpu_now)
            with Session(engine) as session:
                ended = [r for r in session.exec(select(Run).where(Run.id.in_(ids))).all()  # type: ignore[union-attr]
                         if r.status in FINAL]
            if len(ended) == count or time.time() - start > 600:
                break
            time.sleep(0.5)
        wall = time.time() - start
    finally:
        for process in (worker, beat):
            os.killpg(process.pid, 9)  # figures are taken; nothing left to finish cleanly
            process.wait(timeout=30)
    ok = sum(1 for r in ended if r.status == "succeeded")
    pool = f" over {len(env['CADDIE_SSH_HOSTS'].split(','))} hosts" if provider == "ssh" else ""
    print(f"  {provider}{pool}: {ok}/{count} succeeded in {wall:.1f} s; worker CPU {cpu:.1f} s, "
          f"peak RSS {peak_rss / 2**20:.0f} MiB (main + 2 pool processes)")
    if ok < count:
        print(f"  not ended or not succeeded: see {folder / 'stack.log'}")


def _group_usage(pgid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of every process in the process group."""
    rss, cpu = 0, 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            cpu += (int(fields[11]) + int(fields[12])) / TICK
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return rss, cpu


def _sshd(folder: Path, name: str = "sshd") -> Sshd:
    (folder / name).mkdir()
    server = Sshd(folder / name)
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", nargs="?", default="all", choices=["overhead", "latency", "concurrent", "all"])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--count", type=int, default=20)
    args = parser.parse_args()
    if args.what in ("overhead", "all"):
        overhead(args.runs, args.poll)
    if args.what in ("latency", "all"):
        latency(40, args.poll)
    if args.what in ("concurrent", "all"):
        concurrent(args.count, args.poll)


if __name__ == "__main__":
    main()
