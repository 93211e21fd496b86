"""What a pod offers before a run goes on it: GPUs, free disk, Python, torch and CUDA, and
whether that is enough for the trainer (`unfit`)."""

import json
import re
import shlex
from typing import Any

import trainer.contract as contract
from worker.errors import StepFailed
from worker.providers import Provider
from worker.remote import Remote

# Run on the pod by the trainer's Python with the work folder as argv[1]; prints one JSON
# object. Importing torch for real also proves its native libraries load.
PREFLIGHT = """\
import json, os, shutil, sys
os.makedirs(sys.argv[1], exist_ok=True)
facts = {"python": sys.version.split()[0], "free_disk_bytes": shutil.disk_usage(sys.argv[1]).free}
try:
    import torch
    facts.update(torch=torch.__version__, cuda=torch.version.cuda)
except Exception as exc:
    facts.update(torch=None, cuda=None, torch_error=f"{type(exc).__name__}: {exc}"[:200])
print(json.dumps(facts))
"""


def preflight(remote: Remote, provider: Provider) -> dict[str, Any]:
    """{"gpus": [nvidia-smi names], "gpu_count", "python", "free_disk_bytes" of the work folder,
    "torch", "cuda"(, "torch_error")}."""
    gpus = remote.run("nvidia-smi --query-gpu=name --format=csv,noheader", timeout_s=60)
    facts = remote.run(f"{shlex.quote(provider.python)} -c {shlex.quote(PREFLIGHT)} "
                       f"{shlex.quote(provider.workdir)}", timeout_s=180)
    if not facts.ok:
        raise StepFailed(f"python {provider.python!r} does not run on the pod: "
                         f"{facts.stderr.strip()[-200:] or f'exit code {facts.exit_code}'}")
    try:
        found = json.loads(facts.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise StepFailed(f"the preflight check on the pod printed no facts: {facts.stdout.strip()[-200:]!r}") from None
    names = [line.strip() for line in gpus.stdout.splitlines() if line.strip()] if gpus.ok else []
    return {"gpus": names, "gpu_count": len(names), **found}


def unfit(preflight: dict[str, Any], provider: Provider, min_free_disk_gb: float) -> str | None:
    """Why the pod cannot run the trainer, or None."""
    if not preflight.get("torch"):
        return (f"the pod cannot run the trainer: {provider.python} has no torch "
                f"({preflight.get('torch_error') or 'not installed'})")
    version = re.match(r"(\d+)\.(\d+)", str(preflight["torch"]))
    if version and (int(version[1]), int(version[2])) < contract.MIN_TORCH:
        return (f"the pod cannot run the trainer: {provider.python} has torch {preflight['torch']}, the trainer "
                f"needs {contract.MIN_TORCH[0]}.{contract.MIN_TORCH[1]} or newer (CADDIE_RUNPOD_IMAGE picks the image)")
    free = preflight.get("free_disk_bytes")
    if isinstance(free, int) and free < min_free_disk_gb * 1e9:
        return (f"the pod cannot run the trainer: {free / 1e9:,.1f} GB free in {provider.workdir}, "
                f"below CADDIE_MIN_FREE_DISK_GB ({min_free_disk_gb:g} GB)")
    return None
