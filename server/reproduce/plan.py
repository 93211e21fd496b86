"""The plan of a re-run (every carried file byte for byte, the launched script, the counted
code, env, seeds, data and claims), the overrides a user edits, and the linked script
experiment it creates."""


import hashlib
import random
import re
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
from server.reproduce.documented import data_env, data_variant, documented_env, readme_commands
from server.reproduce.sources import SourceError

RULES_GPU_TYPE = "NVIDIA H100 80GB HBM3"  # the rules' 8xH100 SXM, as RunPod names it
RULES_GPU_COUNT = 8
# Files of a records folder that are not the submission's code or input: its documentation,
# pictures, submission and logs (besides the train logs `records` reads).
NOT_CODE = frozenset({"README.md", records.SUBMISSION})
NOT_CARRIED_SUFFIXES = (".log", ".md", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".pdf")
# Source files that can be part of the code a run counts (Python, and C/C++/CUDA extensions).
SOURCE_SUFFIXES = (".py", ".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp")
_IMPORT = re.compile(r"^[ \t]*(?:from[ \t]+([A-Za-z_][\w.]*)[ \t]+import[ \t]+(\(?[\w ,\t]+\)?)"
                     r"|import[ \t]+([\w., \t]+))", re.MULTILINE)


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
    name = records.clean_text(record.submission.get("name")) or folder.name
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
                or (path.parent == folder and records.is_submission(path))):
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
    return "log" in rel.lower() or records.looks_like_train_log(parse_log(data))


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
        return path.read_text(encoding="utf-8", errors="replace") if records.plain_file(path) else ""
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
    logs = [records.run_log_bytes(session, run).decode(errors="replace") for run in runs]
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
