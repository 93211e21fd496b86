"""`caddie doctor`: check the configuration and everything it points at, and say what is wrong.

Each check prints one line, `ok` or `FAIL`, with what it found; the exit code is 1 when any
check failed. Secrets are never printed: only where they come from.
"""

import argparse
import stat
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from server.config import Settings, get_settings


class CheckFailed(Exception):
    pass


def check_database(settings: Settings) -> str:
    from server.db import make_engine
    from server.migrate import head_revision

    url = settings.resolved_database_url()
    engine = make_engine(url)
    kind = engine.dialect.name
    try:
        with engine.connect() as conn:
            current = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as exc:
        raise CheckFailed(f"{kind}: cannot read its migration ({type(exc).__name__}); "
                          "is it running, and did `caddie migrate` run?") from None
    finally:
        engine.dispose()
    if current != head_revision():
        raise CheckFailed(f"{kind} is at migration {current}, the code needs {head_revision()}: "
                          "run `caddie migrate`")
    return f"{kind} at migration {current}"


def check_broker(settings: Settings) -> str:
    if settings.redis_url:
        import redis

        try:
            redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            raise CheckFailed(f"Redis at CADDIE_REDIS_URL does not answer: {type(exc).__name__}") from None
        return "Redis answers"
    folder = settings.broker_dir()
    try:
        settings.broker_transport_options()  # makes the folders
        probe = folder / "queue" / ".doctor"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise CheckFailed(f"filesystem broker folder {folder} is not writable: {exc.strerror}") from None
    return f"filesystem transport in {folder}"


def check_ssh(settings: Settings) -> str:
    from worker.ssh import SSHTarget, load_key

    if not settings.ssh_hosts.strip():
        return "no ssh hosts configured (CADDIE_SSH_HOSTS); the ssh provider is off"
    try:
        targets = [SSHTarget.parse(h.strip(), name="CADDIE_SSH_HOSTS entry")
                   for h in settings.ssh_hosts.split(",") if h.strip()]
    except ValueError as exc:
        raise CheckFailed(str(exc)) from None
    key = settings.ssh_key_file
    if key is None:
        raise CheckFailed("CADDIE_SSH_HOSTS is set but CADDIE_SSH_KEY_FILE is not")
    if not Path(key).is_file():
        raise CheckFailed(f"CADDIE_SSH_KEY_FILE {key} does not exist")
    if Path(key).stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CheckFailed(f"CADDIE_SSH_KEY_FILE {key} is readable by others: chmod 600 it")
    try:
        load_key(Path(key))
    except Exception as exc:  # noqa: BLE001 - any reason the key does not load is the answer
        raise CheckFailed(f"CADDIE_SSH_KEY_FILE {key} is not a usable private key: "
                          f"{type(exc).__name__}") from None
    return f"{len(targets)} host(s), key {key} loads"


def check_trainer_schema(_settings: Settings) -> str:
    from server.presets import load_schema

    try:
        schema = load_schema()
    except RuntimeError as exc:
        raise CheckFailed(str(exc)) from None
    return f"trainer presets: {', '.join(sorted(schema['presets']))}"


CHECKS: dict[str, Callable[[Settings], str]] = {
    "database": check_database,
    "broker": check_broker,
    "ssh provider": check_ssh,
    "trainer schema": check_trainer_schema,
}


def cmd_doctor(_args: argparse.Namespace) -> int:
    try:
        settings = get_settings()
    except ValueError as exc:  # pydantic names the variable and its value
        print(f"FAIL settings: {exc}")
        return 1
    print(f"ok   settings: data dir {settings.data_dir.resolve()}")
    failed = sum(not _line(name, partial(check, settings)) for name, check in CHECKS.items())
    failed += sum(not _line(name, check) for name, check in runpod_lines(settings))
    return 1 if failed else 0


def runpod_lines(settings: Settings) -> Iterator[tuple[str, Callable[[], str]]]:
    """The RunPod checks when a key is set (read-only queries: no spend), else one line saying so."""
    if settings.runpod_api_key is None and settings.runpod_api_key_file is None:
        yield "runpod", lambda: ("no API key (CADDIE_RUNPOD_API_KEY or CADDIE_RUNPOD_API_KEY_FILE); "
                                 "the runpod provider is off")
        return
    from cli.doctor_runpod import Failed, RunPodChecks

    for name, check in RunPodChecks(settings).lines():
        yield name, _failing_as(check, Failed)


def _failing_as(check: Callable[[], str], error: type[Exception]) -> Callable[[], str]:
    def run() -> str:
        try:
            return check()
        except error as exc:
            raise CheckFailed(str(exc)) from None
    return run


def _line(name: str, check: Callable[[], str]) -> bool:
    """Print the check's one line; False when it failed."""
    try:
        print(f"ok   {name}: {check()}", flush=True)
    except CheckFailed as exc:
        print(f"FAIL {name}: {exc}", flush=True)
        return False
    return True


# Quoted: argparse's _SubParsersAction is generic to type checkers only, not at run time.
def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    doctor = subparsers.add_parser("doctor", help="check configuration, database, broker and providers")
    doctor.set_defaults(func=cmd_doctor)
