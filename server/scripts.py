"""Bring-your-own-script experiments: the participant's files and environment, checked and stored.

A script experiment carries `train_gpt.py` (required), optionally `requirements.txt` and a
few small extra files, as text. Names are plain file names (never paths), so a file can only
land in its run's own directory on the pod. A re-run of a records folder carries the folder's
files as they are (`check_carried`): relative paths of plain names, any bytes, its own entry
point, and the list of the files its code bytes count (`server.reproduce.counted_paths`). Environment variables go to the script under
`torchrun`; their names and values are checked here and quoted again where the launcher
writes them, so neither can become shell syntax.
"""

import hashlib
import re
from collections.abc import Mapping

from sqlalchemy.orm import defer
from sqlmodel import Session, col, select

from server.models import ExperimentFile

ENTRYPOINT = "train_gpt.py"
REQUIREMENTS = "requirements.txt"
# The script's artifact is the final_model* file it writes; no uploaded file may look like one.
ARTIFACT_PREFIX = "final_model"
MAX_FILES = 16
MAX_FILE_BYTES = 2_000_000  # the biggest record scripts are ~150 KB; the cap counts code bytes anyway
MAX_TOTAL_BYTES = 4_000_000
MAX_ENV = 64
MAX_ENV_VALUE = 4096  # characters
# Not one of these: they change how the interpreter, loader or shell find their code, or are
# set by Caddie for every run (seeds come from the experiment's `seeds`).
RESERVED_ENV = frozenset({
    "PATH", "HOME", "SHELL", "USER", "IFS", "ENV", "BASH_ENV", "PS4", "PYTHONPATH",
    "PYTHONHOME", "PYTHONSTARTUP", "PYTHONINSPECT", "LD_PRELOAD", "LD_LIBRARY_PATH",
    "LD_AUDIT", "SEED", "RUN_ID", "MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK",
    "WORLD_SIZE", "LOCAL_WORLD_SIZE",
})
RESERVED_ENV_PREFIXES = ("CADDIE_", "RUNPOD_", "TORCHELASTIC_", "BASH_FUNC_")
# Written by `caddie export` beside the code: a code file may not take their place.
EXPORTED_NAMES = frozenset({"README.md", "submission.json", "run.json"})
MAX_PATH = 100  # characters of a carried file's relative path (ExperimentFile.name)
_SEED_LOG = re.compile(r"train_seed\d+\.log")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")


def check_files(files: dict[str, str]) -> dict[str, str]:
    """Return `files` if every name and size is allowed; ValueError naming `files.<name>`."""
    if len(files) > MAX_FILES:
        raise ValueError(f"files: at most {MAX_FILES} files, got {len(files)}")
    total = 0
    for name, text in files.items():
        if not _FILE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(f"files.{name[:120]!r}: a plain file name of letters, digits, '.', '_' "
                             "and '-' is needed (no paths, no leading dot)")
        if name.startswith(ARTIFACT_PREFIX):
            raise ValueError(f"files.{name}: names starting with {ARTIFACT_PREFIX!r} are kept for "
                             "the artifact the script writes")
        if name in EXPORTED_NAMES or _SEED_LOG.fullmatch(name):
            raise ValueError(f"files.{name}: reserved for the records folder Caddie exports")
        if "\x00" in text:
            raise ValueError(f"files.{name}: text files only (found a NUL byte)")
        if not _encodable(text):
            raise ValueError(f"files.{name}: not valid Unicode text (a lone surrogate)")
        size = len(text.encode())
        if size > MAX_FILE_BYTES:
            raise ValueError(f"files.{name}: {size:,} bytes, the limit is {MAX_FILE_BYTES:,}")
        total += size
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"files: {total:,} bytes in all, the limit is {MAX_TOTAL_BYTES:,}")
    return files


def check_carried(files: dict[str, bytes]) -> dict[str, bytes]:
    """Return a re-run's `files` (relative path -> bytes) if every path and size is allowed:
    `/`-separated plain names (no `..`, no absolute path, no leading dot), the same limits as
    `check_files`; ValueError naming `files.<path>`."""
    if len(files) > MAX_FILES:
        raise ValueError(f"files: at most {MAX_FILES} files, got {len(files)}")
    total = 0
    for path, data in files.items():
        parts = path.split("/")
        if len(path) > MAX_PATH or not all(_FILE_NAME.fullmatch(part) and ".." not in part for part in parts):
            raise ValueError(f"files.{path[:120]!r}: a relative path of plain names (letters, digits, '.', "
                             f"'_', '-'; no '..', no leading dot or '/') of at most {MAX_PATH} characters is needed")
        if any(part.startswith(ARTIFACT_PREFIX) for part in parts):
            raise ValueError(f"files.{path}: names starting with {ARTIFACT_PREFIX!r} are kept for "
                             "the artifact the script writes")
        if len(parts) == 1 and (path in EXPORTED_NAMES or _SEED_LOG.fullmatch(path)):
            raise ValueError(f"files.{path}: reserved for the records folder Caddie exports")
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"files.{path}: {len(data):,} bytes, the limit is {MAX_FILE_BYTES:,}")
        total += len(data)
    if total > MAX_TOTAL_BYTES:
        raise ValueError(f"files: {total:,} bytes in all, the limit is {MAX_TOTAL_BYTES:,}")
    return files


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
HIDDEN_VALUE = "(hidden)"


def check_env(env: dict[str, str]) -> dict[str, str]:
    """Return `env` if every name and value is allowed; ValueError naming `env.<NAME>`."""
    if len(env) > MAX_ENV:
        raise ValueError(f"env: at most {MAX_ENV} variables, got {len(env)}")
    for name, value in env.items():
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"env.{name[:80]!r}: names are upper-case letters, digits and '_', "
                             "not starting with a digit, at most 64 characters")
        if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
            raise ValueError(f"env.{name}: reserved (set by Caddie or unsafe to change)")
        if len(value) > MAX_ENV_VALUE:
            raise ValueError(f"env.{name}: {len(value)} characters, the limit is {MAX_ENV_VALUE}")
        if any(ch in value for ch in "\x00\n\r"):
            raise ValueError(f"env.{name}: NUL and line breaks are not allowed in values")
        if not _encodable(value):
            raise ValueError(f"env.{name}: not valid Unicode text (a lone surrogate)")
    return env


def shown_env(env: dict[str, str]) -> dict[str, str]:
    """`env` as pages and the API show it: the value of a name that looks like a credential
    (it contains KEY, TOKEN, SECRET, PASSWORD, PASSWD, CREDENTIAL or AUTH, in any case) is
    replaced by HIDDEN_VALUE. The pod still gets the real value."""
    return {name: HIDDEN_VALUE if SECRET_NAME.search(name) else value for name, value in sorted(env.items())}


def _encodable(text: str) -> bool:
    """False for text holding lone surrogates (JSON can carry them; UTF-8 cannot)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def store_files(session: Session, experiment_id: int, files: Mapping[str, str | bytes]) -> None:
    """Add the files (text, or a re-run's bytes as carried) as rows of the experiment (the
    caller commits)."""
    for name, text in sorted(files.items()):
        content = text if isinstance(text, bytes) else text.encode()
        session.add(ExperimentFile(experiment_id=experiment_id, name=name, nbytes=len(content),
                                   sha256=hashlib.sha256(content).hexdigest(), content=content))


def file_names(session: Session, experiment_id: int) -> set[str]:
    """The names alone, without loading the files' content."""
    return set(session.exec(
        select(ExperimentFile.name).where(ExperimentFile.experiment_id == experiment_id)
    ).all())


def list_files(session: Session, experiment_id: int, *, content: bool = True) -> list[ExperimentFile]:
    """The experiment's files by name; `content=False` leaves their bytes unread (listings)."""
    query = select(ExperimentFile).where(ExperimentFile.experiment_id == experiment_id)
    if not content:
        # SQLModel types the class attribute as its value; at runtime it is the column defer takes.
        # SQLModel types the class attribute as its value; at runtime it is the column defer takes.
        query = query.options(defer(ExperimentFile.content))  # type: ignore[arg-type]
    return list(session.exec(query.order_by(col(ExperimentFile.name))).all())
