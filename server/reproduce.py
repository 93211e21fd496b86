"""Re-runs of a submission: where its records folder comes from, what it documents (code, env,
data, seeds), the editable plan shown before launch, and the linked script experiment.

A records folder reaches Caddie as an imported record (its folder on disk when still there,
else its stored code), a folder path, a zip, or a git repository at a commit. Its plan holds
every file the run needs byte for byte with each file's sha256 (sub-folders as relative paths,
binary files such as a tokenizer model as they are; not its logs, README, submission or
pictures), the script it launches (`entry_point`: the one its README's or shell scripts'
`torchrun` / `python` lines run, else train_gpt.py, else its only trainer-like `*.py`) and
the files its code bytes count (`counted_paths`); the environment its README's command lines
set in front of `torchrun` / `python` (per seed where they differ; `\\` continuations,
`export X=..` lines, `for SEED in ...` loops), else the hyperparameters its logs echo for the
names its code reads; the tokenizer and dataset variant; the seeds it claims; and the claims
themselves (per seed val_bpb, val_loss, bytes, times), which `server.rerun` judges the re-run
against. Sources on the server's own disk (a path, a `file://` repository) are for admins.
"""

import hashlib
import io
import random
import re
import shlex
import shutil
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import Session

from server import experiments, policies, records, scripts
from server.communitylog import parse_log
from server.config import get_settings
from server.costs import estimate_experiment
from server.eligibility import MAX_TRAIN_SECONDS
from server.models import Experiment, Run

RULES_GPU_TYPE = "NVIDIA H100 80GB HBM3"  # the rules' 8xH100 SXM, as RunPod names it
RULES_GPU_COUNT = 8
DEFAULT_TOKENIZER = "sp1024"
MAX_ZIP_BYTES = 50_000_000
MAX_UNZIPPED_BYTES = 200_000_000
GIT_TIMEOUT_S = 120
# Files of a records folder that are not the submission's code or input: its documentation,
# pictures, submission and logs (besides the train logs `records` reads).
NOT_CODE = frozenset({"README.md", records.SUBMISSION})
NOT_CARRIED_SUFFIXES = (".log", ".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf")
# Source files that can be part of the code a run counts (Python, and C/C++/CUDA extensions).
SOURCE_SUFFIXES = (".py", ".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp")
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([A-Za-z_][\w.]*)[ \t]+import[ \t]+(\(?[\w ,\t]+\)?)"
                     r"|import[ \t]+([\w., \t]+))", re.MULTILINE)
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.DOTALL)
_LAUNCHERS = frozenset({"torchrun", "python", "python3"})
_SEED_LOOP = re.compile(r"^\s*for\s+SEED\s+in\s+([0-9][0-9\s]*?)\s*;?\s*(?:do\b.*)?$")
_CODE_ENV = re.compile(r"""(?:environ(?:\.get)?\s*[(\[]|getenv\s*\()\s*['"]([A-Z][A-Z0-9_]*)['"]""")
_HYPER_LINE = re.compile(r"^\s+([a-z][a-z0-9_]*):\s(.*)$")
_PAIR = re.compile(r"^([a-z][a-z0-9_]*):(\S+)$")
_DATASET = re.compile(r"fineweb10B_([A-Za-z0-9_]+)")
_TOKENIZER = re.compile(r"fineweb_(\d+)_bpe|fineweb10B_sp(\d+)|\bsp(1024|4096|8192)\b")
# The code's own default: `data_path = './data/datasets/fineweb10B_sp512'` or
# `os.environ.get("TOKENIZER_PATH", "./data/tokenizers/fineweb_1024_bpe.model")`, not a mention
# of another variant in a docstring or a table of presets.
_CODE_DEFAULT = re.compile(r"""(?i)\b(?:data_path|tokenizer_path)\b['"]?\s*[=,:]\s*['"][^'"\n]*?"""
                           r"""(?:fineweb10B_sp(\d+)|fineweb_(\d+)_bpe)""")
_GIT_SCHEMES = ("https://", "http://", "git://", "ssh://")
_COMMIT = re.compile(r"^[0-9a-fA-F]{7,40}$")


class SourceError(ValueError):
    """A source Caddie cannot read; the message names the field (`source.url`, ...)."""


# --- the environment a README documents ----------------------------------------------------


@dataclass
class Commands:
    """The launch commands of a README: one env per command, `export` lines, loop seeds."""

    envs: list[dict[str, str]] = field(default_factory=list)
    exports: dict[str, str] = field(default_factory=dict)
    loop_seeds: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    launched: list[tuple[str, str]] = field(default_factory=list)  # (launcher, script path) per command


def readme_commands(text: str) -> Commands:
    """Every `NAME=value ... torchrun|python ...` command of `text`, continuations joined."""
    found = Commands()
    for line in _logical_lines(_unescape_markdown(text)):
        loop = _SEED_LOOP.match(line)
        if loop:
            found.loop_seeds = [int(s) for s in loop.group(1).split()]
            continue
        words = _words(line)
        if not words:
            continue
        if words[0] == "export":
            found.exports.update(_assignments(words[1:], found.notes))
            continue
        env = _command_env(words, found.notes)
        if env is not None:
            found.envs.append(env)
        launched = launched_script(words)
        if launched:
            found.launched.append(launched)
    return found


def launched_script(words: list[str]) -> tuple[str, str] | None:
    """(launcher, script) of a `[NAME=value ...] torchrun|python [options] NAME.py` command."""
    rest = words[1:] if words and words[0] == "env" else words
    rest = [word for word in rest if not _ASSIGNMENT.match(word)]
    if not rest or Path(rest[0]).name not in _LAUNCHERS:
        return None
    script = next((word for word in rest[1:] if word.endswith(".py")), None)
    return (Path(rest[0]).name, script) if script else None


def _unescape_markdown(text: str) -> str:
    """README text as the shell would see it: `\\_` is `_`, a line ending in `\\\\` continues."""
    text = text.replace("\\_", "_").replace("\\*", "*")
    return re.sub(r"\\\\[ \t]*$", "\\\\", text, flags=re.MULTILINE)


def _logical_lines(text: str) -> Iterator[str]:
    """Lines with `\\` + newline continuations joined, as a shell reads them."""
    pending = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    if pending:
        yield pending


def _words(line: str) -> list[str]:
    stripped = line.strip().lstrip("$").strip()
    if not stripped or stripped.startswith("#"):
        return []
    try:
        return shlex.split(stripped, comments=True)
    except ValueError:
        return []  # prose with an apostrophe, not a command


def _command_env(words: list[str], notes: list[str]) -> dict[str, str] | None:
    """The assignments in front of a launcher, or None if the line launches nothing."""
    if words and words[0] == "env":
        words = words[1:]
    prefix: list[str] = []
    for index, word in enumerate(words):
        if _ASSIGNMENT.match(word):
            prefix.append(word)
            continue
        if Path(word).name in _LAUNCHERS and _runs_a_script(words[index + 1:]):
            return _assignments(prefix, notes)
        return None
    return None


def _runs_a_script(rest: list[str]) -> bool:
    return any(word.endswith(".py") or word == "torch.distributed.run" for word in rest)


def _assignments(words: list[str], notes: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for word in words:
        m = _ASSIGNMENT.match(word)
        if not m:
            continue
        name, value = m.group(1), m.group(2)
        if "$" in value or "`" in value:
            if name != "SEED":
                notes.append(f"{name}={value} refers to a shell variable: left out")
            continue
        env[name] = value
    return env


@dataclass
class DocumentedEnv:
    env: dict[str, str]  # the same for every seed
    seed_env: dict[str, dict[str, str]]  # str(seed) -> what differs for that seed
    seeds: list[int]  # seeds the commands name
    source: str  # "readme", "logs" or "none"
    notes: list[str]


def documented_env(readme: str, logs: list[str], code: dict[str, str]) -> DocumentedEnv:
    """The README's command env (split into common and per seed), else the logs' echoed
    hyperparameters for the env names the code reads."""
    commands = readme_commands(readme)
    notes = list(commands.notes)
    if commands.envs or commands.exports:
        return _split_by_seed(commands, notes)
    from_logs = log_env(logs, code_env_names(code))
    if from_logs:
        notes.append("no command line in the README: env from the logs' hyperparameter lines")
        return DocumentedEnv(from_logs, {}, [], "logs", notes)
    notes.append("no command env in the README and none echoed in the logs: the script's defaults")
    return DocumentedEnv({}, {}, [], "none", notes)


def _split_by_seed(commands: Commands, notes: list[str]) -> DocumentedEnv:
    seeded = [env for env in commands.envs if env.get("SEED", "").isdigit()]
    chosen = seeded or commands.envs[:1]
    if not seeded and len({tuple(sorted(e.items())) for e in commands.envs}) > 1:
        notes.append(f"{len(commands.envs)} different commands and none names a seed: the first is used")
    common = dict(commands.exports)
    if chosen:
        shared = set.intersection(*(set(env.items()) for env in chosen))
        common.update(dict(sorted(shared)))
    seed_env = {env["SEED"]: {k: v for k, v in env.items() if (k, v) not in common.items()}
                for env in seeded}
    seeds = [int(s) for s in seed_env] or commands.loop_seeds
    return DocumentedEnv(_allowed(common, notes), {s: _allowed(e, notes) for s, e in seed_env.items()},
                         seeds, "readme", notes)


def _allowed(env: dict[str, str], notes: list[str]) -> dict[str, str]:
    """Drop what Caddie sets itself (SEED, RUN_ID, ...) and data paths on another machine."""
    kept: dict[str, str] = {}
    for name, value in env.items():
        try:
            scripts.check_env({name: value})
        except ValueError:
            if name not in {"SEED", "RUN_ID"}:
                notes.append(f"{name} is set by Caddie or not allowed: left out")
            continue
        if name in {"DATA_PATH", "TOKENIZER_PATH", "DATA_DIR"} and value.startswith("/"):
            notes.append(f"{name}={value} is a folder of the submitter's machine: Caddie's data link is used")
            continue
        kept[name] = value
    return kept


def code_env_names(code: dict[str, str]) -> set[str]:
    """The env var names the code reads (`os.environ.get("NAME", ...)`, `os.getenv("NAME")`)."""
    return {name for text in code.values() for name in _CODE_ENV.findall(text)}


def log_env(logs: list[str], names: set[str]) -> dict[str, str]:
    """`name: value` hyperparameter lines (or `name:value` pairs) of the first log whose upper-
    case name the code reads as an env var."""
    if not logs or not names:
        return {}
    env: dict[str, str] = {}
    in_block = False  # inside a `Hyperparameters:` block (a quoted source has `name: type,` too)
    for line in logs[0].splitlines():
        if line.startswith("step:"):
            break
        m = _HYPER_LINE.match(line) if in_block else None
        in_block = line.rstrip() == "Hyperparameters:" or (in_block and m is not None)
        pairs = [(m.group(1), m.group(2).strip())] if m else _pairs(line)
        for key, value in pairs:
            if key.upper() in names and value and key.upper() not in {"SEED", "RUN_ID"}:
                env[key.upper()] = value
    return _allowed(env, [])


def _pairs(line: str) -> list[tuple[str, str]]:
    words = line.split()
    matches = [_PAIR.match(word) for word in words]
    if len(words) < 2 or not all(matches):
        return []
    return [(m.group(1), m.group(2)) for m in matches if m]


# --- data ------------------------------------------------------------------------------------


def data_variant(env: dict[str, str], logs: list[str], code: dict[str, str], readme: str) -> dict[str, str]:
    """The tokenizer (sp1024/4096/8192) from the env, the log, the code (its DATA_PATH /
    TOKENIZER_PATH default first, else any mention) or the README, and a published
    dataset variant (`fineweb10B_<variant>`) the env or the README names."""
    tokenizer, found_in = DEFAULT_TOKENIZER, "default"
    code_text = "\n".join(code.values())
    for where, text, pattern in (("env", " ".join(env.values()), _TOKENIZER), ("log", "\n".join(logs[:1]), _TOKENIZER),
                                 ("code", code_text, _CODE_DEFAULT), ("code", code_text, _TOKENIZER),
                                 ("readme", readme, _TOKENIZER)):
        m = pattern.search(text)
        if m:
            tokenizer, found_in = f"sp{next(g for g in m.groups() if g)}", where
            break
    dataset = tokenizer
    for text in (env.get("DATA_PATH", ""), readme):
        named = [v for v in _DATASET.findall(text) if v.startswith(tokenizer) and v != tokenizer]
        if named:
            dataset = named[0]
            break
    return {"tokenizer": tokenizer, "tokenizer_from": found_in, "dataset": dataset}


def data_env(variant: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """DATA_PATH / TOKENIZER_PATH for a variant other than the default, under Caddie's link."""
    if variant["dataset"] == DEFAULT_TOKENIZER and variant["tokenizer"] == DEFAULT_TOKENIZER:
        return {}
    size = variant["tokenizer"].removeprefix("sp")
    added = {"DATA_PATH": f"./data/datasets/fineweb10B_{variant['dataset']}",
             "TOKENIZER_PATH": f"./data/tokenizers/fineweb_{size}_bpe.model"}
    return {k: v for k, v in added.items() if k not in env}


# --- sources -----------------------------------------------------------------------------------


class GitSource(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=500)
    commit: str = Field(min_length=7, max_length=40)
    path: str = Field(default="", max_length=300)  # the records folder inside the repository


@contextmanager
def path_source(path: str) -> Iterator[Path]:
    folder = Path(path)
    if not folder.is_dir():
        raise SourceError(f"source.path: {path!r} is not a folder")
    yield _one_record_folder(folder, "source.path")


@contextmanager
def zip_source(data: bytes, inner: str = "") -> Iterator[Path]:
    """The records folder in a zip, unpacked into a temporary folder (names checked: no
    absolute path, no `..`, no link; sizes capped)."""
    if len(data) > MAX_ZIP_BYTES:
        raise SourceError(f"source.zip: {len(data):,} bytes, the limit is {MAX_ZIP_BYTES:,}")
    with tempfile.TemporaryDirectory(prefix="caddie-reproduce-") as tmp:
        root = Path(tmp)
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                _unzip(archive, root)
        except zipfile.BadZipFile:
            raise SourceError("source.zip: not a zip file") from None
        yield _one_record_folder(_inside(root, inner, "source.path"), "source.zip")


def _unzip(archive: zipfile.ZipFile, root: Path) -> None:
    total = 0
    for info in archive.infolist():
        name = info.filename
        parts = Path(name).parts
        if name.startswith(("/", "\\")) or ".." in parts or (info.external_attr >> 28) == 0o12:
            raise SourceError(f"source.zip: {name!r} would land outside the folder (or is a link)")
        total += info.file_size
        if total > MAX_UNZIPPED_BYTES:
            raise SourceError(f"source.zip: more than {MAX_UNZIPPED_BYTES:,} bytes unpacked")
        if info.is_dir():
            continue
        target = root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(archive.read(info))


@contextmanager
def git_source(source: GitSource, *, allow_file: bool) -> Iterator[Path]:
    """The folder `source.path` of the repository at `source.commit`, fetched into a temporary
    folder. Only https/http/git/ssh transports (and file:// or a local path where allowed)."""
    url = source.url
    local = url.startswith("file://") or url.startswith("/")
    if not (url.startswith(_GIT_SCHEMES) or (local and allow_file)):
        raise SourceError(f"source.url: {url[:100]!r} is not an https, http, git or ssh URL"
                          + ("" if allow_file else " (local repositories are for admins)"))
    if not _COMMIT.match(source.commit):
        raise SourceError(f"source.commit: {source.commit!r} is not a commit hash")
    with tempfile.TemporaryDirectory(prefix="caddie-reproduce-") as tmp:
        repo, tree = Path(tmp) / "repo", Path(tmp) / "tree"
        _git(["init", "-q", "--bare", str(repo)], None, allow_file)
        if _git(["fetch", "-q", "--depth=1", url, source.commit], repo, allow_file, check=False) != 0:
            _git(["fetch", "-q", url, "+refs/heads/*:refs/heads/*"], repo, allow_file)
        tree.mkdir()
        archive = _git_output(["archive", "--format=tar", source.commit], repo, allow_file)
        shutil.unpack_archive(_write_temp(archive, Path(tmp) / "tree.tar"), tree, filter="data")
        yield _one_record_folder(_inside(tree, source.path, "source.path"), "source.path")


def _git_env() -> dict[str, str]:
    return {"GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
            "PATH": "/usr/bin:/bin:/usr/local/bin", "GIT_SSH_COMMAND": "ssh -o BatchMode=yes"}


def _git_config(allow_file: bool) -> list[str]:
    file_rule = "always" if allow_file else "never"
    return ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always",
            "-c", "protocol.http.allow=always", "-c", "protocol.git.allow=always",
            "-c", "protocol.ssh.allow=always", "-c", f"protocol.file.allow={file_rule}"]


def _git(args: list[str], repo: Path | None, allow_file: bool, *, check: bool = True) -> int:
    where = ["--git-dir", str(repo)] if repo else []
    try:
        done = subprocess.run(["git", *_git_config(allow_file), *where, *args], env=_git_env(),
                              capture_output=True, timeout=GIT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise SourceError(f"source.url: git {args[0]} took over {GIT_TIMEOUT_S} s") from None
    if check and done.returncode != 0:
        raise SourceError(f"source.url: git {args[0]} failed: "
                          f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.returncode


def _git_output(args: list[str], repo: Path, allow_file: bool) -> bytes:
    done = subprocess.run(["git", *_git_config(allow_file), "--git-dir", str(repo), *args],
                          env=_git_env(), capture_output=True, timeout=GIT_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise SourceError(f"source.commit: {done.stderr.decode(errors='replace').strip()[-300:]}")
    return done.stdout


def _write_temp(data: bytes, path: Path) -> Path:
    path.write_bytes(data)
    return path


def _inside(root: Path, inner: str, where: str) -> Path:
    folder = (root / inner.strip("/")).resolve()
    if not folder.is_relative_to(root.resolve()) or not folder.is_dir():
        raise SourceError(f"{where}: {inner!r} is not a folder of the source")
    return folder


def _one_record_folder(root: Path, where: str) -> Path:
    found = records.find_record_folders(root)
    if not found:
        raise SourceError(f"{where}: no records folder (no submission.json or train log) found")
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(root)) or "." for f in found[:5])
        raise SourceError(f"{where}: {len(found)} records folders ({names}); name one")
    return found[0]


# --- the plan ----------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything a re-run will use, shown before launch; `files` are the exact bytes by
    relative path, `entrypoint` the one torchrun launches."""

    name: str
    origin: dict[str, Any]
    files: dict[str, bytes]
    env: dict[str, str]
    seed_env: dict[str, dict[str, str]]
    seeds: list[int]
    claims: list[dict[str, Any]]
    data: dict[str, str]
    env_from: str
    notes: list[str]
    reproduces_id: int | None = None
    entrypoint: str = scripts.ENTRYPOINT
    counted: list[str] = field(default_factory=list)  # files whose bytes are the run's code bytes

    def public(self, provider: str = "runpod", budget_usd: float | None = None) -> dict[str, Any]:
        out = asdict(self)
        out["files"] = [file_facts(name, data, name in self.counted) for name, data in sorted(self.files.items())]
        out["hardware"] = {"gpu_type": RULES_GPU_TYPE, "gpu_count": RULES_GPU_COUNT,
                           "note": "the rules' 8xH100 SXM"}
        out["estimate"] = estimate(len(self.seeds), provider, self.env).model_dump()
        out["provider"], out["budget_usd"] = provider, budget_usd
        return out


def file_facts(name: str, data: bytes, counted: bool) -> dict[str, Any]:
    """A file's size and sha256, whether its bytes count as code, and whether it is text."""
    try:
        data.decode("utf-8")
        text = b"\x00" not in data
    except UnicodeDecodeError:
        text = False
    return {"name": name, "nbytes": len(data), "sha256": hashlib.sha256(data).hexdigest(),
            "counted": counted, "text": text}


def estimate(seeds: int, provider: str, env: dict[str, str]) -> Any:
    try:
        wallclock = float(env.get("MAX_WALLCLOCK_SECONDS", MAX_TRAIN_SECONDS))
    except ValueError:
        wallclock = MAX_TRAIN_SECONDS
    return estimate_experiment(get_settings(), preset="baseline", provider=provider, seeds=max(seeds, 1),
                               gpu_count=RULES_GPU_COUNT if provider == "runpod" else None,
                               max_wallclock_seconds=wallclock if wallclock > 0 else MAX_TRAIN_SECONDS)


def plan_folder(folder: Path, origin: dict[str, Any]) -> Plan:
    """The plan of a records folder on disk."""
    record = records.read_record_folder(folder)
    notes = list(record.notes)
    log_files = {log.file for log in record.logs}
    files = carried_files(folder, log_files, notes)
    readme = _read_text(folder / "README.md")
    entry = entry_point(files, readme, notes)
    counted = counted_paths(files, entry)
    logs = [log.data.decode(errors="replace") for log in record.logs]
    code = _texts(files, counted)
    documented = documented_env(readme, logs, code)
    notes += documented.notes
    variant = data_variant(documented.env, logs, code, readme)
    env = {**documented.env, **data_env(variant, documented.env)}
    claims = [claim(log) for log in record.logs]
    seeds = [c["seed"] for c in claims if c["seed"] >= 0] or documented.seeds or records.stated_seeds(record.submission)
    seeds = list(dict.fromkeys(seeds))  # two logs of one seed run it once
    name = records._text(record.submission.get("name")) or folder.name  # noqa: SLF001
    return Plan(name=f"re-run: {name}"[:200], origin={**origin, "key": record.key}, files=files,
                env=env, seed_env=documented.seed_env, seeds=seeds or [1337], claims=claims,
                data=variant, env_from=documented.source, notes=notes, entrypoint=entry, counted=counted)


def carried_files(folder: Path, log_files: set[str], notes: list[str]) -> dict[str, bytes]:
    """Every plain file of the folder at any depth, by `/`-separated relative path, byte for
    byte, but its README, submission, logs, Markdown and pictures (NOT_CARRIED_SUFFIXES). A
    link pointing out of the folder refuses the folder; one inside it is not followed."""
    root = folder.resolve()
    files: dict[str, bytes] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            if not path.resolve().is_relative_to(root):
                raise SourceError(f"source: {rel} is a link out of the records folder")
            notes.append(f"{rel}: a link, not followed")
            continue
        if not path.is_file() or any(p.is_symlink() for p in path.relative_to(folder).parents if str(p) != "."):
            continue
        if (rel in NOT_CODE or rel in log_files or rel.lower().endswith(NOT_CARRIED_SUFFIXES)
                or (path.parent == folder and records._is_submission(path))):  # noqa: SLF001
            continue
        data = path.read_bytes()
        if _is_a_log(rel, data):
            continue
        files[rel] = data
    try:
        return scripts.check_carried(files)
    except ValueError as error:
        raise SourceError(f"source: {error}") from None


def _is_a_log(rel: str, data: bytes) -> bool:
    """A `.txt` that is a log: "log" in its path (`logs/`, `log_seed42.txt`) or read as a train
    log (a copy of one `records` already read, an earlier version's run)."""
    if not rel.endswith(".txt") or Path(rel).name in records.NOT_LOGS:
        return False
    return "log" in rel.lower() or records._looks_like_train_log(parse_log(data))  # noqa: SLF001


def _texts(files: dict[str, bytes], names: list[str]) -> dict[str, str]:
    """The named files as text, for the env names and data paths the code reads."""
    return {name: files[name].decode("utf-8", errors="replace") for name in names}


def counted_paths(files: dict[str, bytes], entry: str) -> list[str]:
    """The files whose bytes are the run's code bytes, as the challenge counts the script that
    runs: the entry point and, transitively, every carried source it uses: a `.py` it imports
    (`import x.y`, `from x import y`) or names (`runpy.run_path("x.py")`, `exec(open(..."x.py"))`),
    a C/C++/CUDA source it names (`load(sources=["k.cpp"])`). Never requirements.txt, a
    tokenizer or other data, nor a script nothing running uses (a readable copy, a data prep)."""
    sources = {name for name in files if name.endswith(SOURCE_SUFFIXES)}
    counted: set[str] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in counted:
            continue
        counted.add(name)
        if name.endswith(".py"):
            text = files[name].decode("utf-8", errors="replace")
            modules = imported_modules(text)
            todo += [other for other in sources - counted if _uses(text, modules, other)]
    return sorted(counted)


def imported_modules(text: str) -> set[str]:
    """Dotted module names a Python text imports, with their parents and, for `from x import
    y`, `x.y` (y may be a submodule)."""
    found: set[str] = set()
    for m in _IMPORT.finditer(text):
        if m.group(1):
            base = m.group(1)
            found.add(base)
            found.update(f"{base}.{name.split()[0]}" for name in m.group(2).strip("() ").split(",") if name.strip())
        else:
            found.update(name.split()[0] for name in m.group(3).split(",") if name.strip())
    return found | {module.rsplit(".", i)[0] for module in found for i in range(1, module.count(".") + 1)}


def _uses(text: str, modules: set[str], path: str) -> bool:
    if Path(path).name in text:
        return True
    module = path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
    return path.endswith(".py") and module in modules


def entry_point(files: dict[str, bytes], readme: str, notes: list[str]) -> str:
    """The script the folder runs: the first carried `*.py` that a `torchrun` command (else a
    `python` one) of the README or of a carried shell script launches, matched by its path or
    its name; else train_gpt.py; else the only trainer-like `*.py` (its name starts with
    "train"), else the only `*.py`."""
    commands = readme_commands(readme).launched
    for name, data in sorted(files.items()):
        if name.endswith(".sh"):
            commands += readme_commands(data.decode("utf-8", errors="replace")).launched
    for launcher in ("torchrun", "python3", "python"):
        for used, script in commands:
            found = _carried_path(files, script) if used == launcher else None
            if found:
                if launcher != "torchrun":
                    notes.append(f"the README runs {found} with {launcher}: Caddie launches it with torchrun "
                                 f"--nproc_per_node={RULES_GPU_COUNT}, as the rules' hardware")
                return found
    if scripts.ENTRYPOINT in files:
        return scripts.ENTRYPOINT
    python = [name for name in files if name.endswith(".py")]
    trainers = [name for name in python if Path(name).name.startswith("train")]
    for candidates in (trainers, python):
        if len(candidates) == 1:
            notes.append(f"no command names a carried script: {candidates[0]} is the only "
                         f"{'trainer-like ' if candidates is trainers else ''}Python file")
            return candidates[0]
    listed = ", ".join(sorted(python)[:8]) or "no Python file"
    raise SourceError(f"source: cannot tell which script runs ({listed}): no README command launches a "
                      f"carried script and there is no {scripts.ENTRYPOINT}")


def _carried_path(files: dict[str, bytes], script: str) -> str | None:
    """The carried file a command's script path names: the same path, or the path's end
    (`records/.../train_gpt.py` run from the repository's root), or the same file name."""
    script = script.removeprefix("./")
    if script in files:
        return script
    ends = [name for name in files if script.endswith("/" + name)]
    named = [name for name in files if Path(name).name == Path(script).name]
    for found in (ends, named):
        if len(found) == 1:
            return found[0]
    return None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace") if records._plain_file(path) else ""  # noqa: SLF001
    except OSError:
        return ""


def claim(log: records.SeedLog) -> dict[str, Any]:
    parsed = log.parsed
    return {"seed": log.seed, "file": log.file, "val_bpb": log.val_bpb, "val_loss": log.val_loss,
            "bytes_total": parsed.get("bytes_total"), "val_tokens": parsed.get("val_tokens"),
            "train_time_s": _seconds(parsed.get("train_time_ms")),
            "eval_time_s": _seconds(parsed.get("eval_time_ms"))}


def _seconds(ms: float | None) -> float | None:
    return None if ms is None else ms / 1000.0


def plan_record(session: Session, experiment_id: int) -> Plan:
    """The plan of an imported record: its folder when still on disk, else its stored code and
    runs (env then comes from the stored logs)."""
    record = experiments.get_experiment(session, experiment_id)
    if record.provider != records.IMPORT_PROVIDER:
        raise SourceError(f"experiment {experiment_id} is not an imported record")
    source = record.source or {}
    folder = Path(str(source.get("path", "")))
    if source.get("path") and folder.is_dir():
        plan = plan_folder(folder, {"kind": "record", "experiment_id": experiment_id})
    else:
        plan = _plan_from_rows(session, record)
    plan.reproduces_id = experiment_id
    return plan


def _plan_from_rows(session: Session, record: Experiment) -> Plan:
    assert record.id is not None
    files = {row.name: bytes(row.content) for row in scripts.list_files(session, record.id)}
    runs = [run for run in experiments.list_runs(session, record.id) if run.val_bpb is not None]
    logs = [records._log_bytes(session, run).decode(errors="replace") for run in runs]  # noqa: SLF001
    entry = entry_point(files, "", [])
    counted = counted_paths(files, entry)
    code = _texts(files, counted)
    documented = documented_env("", logs, code)
    variant = data_variant(documented.env, logs, code, "")
    claims: list[dict[str, Any]] = [{"seed": run.seed, "file": "", "val_bpb": run.val_bpb, "val_loss": run.val_loss,
               "bytes_total": run.bytes_total, "val_tokens": run.val_tokens,
               "train_time_s": run.train_time_s, "eval_time_s": run.eval_time_s} for run in runs]
    notes = ["the record's folder is no longer on disk: its stored code and logs are used", *documented.notes]
    return Plan(name=f"re-run: {record.name}"[:200], origin={"kind": "record", "experiment_id": record.id,
                "key": (record.source or {}).get("key")}, files=files,
                env={**documented.env, **data_env(variant, documented.env)}, seed_env={},
                seeds=list(dict.fromkeys(c["seed"] for c in claims)) or list(record.seeds), claims=claims, data=variant,
                env_from=documented.source, notes=notes, entrypoint=entry, counted=counted)


# --- creating the re-run ------------------------------------------------------------------------


class Overrides(BaseModel):
    """What a participant may change in a plan before launch."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    env: dict[str, str] | None = None
    seed_env: dict[str, dict[str, str]] | None = None
    seeds: list[int] | None = Field(default=None, min_length=1, max_length=experiments.MAX_SEEDS)
    fresh_seeds: int | None = Field(default=None, ge=1, le=experiments.MAX_SEEDS)
    provider: Literal["local", "ssh", "runpod"] = "runpod"
    budget_usd: float | None = Field(default=None, ge=0, le=1_000_000)
    tolerance_nats: float = Field(default=0.005, ge=0, le=1)
    alpha: float = Field(default=0.01, gt=0, le=0.5)


def apply(plan: Plan, overrides: Overrides) -> Plan:
    """The plan with the participant's edits; seeds: theirs, N fresh ones, or the claimed."""
    if overrides.env is not None:
        plan.env = dict(overrides.env)
    if overrides.seed_env is not None:
        plan.seed_env = {str(k): dict(v) for k, v in overrides.seed_env.items()}
    if overrides.seeds is not None:
        plan.seeds = list(overrides.seeds)
    elif overrides.fresh_seeds:
        plan.seeds = fresh_seeds(overrides.fresh_seeds, set(plan.seeds))
    if overrides.name:
        plan.name = overrides.name
    return plan


def fresh_seeds(n: int, taken: set[int]) -> list[int]:
    chooser = random.SystemRandom()
    seeds: list[int] = []
    while len(seeds) < n:
        seed = chooser.randrange(1, 100_000)
        if seed not in taken and seed not in seeds:
            seeds.append(seed)
    return seeds


def create_rerun(session: Session, plan: Plan, overrides: Overrides, *, owner: str = "") -> Experiment:
    """The linked script experiment, its runs queued and woken after one commit."""
    files = scripts.check_carried(plan.files)
    if plan.entrypoint not in files:
        raise ValueError(f"files: the entry point {plan.entrypoint} is not among the files")
    spec = experiments.ExperimentCreate.model_validate(dict(
        name=plan.name, author=owner[:100], kind="script", env=plan.env,
        seeds=plan.seeds, provider=overrides.provider, budget_usd=overrides.budget_usd,
        gpu_type=RULES_GPU_TYPE if overrides.provider == "runpod" else None,
        gpu_count=RULES_GPU_COUNT if overrides.provider == "runpod" else None), context={"files_checked": True})
    seed_env = {seed: scripts.check_env(env) for seed, env in plan.seed_env.items()
                if seed in {str(s) for s in spec.seeds}}
    experiment = Experiment(**spec.model_dump(exclude={"files"}), owner=owner,
                            reproduces_id=plan.reproduces_id, seed_env=seed_env,
                            source={"reproduce": {
                                "origin": plan.origin, "claims": plan.claims, "data": plan.data,
                                "env_from": plan.env_from, "notes": plan.notes, "entrypoint": plan.entrypoint,
                                "counted": [name for name in plan.counted if name in files],
                                "files": [file_facts(n, d, n in plan.counted) for n, d in sorted(files.items())],
                                "tolerance_nats": overrides.tolerance_nats, "alpha": overrides.alpha}})
    session.add(experiment)
    session.flush()
    assert experiment.id is not None
    scripts.store_files(session, experiment.id, files)
    runs = [Run(experiment_id=experiment.id, seed=seed) for seed in spec.seeds]
    policies.queue_runs(session, runs)
    session.commit()
    for run in runs:
        experiments.wake(run.id)
    session.refresh(experiment)
    return experiment
