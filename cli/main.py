"""Entry point of the `caddie` console command."""

import argparse
import os
import signal
import sys
import time

from cli.doctor import register as register_doctor
from cli.logs import register as register_logs
from cli.records import register as register_records
from cli.reproduce import register as register_reproduce
from cli.tokens import register as register_tokens
from server.config import get_settings


def cmd_up(args: argparse.Namespace) -> int:
    from cli.stack import Stack
    from server.migrate import upgrade_head

    settings = get_settings()
    upgrade_head()
    stack = Stack(settings, host=args.host, port=args.port, worker_concurrency=args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    stack.start()
    try:
        stack.wait_healthy()
        database = "PostgreSQL" if settings.database_url else "SQLite"
        broker = "Redis" if settings.redis_url else "the filesystem transport"
        print(f"Caddie is up at {stack.url} (API docs at {stack.url}/docs); "
              f"{database}, {broker}, data in {settings.data_dir.resolve()}. Ctrl-C stops it.",
              flush=True)
        while True:
            stack.check_alive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def cmd_demo(args: argparse.Namespace) -> int:
    from cli.demo import run_demo
    from server.migrate import upgrade_head

    upgrade_head()
    seeds = [int(s) for s in args.seeds.split(",")]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as `up`: a stopped demo stops its stack too
    return run_demo(get_settings(), seeds=seeds, port=args.port, timeout_s=args.timeout,
                    iterations=args.iterations)


def cmd_migrate(_args: argparse.Namespace) -> int:
    from server.migrate import upgrade_head

    upgrade_head()
    print("database is at the latest migration")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="caddie", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the API server, a worker and beat together")
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--concurrency", type=int, default=2, help="worker processes")
    up.set_defaults(func=cmd_up)
    demo = sub.add_parser("demo", help="train 3 tiny seeds on this machine and print the leaderboard")
    demo.add_argument("--seeds", default="1337,42,2025", help="comma-separated seeds")
    demo.add_argument("--port", type=int, default=8765)
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for the runs")
    demo.add_argument("--iterations", type=int, default=None,
                      help="training steps per seed (default: the tiny preset's)")
    demo.set_defaults(func=cmd_demo)
    migrate = sub.add_parser("migrate", help="apply database migrations")
    migrate.set_defaults(func=cmd_migrate)
    register_logs(sub)
    register_doctor(sub)
    register_tokens(sub)
    register_records(sub)
    register_reproduce(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        # The reader went away (`caddie import ... | head`): not an error worth a word.
        # Python would flush stdout again at exit and complain, so point it at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RuntimeError, ValueError, OSError) as error:
        print(f"caddie: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
