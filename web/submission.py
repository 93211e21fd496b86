"""The submit page's form: the inputs it shows (one per trainer field, from the schema),
and turning a posted form into an `ExperimentCreate` or into messages next to fields.

Values are converted only as far as the field's type says (an int field's "12" becomes 12);
anything that does not convert is passed on as typed, so the server's own validation
(`server.presets`) writes the message the user sees, the same one the API would give.
"""

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from server import presets
from server.experiments import ExperimentCreate

PROVIDERS = ("local", "ssh", "runpod")
DEFAULT_SEEDS = "1337, 42, 2025"
CONFIG_PREFIX = "config."
_PROBLEM = re.compile(r"^config\.(\w+): (.*)$")


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


def touches_config(submission: Submission) -> bool:
    """Whether the user overrode a field or one has a problem (the overrides start open)."""
    return any(key.startswith(CONFIG_PREFIX) and value.strip()
               for key, value in submission.values.items()) or any(
        key == "config" or key.startswith(CONFIG_PREFIX) for key in submission.errors)


def read_form(form: dict[str, str]) -> tuple[ExperimentCreate | None, Submission]:
    """The experiment the form asks for, or None and the problems, each under its field."""
    submission = Submission(values=dict(form))
    data: dict[str, Any] = {
        "name": form.get("name", ""), "author": form.get("author", ""),
        "preset": form.get("preset", ""), "provider": form.get("provider", ""),
        "config": _overrides(form),
    }
    seeds = _seeds(form.get("seeds", ""))
    if isinstance(seeds, str):
        submission.errors["seeds"] = seeds
        seeds = [0]  # a stand-in, so the other fields are still checked
    data["seeds"] = seeds
    try:
        spec = ExperimentCreate(**data)
    except ValidationError as exc:
        for error in exc.errors():
            _add_problem(submission, error)
        return None, submission
    return (None, submission) if submission.errors else (spec, submission)


def _overrides(form: dict[str, str]) -> dict[str, Any]:
    kinds = {entry.name: entry.kind for entry in config_inputs()}
    overrides = {}
    for key, raw in form.items():
        name = key.removeprefix(CONFIG_PREFIX)
        if key.startswith(CONFIG_PREFIX) and raw.strip() != "" and name in kinds:
            overrides[name] = _typed(kinds[name], raw.strip())
    return overrides


def _typed(kind: str, raw: str) -> Any:
    converters = {"int": int, "float": float, "bool": {"true": True, "false": False}.__getitem__,
                  "str": str}
    try:
        return converters[kind](raw)
    except (KeyError, ValueError):
        return raw


def _seeds(raw: str) -> list[int] | str:
    """Seeds separated by commas or blanks; a message naming the bad one otherwise."""
    parts = [part for part in re.split(r"[\s,]+", raw.strip()) if part]
    if not parts:
        return "seeds: give at least one seed, e.g. 1337, 42, 2025"
    for part in parts:
        if not part.isascii() or not part.isdigit():
            return f"seeds: {part!r} is not a whole number"
    return [int(part) for part in parts]


def _add_problem(submission: Submission, error: dict[str, Any]) -> None:
    loc = [str(part) for part in error["loc"]]
    message = str(error["msg"]).removeprefix("Value error, ")
    if loc and loc[0] == "config":
        for problem in message.split("; "):
            match = _PROBLEM.match(problem)
            target = CONFIG_PREFIX + match.group(1) if match else "config"
            _put(submission, target, match.group(2) if match else problem)
        return
    where = loc[0] if loc else "form"
    prefix = f"{where}: "
    text = message.removeprefix(prefix)
    if len(loc) > 1:
        text = f"seed {int(loc[1]) + 1}: {text}" if where == "seeds" else text
    _put(submission, where, text)


def _put(submission: Submission, target: str, message: str) -> None:
    known = submission.errors.get(target)
    submission.errors[target] = f"{known}; {message}" if known else message
