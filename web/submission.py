"""The submit page's form: the inputs it shows (one per trainer field, from the schema),
and turning a posted form into an `ExperimentCreate` or into messages next to fields.

Values are converted only as far as the field's type says (an int field's "12" becomes 12);
anything that does not convert is passed on as typed, so the server's own validation
(`server.presets`) writes the message the user sees, the same one the API would give.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from server import costs, presets, scripts
from server.config import get_settings
from server.costs import Estimate
from server.models import ExperimentCreate

PROVIDERS = ("local", "ssh", "runpod")
DEFAULT_SEEDS = "1337, 42, 2025"
CONFIG_PREFIX = "config."
FILE_PREFIX = "file."  # upload inputs are named file.<the file's name in the experiment>
UPLOADS = (scripts.ENTRYPOINT, scripts.REQUIREMENTS)
# Optional spec fields typed as plain inputs; blank leaves the API's default.
TYPED_FIELDS = {"max_retries": "int", "alpha": "float", "max_seeds": "int", "priority": "int",
                "budget_usd": "float", "gpu_type": "str", "gpu_count": "int", "systems_only_of": "int"}
_PROBLEM = re.compile(r"^config\.(\w+): (.*)$")
_FIELD_PREFIX = re.compile(r"^(\w+)(?:\.([^:]+))?: (.*)$", re.DOTALL)


@dataclass(frozen=True)
class Input:
    name: str  # schema field name; the form field is config.<name>
    kind: str  # int, float, bool, str
    help: str
    default: Any  # the schema's default, shown as the placeholder
    choices: list[Any] | None
    minimum: Any = None
    maximum: Any = None


@dataclass
class Submission:
    """What the user typed (kept to re-show the form) and the problems found, by form field."""

    values: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def config_inputs() -> list[Input]:
    """One input per overridable trainer field, in the schema's order."""
    fields = presets.load_schema()["fields"]
    return [Input(name, spec["type"], spec.get("help", ""), spec["default"], spec.get("choices"),
                  spec.get("min"), spec.get("max"))
            for name, spec in fields.items() if name not in presets.RESERVED_FIELDS]


def estimate(values: dict[str, str]) -> Estimate | None:
    """The cost estimate of what the form holds, or None while a field it needs is invalid
    (the page's script asks /api/estimate the same question as the fields change)."""
    seeds = parse_seeds(values.get("seeds", ""))
    preset = values.get("preset", "")
    provider = values.get("provider", "local")
    gpus = values.get("gpu_count", "").strip()
    wallclock = values.get(CONFIG_PREFIX + "max_wallclock_seconds", "").strip()
    if isinstance(seeds, str) or preset not in presets.preset_names() or provider not in PROVIDERS:
        return None
    try:
        gpu_count = int(gpus) if gpus else None
        max_wallclock = float(wallclock) if wallclock else None
    except ValueError:
        return None
    if (gpu_count is not None and not 1 <= gpu_count <= 8) or (
            max_wallclock is not None and not 0 < max_wallclock <= 86_400):
        return None
    return costs.estimate_experiment(get_settings(), preset=preset, provider=provider,
                                     seeds=len(seeds), gpu_count=gpu_count,
                                     max_wallclock_seconds=max_wallclock)


def touches_config(submission: Submission) -> bool:
    """Whether the user overrode a field or one has a problem (the overrides start open)."""
    return any(key.startswith(CONFIG_PREFIX) and value.strip()
               for key, value in submission.values.items()) or any(
        key == "config" or key.startswith(CONFIG_PREFIX) for key in submission.errors)


def read_form(form: dict[str, str], uploads: dict[str, bytes] | None = None,
              ) -> tuple[ExperimentCreate | None, Submission]:
    """The experiment the form asks for, or None and the problems, each under its field.

    `uploads`: {form field: bytes} of the files chosen; an uploaded train_gpt.py makes a
    script experiment (kind "script", its files and env) instead of a preset's."""
    submission = Submission(values=dict(form))
    data: dict[str, Any] = {
        "name": form.get("name", ""), "author": form.get("author", ""),
        "preset": form.get("preset", ""), "provider": form.get("provider", ""),
        "config": _overrides(form), "failure_policy": form.get("failure_policy", "none"),
        "share_pods": form.get("share_pods", "") in ("on", "true", "1"),
        **_typed_fields(form),
    }
    seeds = parse_seeds(form.get("seeds", ""))
    if isinstance(seeds, str):
        submission.errors["seeds"] = seeds
        seeds = [0]  # a stand-in, so the other fields are still checked
    data["seeds"] = seeds
    files = _files(uploads or {}, submission)
    script = bool(files or form.get("env", "").strip())
    if script:
        data |= {"kind": "script", "files": files, "env": _env(form.get("env", ""), submission)}
    data["variants"] = _variants(form.get("variants", ""), submission, script=script)
    try:
        spec = ExperimentCreate(**data)
    except ValidationError as exc:
        for error in exc.errors():
            _add_problem(submission, error)
        return None, submission
    return (None, submission) if submission.errors else (spec, submission)


def _typed_fields(form: dict[str, str]) -> dict[str, Any]:
    return {name: _typed(kind, form[name].strip()) for name, kind in TYPED_FIELDS.items()
            if form.get(name, "").strip()}


def _files(uploads: dict[str, bytes], submission: Submission) -> dict[str, str]:
    """{file name: text} of the uploads; a file too big or not UTF-8 text is a problem under
    it, and an empty stand-in so the other fields are still checked."""
    files = {}
    for name in UPLOADS:
        data = uploads.get(FILE_PREFIX + name)
        if not data:
            continue
        files[name] = ""
        if len(data) > scripts.MAX_FILE_BYTES:
            _put(submission, FILE_PREFIX + name, f"more than {scripts.MAX_FILE_BYTES:,} bytes, "
                 "the limit")
            continue
        try:
            files[name] = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            _put(submission, FILE_PREFIX + name, f"not UTF-8 text (byte {exc.start})")
    return files


def _env(text: str, submission: Submission) -> dict[str, str]:
    """NAME=value lines (blank lines and # comments skipped); problems go under `env`."""
    env: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, equals, value = line.partition("=")
        if not equals:
            _put(submission, "env", f"line {number}: NAME=value expected")
        elif name.strip() in env:
            _put(submission, "env", f"line {number}: {name.strip()} is set twice")
        else:
            env[name.strip()] = value
    return env


def _variants(text: str, submission: Submission, *, script: bool) -> list[dict[str, Any]]:
    """Ablation arms, one a line: `name: field=value, field=value` (a trainer field's value
    typed as the schema says), or for a script `name: NAME=value, NAME=value` (its env).
    Problems go under `variants`, naming the line."""
    kinds = {entry.name: entry.kind for entry in config_inputs()}
    variants = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, colon, rest = line.partition(":")
        changes: dict[str, Any] = {}
        for part in (part.strip() for part in rest.split(",") if part.strip()):
            key, equals, value = part.partition("=")
            if not equals:
                _put(submission, "variants", f"line {number}: {part!r} is not name=value")
                continue
            key, value = key.strip(), value.strip()
            changes[key] = value if script else _typed(kinds.get(key, "str"), value)
        if not colon or not name.strip():
            _put(submission, "variants", f"line {number}: name: field=value, ... expected")
            continue
        variants.append({"name": name.strip(), ("env" if script else "config"): changes})
    return variants


def _overrides(form: dict[str, str]) -> dict[str, Any]:
    kinds = {entry.name: entry.kind for entry in config_inputs()}
    overrides = {}
    for key, raw in form.items():
        name = key.removeprefix(CONFIG_PREFIX)
        if key.startswith(CONFIG_PREFIX) and raw.strip() != "" and name in kinds:
            overrides[name] = _typed(kinds[name], raw.strip())
    return overrides


def _typed(kind: str, raw: str) -> Any:
    converters: dict[str, Callable[[str], Any]] = {
        "int": int, "float": float, "bool": {"true": True, "false": False}.__getitem__, "str": str}
    try:
        return converters[kind](raw)
    except (KeyError, ValueError):
        return raw


def parse_seeds(raw: str) -> list[int] | str:
    """Seeds separated by commas or blanks; a message naming the bad one otherwise."""
    parts = [part for part in re.split(r"[\s,]+", raw.strip()) if part]
    if not parts:
        return "seeds: give at least one seed, e.g. 1337, 42, 2025"
    for part in parts:
        if not part.isascii() or not part.isdigit():
            return f"seeds: {part!r} is not a whole number"
    return [int(part) for part in parts]


def _add_problem(submission: Submission, error: ErrorDetails) -> None:
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc and loc[0] == "config":
        for problem in message.split("; "):
            match = _PROBLEM.match(problem)
            target = CONFIG_PREFIX + match.group(1) if match else "config"
            _put(submission, target, match.group(2) if match else problem)
        return
    if loc and loc[0] == "variants" and len(loc) > 1 and loc[1].isdigit():
        _put(submission, "variants", f"variant {int(loc[1]) + 1}: {message}")
        return
    if not loc or loc[0] in ("files", "env"):
        loc, message = _located(loc, message)
    where = loc[0] if loc else "form"
    prefix = f"{where}: "
    text = message.removeprefix(prefix)
    if len(loc) > 1:
        text = f"seed {int(loc[1]) + 1}: {text}" if where == "seeds" else text
    _put(submission, where, text)


def _located(loc: list[str], message: str) -> tuple[list[str], str]:
    """The form field of a whole-model or files/env problem, from the message's own prefix
    (`files.train_gpt.py: ...`, `env.NAME: ...`, `max_seeds: ...`)."""
    match = _FIELD_PREFIX.match(message)
    if not match:
        return loc, message
    field, part, text = match.groups()
    if field == "files":
        name = part.strip("'") if part else scripts.ENTRYPOINT
        return [FILE_PREFIX + (name if name in UPLOADS else scripts.ENTRYPOINT)], text
    if field == "env" and part:
        return ["env"], f"{part.strip(chr(39))}: {text}"
    if field == "variants" and part:
        return ["variants"], f"{part}: {text}"
    return [field], text


def _put(submission: Submission, target: str, message: str) -> None:
    known = submission.errors.get(target)
    submission.errors[target] = f"{known}; {message}" if known else message
