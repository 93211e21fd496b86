"""What differs between the two kinds of run, chosen once per run by `run_kind`.

A `TrainerRun` runs Caddie's own trainer with the run's config (run.json); it writes
results.json and names its artifact there. A `ScriptRun` runs a participant's own
train_gpt.py under torchrun (see worker.script); it is scored from its log, and its artifact
is the file it wrote that looks like one. Each kind owns the files it uploads and the code it
counts, its launch.sh and the user it runs as, its deadline, how its artifact is collected and
how the collected files are verified; what both verify alike (the code measured against its
manifest, the challenge's rules, the bytes and hashes) is written once in `RunKind`.

The director (worker.director) keeps the lifecycle and asks the run's kind at each step.
"""

import hashlib
import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

import trainer.contract as contract
from server.communitylog import parse_log
from server.config import Settings
from server.eligibility import Measurements, run_reasons
from server.models import Experiment, Pod, Run, as_utc, utcnow
from server.scripts import file_names, list_files
from server.workerfacts import WorkerFacts, with_worker
from worker import datasets, launcher, script
from worker.bundle import Bundle, run_config, run_deadline_s
from worker.errors import StepFailed
from worker.providers import Provider
from worker.remote import Remote

LAST_LINES = 40  # of the log, kept with a failed run
MANIFEST = "code_manifest.json"  # {path under code/: {"bytes", "sha256"}} of the uploaded bundle
_CODE_PATH = re.compile(r"^(?:[A-Za-z0-9_]+/)?[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Verdict:
    """What verifying found: the run row's fields, and why it failed when it did."""
    fields: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None


class RunKind:
    """The shared part; subclasses fill in the methods that raise NotImplementedError."""

    def __init__(self, experiment: Experiment, *, settings: Settings, engine: Engine, bundle: Bundle) -> None:
        self.experiment = experiment
        self.settings = settings
        self.engine = engine
        self.bundle = bundle

    # --- what each kind says for itself -------------------------------------------------

    def code(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        """(files uploaded under code/, the files counted as the run's code)."""
        raise NotImplementedError

    def deadline_s(self, run: Run) -> float:
        """Seconds the run may live on the pod, grace included."""
        raise NotImplementedError

    def data_path(self, run: Run) -> str:
        """The dataset the run reads, as the run sees it (data/… in its working folder)."""
        raise NotImplementedError

    def work_folder(self, run_dir: str) -> str:
        """The folder the run runs in, where its `data` link goes."""
        raise NotImplementedError

    def ran(self, run: Run) -> dict[str, Any]:
        """Facts for results["worker"] of what the run ran (the ablation's same-settings check)."""
        raise NotImplementedError

    def launch_user(self, provider: Provider) -> str | None:
        """The account launch.sh runs as; None: the pod's own user."""
        raise NotImplementedError

    def _launch(self, remote: Remote, run: Run, run_dir: str, provider: Provider, files: dict[str, bytes],
                common: dict[str, Any]) -> str:
        """The text of launch.sh, given launcher.launch_script's arguments common to both kinds."""
        raise NotImplementedError

    def _collect_artifact(self, remote: Remote, run: Run, local: Path) -> dict[str, Any]:
        """Download the artifact into `local`; returns facts for results["worker"]."""
        raise NotImplementedError

    def verify(self, run: Run, local: Path) -> Verdict:
        """Measure the collected files in `local` and apply the rules."""
        raise NotImplementedError

    # --- alike for both -----------------------------------------------------------------

    def upload(self, remote: Remote, run: Run, run_dir: str, provider: Provider, pod: Pod) -> None:
        """The code, its manifest, the watchdog and launch.sh into the run's folder on the pod."""
        files, counted = self.code()
        manifest = {rel: {"bytes": len(data), "sha256": sha256(data)} for rel, data in counted.items()}
        for rel, data in files.items():
            remote.put_bytes(data, f"{run_dir}/code/{rel}")
        remote.put_bytes(json.dumps(manifest, indent=1, sort_keys=True).encode(), f"{run_dir}/{MANIFEST}")
        until_deadline = (as_utc(pod.deadline_at) - utcnow()).total_seconds() if pod.deadline_at else None
        watchdog = provider.watchdog_script(pod, until_deadline) if until_deadline is not None else None
        if watchdog is not None:
            remote.put_bytes(watchdog.encode(), f"{run_dir}/{launcher.WATCHDOG_SCRIPT}")
        common = {"run_dir": run_dir, "deadline_s": self.deadline_s(run), "cpu_threads": provider.cpu_threads,
                  "watchdog": watchdog is not None}
        launch = self._launch(remote, run, run_dir, provider, files, common)
        remote.put_bytes(launch.encode(), f"{run_dir}/{launcher.LAUNCH_SCRIPT}")

    def collect(self, remote: Remote, run: Run, local: Path) -> dict[str, Any]:
        """Download what verifying reads into `local`; returns facts for results["worker"]."""
        assert run.remote_dir is not None
        for name in (contract.TRAIN_LOG, contract.RESULTS, contract.METRICS, MANIFEST):
            get_if_there(remote, f"{run.remote_dir}/{name}", local / name)
        facts = self._collect_artifact(remote, run, local)
        for rel in manifest(local):
            (local / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
            get_if_there(remote, f"{run.remote_dir}/code/{rel}", local / "code" / rel)
        return facts

    def _verdict(self, run: Run, *, code: tuple[int, str], artifact: bytes, numbers: dict[str, Any],
                 step_s: float | None, results: dict[str, Any], rules: list[str] | None = None,
                 checks: list[str] | None = None) -> Verdict:
        """The succeeded run's fields: the challenge's rules on what was measured, then the
        kind's own `rules`, the uploaded code's size, and the kind's integrity `checks`."""
        code_bytes, code_sha256 = code
        measured = Measurements(
            bytes_total=code_bytes + len(artifact), train_time_s=numbers["train_time_s"],
            eval_time_s=numbers["eval_time_s"], observed_wall_s=_wall_s(run), val_tokens=numbers["val_tokens"],
            gpu_name=run.gpu_name, gpu_count=run.gpu_count, val_bpb=numbers["val_bpb"], train_step_s=step_s)
        reasons = run_reasons(measured, clock_tolerance_s=self.settings.clock_tolerance_s) + (rules or [])
        if code_bytes != run.code_bytes:
            reasons.append(f"code on the pod is {code_bytes:,} bytes, {run.code_bytes:,} were uploaded")
        reasons += checks or []
        worker = with_worker(run.results, observed_wall_s=measured.observed_wall_s)["worker"]
        return Verdict(fields={
            "eligible": not reasons, "reasons": reasons, "results": {**results, "worker": worker},
            "code_bytes": code_bytes, "code_sha256": code_sha256, "model_bytes": len(artifact),
            "bytes_total": measured.bytes_total, "artifact_sha256": sha256(artifact), **numbers})


class TrainerRun(RunKind):
    """Caddie's trainer: the bundle is the code, run.json its config, results.json its answer."""

    def code(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        files = self.bundle.files()
        return files, files

    def deadline_s(self, run: Run) -> float:
        try:
            return run_deadline_s(run_config(self.experiment, run), self.bundle.schema(),
                                  grace_s=self.settings.run_grace_s)
        except ValueError as exc:
            raise StepFailed(f"config: {exc}") from None

    def data_path(self, run: Run) -> str:
        config, schema = run_config(self.experiment, run), self.bundle.schema()
        preset = schema.get("presets", {}).get(self.experiment.preset, {})
        default = schema.get("fields", {}).get("data_path", {}).get("default")
        return str(config.get("data_path") or preset.get("data_path") or default or datasets.DEFAULT_DATA_PATH)

    def work_folder(self, run_dir: str) -> str:
        return run_dir

    def ran(self, run: Run) -> dict[str, Any]:
        return {}  # results.json carries the resolved config itself

    def launch_user(self, provider: Provider) -> str | None:
        return None

    def _launch(self, remote: Remote, run: Run, run_dir: str, provider: Provider, files: dict[str, bytes],
                common: dict[str, Any]) -> str:
        config_path = f"{run_dir}/{contract.CONFIG_FILE}"
        remote.put_bytes(json.dumps(run_config(self.experiment, run), indent=1).encode(), config_path)
        return launcher.launch_script(argv=self.bundle.argv(provider.python, config_path=config_path, run_dir=run_dir),
                                      pythonpath=f"{run_dir}/code", **common)

    def _collect_artifact(self, remote: Remote, run: Run, local: Path) -> dict[str, Any]:
        artifact = _artifact_name(read_json(local / contract.RESULTS))
        get_if_there(remote, f"{run.remote_dir}/{artifact}", local / artifact)
        return {}

    def verify(self, run: Run, local: Path) -> Verdict:
        results = read_json(local / contract.RESULTS)
        if not isinstance(results, dict):
            raise StepFailed(f"{contract.RESULTS} is missing or not a JSON object")
        path = local / _artifact_name(results)
        if not path.is_file():
            raise StepFailed(f"the run produced no artifact ({path.name} is missing)")
        artifact = path.read_bytes()
        code = measure_code(local)
        numbers = _result_numbers(results)
        checks = []
        if results.get("code_sha256") not in (None, code[1]):
            checks.append("the code the trainer counted differs from the code that was uploaded")
        if results.get("artifact_sha256") not in (None, sha256(artifact)):
            checks.append("the artifact's sha256 differs from the one the trainer reported")
        return self._verdict(run, code=code, artifact=artifact, numbers=numbers, step_s=_step_s(numbers),
                             results=results, checks=checks)


class ScriptRun(RunKind):
    """A participant's train_gpt.py: its files are the code, its log the answer."""

    def code(self) -> tuple[dict[str, bytes], dict[str, bytes]]:
        with Session(self.engine) as session:
            rows = list_files(session, self.experiment.id)
        try:
            found = script.script_files(rows, self.experiment)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None
        return found.uploaded, found.counted

    def deadline_s(self, run: Run) -> float:
        with Session(self.engine) as session:
            names = file_names(session, self.experiment.id)
        try:
            return script.deadline_s(self.experiment, grace_s=self.settings.run_grace_s,
                                     requirements=script.REQUIREMENTS in names, arm=run.variant)
        except ValueError as exc:
            raise StepFailed(exc.args[0]) from None

    def data_path(self, run: Run) -> str:
        return str(script.arm_env(self.experiment, run.variant).get("DATA_PATH") or datasets.DEFAULT_DATA_PATH)

    def work_folder(self, run_dir: str) -> str:
        return f"{run_dir}/code"

    def ran(self, run: Run) -> dict[str, Any]:
        return {"env_sha256": script.env_digest(self.experiment, run.variant)}

    def launch_user(self, provider: Provider) -> str | None:
        return provider.script_user()

    def _launch(self, remote: Remote, run: Run, run_dir: str, provider: Provider, files: dict[str, bytes],
                common: dict[str, Any]) -> str:
        """torchrun in code/, with stdout+stderr as train.log."""
        setup = ([provider.python, "-m", "pip", "install", "-r", script.REQUIREMENTS]
                 if script.REQUIREMENTS in files else None)
        env = script.script_env(self.experiment, run)
        try:
            return launcher.launch_script(
                argv=script.torchrun_argv(provider.python, run.gpu_count, script.entrypoint(self.experiment)),
                cwd=f"{run_dir}/code", env=env,
                output=contract.TRAIN_LOG, setup=setup, setup_deadline_s=script.SETUP_DEADLINE_S, **common)
        except ValueError as exc:
            raise StepFailed(str(exc)) from None

    def _collect_artifact(self, remote: Remote, run: Run, local: Path) -> dict[str, Any]:
        """The newest file that looks like an artifact (see script.pick_artifact); its name is kept."""
        assert run.remote_dir is not None
        listing = remote.run(f"find {shlex.quote(run.remote_dir + '/code')} -maxdepth 1 -type f "
                             f"-name '{script.ARTIFACT_PREFIX}*' -printf '%T@ %s %f\\n'", timeout_s=60)
        name = script.pick_artifact(listing.stdout, set(manifest(local)))
        if name is not None:
            get_if_there(remote, f"{run.remote_dir}/code/{name}", local / name)
        return {"artifact_file": name}

    def verify(self, run: Run, local: Path) -> Verdict:
        """The score from the log; the bytes measured by the worker."""
        log_bytes = (local / contract.TRAIN_LOG).read_bytes() if (local / contract.TRAIN_LOG).is_file() else b""
        tail = "\n".join(log_bytes.decode("utf-8", errors="replace").splitlines()[-LAST_LINES:])
        parsed = parse_log(log_bytes)
        if parsed["score"] is None:
            return Verdict(failure="the script exited 0 but printed no final metric "
                                   "(e.g. final_int8_zlib_roundtrip val_loss:X val_bpb:Y)",
                           fields={"last_log_lines": tail})
        name = WorkerFacts.from_results(run.results).artifact_file
        if not name or not (local / name).is_file():
            return Verdict(failure=f"the script wrote no {script.ARTIFACT_PREFIX}*.pt* artifact in its folder",
                           fields={"last_log_lines": tail})
        artifact = (local / name).read_bytes()
        code = measure_code(local)
        numbers, log_reasons = script.score(parsed, code_bytes=code[0], artifact_bytes=len(artifact))
        results = {"log": parsed, "artifact_file": name, "code_files": sorted(manifest(local)),
                   "code_bytes": code[0], "model_bytes": len(artifact), "bytes_total": code[0] + len(artifact),
                   **numbers}
        step_s = parsed["step_ms"] / 1000 if parsed.get("step_ms") else _step_s(numbers)
        verdict = self._verdict(run, code=code, artifact=artifact, numbers=numbers, step_s=step_s,
                                results=results, rules=log_reasons)
        (local / contract.RESULTS).write_text(json.dumps(verdict.fields["results"], indent=1))
        return verdict


_KINDS: dict[str, type[RunKind]] = {"trainer": TrainerRun, "script": ScriptRun}


def run_kind(experiment: Experiment, *, settings: Settings, engine: Engine, bundle: Bundle) -> RunKind:
    """The kind of the experiment's runs (Experiment.kind; "trainer" unless it says "script")."""
    return _KINDS.get(experiment.kind, TrainerRun)(experiment, settings=settings, engine=engine, bundle=bundle)


def measure_code(local: Path) -> tuple[int, str]:
    """(bytes, sha256) of the code collected back from the pod, file by file as its manifest lists."""
    files: dict[str, bytes] = {}
    for rel in manifest(local):
        path = local / "code" / rel
        if not path.is_file():
            raise StepFailed(f"uploaded code file {rel} could not be collected from the pod")
        files[rel] = path.read_bytes()
    if not files:
        raise StepFailed(f"{MANIFEST} is missing: the uploaded code cannot be counted")
    return contract.code_digest(files)


def manifest(local: Path) -> dict[str, Any]:
    """The collected manifest's entries whose paths are safe to write under `local`/code."""
    found = read_json(local / MANIFEST)
    if not isinstance(found, dict):
        return {}
    return {rel: v for rel, v in found.items() if _CODE_PATH.match(rel) and ".." not in rel}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        raise StepFailed(f"{path.name} is corrupt: not valid JSON") from None


def get_if_there(remote: Remote, path: str, local: Path) -> None:
    if remote.exists(path):
        remote.get(path, str(local))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _artifact_name(results: Any) -> str:
    name = results.get("artifact_file") if isinstance(results, dict) else None
    if isinstance(name, str) and name and Path(name).name == name and name not in (".", ".."):
        return name
    return contract.ARTIFACT


def _result_numbers(results: dict[str, Any]) -> dict[str, Any]:
    """The numbers the run row keeps, checked: a wrong type means results.json is corrupt."""
    kinds = {"val_loss": float, "val_bpb": float, "pre_quant_val_bpb": float, "steps": int,
             "train_time_s": float, "eval_time_s": float, "val_tokens": int}
    numbers: dict[str, Any] = {}
    for key, kind in kinds.items():
        value = results.get(key)
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)
                               and math.isfinite(value) and (kind is float or float(value).is_integer()))
        if not ok:
            raise StepFailed(f"{contract.RESULTS} is corrupt: {key} = {value!r} is not a finite "
                             f"{'integer' if kind is int else 'number'}")
        numbers[key] = None if value is None else kind(value)
    return numbers


def _wall_s(run: Run) -> float | None:
    if run.started_at is None or run.exited_at is None:
        return None
    return (as_utc(run.exited_at) - as_utc(run.started_at)).total_seconds()


def _step_s(numbers: dict[str, Any]) -> float | None:
    """A training step's mean time (training time over steps), for the one-step time rule."""
    train_s, steps = numbers.get("train_time_s"), numbers.get("steps")
    return train_s / steps if train_s is not None and steps else None
