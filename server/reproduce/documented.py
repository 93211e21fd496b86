"""What a records folder documents for its re-run: the environment its README's command lines set
(per seed, `\\` continuations, `export` lines, `for SEED in` loops) or its logs echo, and the data
variant (tokenizer and dataset) it needs."""


import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from server import scripts

DEFAULT_TOKENIZER = "sp1024"
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
