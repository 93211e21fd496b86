"""The `runpod` provider: pods rented from RunPod, reached over SSH.

A pod is created with GraphQL's `podFindAndDeployOnDemand` (settings.runpod_graphql_url), the one
create that takes RunPod's server-side deadline, `terminateAfter`: RunPod itself ends the pod then,
whatever became of Caddie. Where RunPod's GraphQL refuses that field (so far it is only in
unreleased branches of RunPod's SDK), the pod is created through REST v2's `POST /pods` without
it, the run's events and the worker's log say so, and the pod's watchdog and the reconciler are
its stops. REST API v2 (settings.runpod_api_url) reads, lists and deletes pods; a new pod goes
PROVISIONING → STARTING → RUNNING, and once RUNNING its `ssh.direct {host, port, username}` (else
`runtime.ports`' `22/tcp`) is the SSH endpoint. GraphQL also gives the account balance. `terminateAfter` cannot be moved
once set, so it is written down (data_dir/keys/<pod>.stop) for the director, which gives a shared
pod back rather than seat a seed that would outlive it (docs/orchestration.md, "RunPod API facts").

Each pod gets a fresh ed25519 key, sent as the `PUBLIC_KEY` env var (RunPod images write it to
`authorized_keys`); the private half stays on this worker's disk (data_dir/keys, mode 0600)
and is deleted when the pod is confirmed gone. The account API key is only ever sent to
RunPod's API, in the Authorization header; never into a pod, a log or a reason.

The pod's name is settings.pod_prefix + run id: a redelivered create lists the account's pods
first and adopts the one it made before instead of renting a second.
"""

import logging
import os
import re
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func
from sqlmodel import Session, col, select

from server import costs
from server.models import Experiment, Pod, Run, as_utc, utcnow
from server.states import FINAL_RUN_STATUSES, PodStatus
from trainer.contract import MIN_TORCH  # noqa: F401  (the oldest torch an image may carry; cli doctor reads it here)
from worker.errors import ConnectError, HostKeyMismatch, StepFailed
from worker.providers import ListedPod, Placement, Provider, RetryLater
from worker.remote import Remote
from worker.ssh import SSHRemote, SSHTarget

log = logging.getLogger(__name__)

# Pod statuses of REST v2 after which the pod will never run.
ENDED = ("EXITED", "ERROR", "TERMINATED")
# How RunPod words "no machine free for this request" (GraphQL and REST alike; the last four
# are the phrases RunPod's own SDK treats as capacity errors, runpod/apps/api.py).
_NO_CAPACITY = re.compile(r"no longer any instances|no (gpu )?capacity|not enough free|"
                          r"no instances? available|out of stock|insufficient capacity|"
                          r"no available machine|resources to deploy your pod", re.IGNORECASE)
# GraphQL errors that say the key is wrong, and those worth another try (HTTP errors are
# classified by status code instead).
_AUTH = re.compile(r"unauthori[sz]ed|unauthenticated|forbidden|invalid api key|permission denied", re.IGNORECASE)
_TRANSIENT = re.compile(r"try again|internal server error|something went wrong|timed? ?out", re.IGNORECASE)
BALANCE = "query { myself { clientBalance currentSpendPerHr } }"
NO_DEADLINE_NOTE = "RunPod's GraphQL refused terminateAfter"
# How a GraphQL server refuses an input field its schema lacks, said of terminateAfter.
_NO_TERMINATE_AFTER = re.compile(r"terminateAfter\b.*(not defined|unknown|does not exist|not a valid)|"
                                 r"(unknown|not defined).*\bterminateAfter", re.IGNORECASE)
# The input goes as a variable, so no value (an env var, say) is ever spliced into the query text.
CREATE = ("mutation rent($input: PodFindAndDeployOnDemandInput) "
          "{ podFindAndDeployOnDemand(input: $input) { id desiredStatus } }")
MAX_BACKOFF_S = 300.0


class NoCapacity(RetryLater):
    """RunPod has no machine for the request; `message` is RunPod's own words."""

    def __init__(self, reason: str, message: str, *, attempts: int, backoff_s: float) -> None:
        super().__init__(reason, attempts=attempts, backoff_s=backoff_s)
        self.message = message


class RunPodAPI:
    """Thin client of the REST v2 pod endpoints and the GraphQL create and balance."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.base = settings.runpod_api_url.rstrip("/")

    def deploy(self, pod_input: dict[str, Any]) -> dict[str, Any]:
        """GraphQL `podFindAndDeployOnDemand`: `{id, desiredStatus}` of the new pod."""
        data = self.graphql(CREATE, {"input": pod_input}, what="podFindAndDeployOnDemand")
        return data.get("podFindAndDeployOnDemand") or {}

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        """REST v2 `POST /pods` (`CreatePodRequest`): the new pod, `id` among its fields."""
        data = self._request("POST", "/pods", body=body)
        return data if isinstance(data, dict) else {}

    def get(self, pod_id: str) -> dict[str, Any] | None:
        """The pod, or None when RunPod no longer knows it."""
        return self._request("GET", f"/pods/{_safe_id(pod_id)}", missing_ok=True)

    def list(self) -> list[dict[str, Any]]:
        """Every pod of the account: v2 wraps them as `{"pods": [...]}` and takes no filter."""
        data = self._request("GET", "/pods")
        pods = data.get("pods") if isinstance(data, dict) else None
        if not isinstance(pods, list):
            raise self.later("RunPod API answered GET /pods without a list of pods")
        return [p for p in pods if isinstance(p, dict)]

    def delete(self, pod_id: str) -> None:
        self._request("DELETE", f"/pods/{_safe_id(pod_id)}", missing_ok=True)

    def graphql(self, query: str, variables: dict[str, Any], *, what: str = "graphql") -> dict[str, Any]:
        data = self._send("POST", self.settings.runpod_graphql_url, what,
                          body={"query": query, "variables": variables})
        # GraphQL reports errors with HTTP 200 and an `errors` array.
        errors = data.get("errors") if isinstance(data, dict) else None
        if errors:
            first = errors[0]
            self._graphql_error(str(first.get("message", first) if isinstance(first, dict) else first)[:300], what)
        return (data or {}).get("data") or {}

    def _graphql_error(self, message: str, what: str) -> None:
        message = self._scrub(message)
        self._check_capacity(message, what)
        if _AUTH.search(message):
            raise StepFailed(f"RunPod refused the API key for {what} ({message})")
        if _TRANSIENT.search(message):
            raise self.later(f"RunPod API failed {what}: {message}")
        raise StepFailed(f"RunPod API refused {what}: {message}")

    def _request(self, method: str, path: str, *, body: dict[str, Any] | None = None,
                 missing_ok: bool = False) -> Any:
        return self._send(method, self.base + path, f"{method} {path}", body=body, missing_ok=missing_ok)

    def _send(self, method: str, url: str, what: str, *, body: dict[str, Any] | None = None,
              missing_ok: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.key()}", "Accept": "application/json"}
        try:
            with httpx.Client(timeout=self.settings.runpod_request_timeout_s) as client:
                response = client.request(method, url, json=body, headers=headers)
        except httpx.TimeoutException:
            raise self.later(f"RunPod API did not answer {what} within "
                              f"{self.settings.runpod_request_timeout_s:g} s") from None
        except httpx.TransportError as exc:
            raise self.later(f"RunPod API unreachable for {what} ({type(exc).__name__})") from None
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            self._refused(response, what)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self.later(f"RunPod API answered {what} with something that is not JSON") from None

    def _refused(self, response: httpx.Response, what: str) -> None:
        message = self._scrub(_message(response))
        code = response.status_code
        self._check_capacity(message, what)
        if code == 429:  # Retry-After: the seconds RunPod asks us to wait
            wait = response.headers.get("retry-after", "")
            later = self.later(f"RunPod API limited the rate of {what}: HTTP 429: {message}")
            later.backoff_s = max(later.backoff_s, float(wait) if wait.isdigit() else 0.0)
            raise later
        if code >= 500:
            raise self.later(f"RunPod API failed {what}: HTTP {code}: {message}")
        if code in (401, 403):
            raise StepFailed(f"RunPod refused the API key for {what} (HTTP {code})")
        raise StepFailed(f"RunPod API refused {what}: HTTP {code}: {message}")

    def _check_capacity(self, message: str, what: str) -> None:
        """Raise NoCapacity when RunPod's words say no machine is free, whatever the status."""
        if _NO_CAPACITY.search(message):
            raise NoCapacity(f"RunPod has no capacity for {what}: {message}", message,
                             attempts=self.settings.runpod_create_attempts, backoff_s=self.settings.runpod_backoff_s)

    def later(self, reason: str) -> RetryLater:
        return RetryLater(reason, attempts=self.settings.runpod_create_attempts,
                          backoff_s=self.settings.runpod_backoff_s)

    def key(self) -> str:
        secret = self.settings.runpod_api_key
        if secret is not None and secret.get_secret_value().strip():
            return secret.get_secret_value().strip()
        path = self.settings.runpod_api_key_file
        if path is not None:
            try:
                text = Path(path).read_text().strip()
            except OSError as exc:
                raise StepFailed(f"RunPod API key file {path} cannot be read ({type(exc).__name__})") from None
            if text:
                return text
        raise StepFailed("the runpod provider has no API key: set CADDIE_RUNPOD_API_KEY "
                         "or CADDIE_RUNPOD_API_KEY_FILE")

    def _scrub(self, text: str) -> str:
        # An API that echoes the request back must not carry the key into a reason.
        try:
            return text.replace(self.key(), "[key]")
        except StepFailed:
            return text


class RunPodProvider(Provider):
    name = "runpod"
    rents = True

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.api = RunPodAPI(settings)

    @property
    def workdir(self) -> str:
        return self.settings.runpod_workdir

    @property
    def python(self) -> str:
        return self.settings.runpod_python

    @property
    def configured(self) -> bool:
        return self.settings.runpod_api_key is not None or self.settings.runpod_api_key_file is not None

    # --- renting ------------------------------------------------------------------------

    def place(self, session: Session, pod: Pod) -> Placement | None:
        if pod.external_id is None:
            return self._rent(session, pod)
        data = self.api.get(pod.external_id)
        if data is None:
            raise StepFailed(f"RunPod lost pod {pod.external_id} while it was starting")
        status = str(data.get("status", "")).upper()
        if status in ENDED:
            raise StepFailed(f"RunPod pod {pod.external_id} ended while starting (status {status})")
        endpoint = _ssh_endpoint(data) if status == "RUNNING" else None
        if endpoint is not None:
            host, port, username = endpoint
            placement = Placement(PodStatus.ready, host=host, port=port,
                                  username=username or self.settings.runpod_ssh_user, cost_per_hour=_price(data))
            log.info("pod %s (%s) is up at %s:%s in %s, $%s/hour", pod.name, pod.external_id, host,
                     port, data.get("dataCenterId") or "?", placement.cost_per_hour)
            return placement
        waited = (utcnow() - as_utc(pod.updated_at)).total_seconds()
        if waited > self.settings.runpod_start_timeout_s:
            raise StepFailed(f"RunPod pod {pod.external_id} was not reachable over SSH within "
                             f"{self.settings.runpod_start_timeout_s:g} s (last status {status or 'unknown'})")
        return None

    def _rent(self, session: Session, pod: Pod) -> Placement:
        """Create the pod, or adopt the one an earlier try of this step created."""
        found = self._find(pod.name)
        note = deadline_at = None
        if found is None:
            stop_at = self.terminate_after(session, pod)
            self.afford(pod, stop_at)
            self._write_stop(pod, stop_at)  # before the create: an answer lost in transit is still known
            found, note = self._create(session, pod, *self.hardware(session, pod), terminate_after=stop_at)
            if not found.get("id"):
                raise StepFailed("RunPod created a pod but did not say its id")
        else:  # made by an earlier try, whose terminateAfter stands: the row's deadline follows it
            made_stop = self.stop_at(pod)
            if made_stop is not None:
                deadline_at = made_stop - timedelta(seconds=self.settings.pod_fetch_allowance_s)
        return Placement(PodStatus.starting, external_id=str(found["id"]), deadline_at=deadline_at, note=note,
                         note_key=NO_DEADLINE_NOTE if note else None)

    def _create(self, session: Session, pod: Pod, gpu_type: str, gpu_count: int, *,
                terminate_after: datetime) -> tuple[dict[str, Any], str | None]:
        """Deploy the pod to each data centre in turn while RunPod answers "no capacity"; with
        what the run's events should say when it was made without RunPod's own deadline."""
        centers: list[str | None] = list(self.data_centers()) or [None]
        last: NoCapacity | None = None
        note: str | None = None
        for center in centers:
            try:
                if note is None:
                    try:
                        return self.api.deploy(self.create_input(
                            pod, gpu_type=gpu_type, gpu_count=gpu_count, data_center=center,
                            terminate_after=terminate_after)), None
                    except StepFailed as exc:
                        if not _NO_TERMINATE_AFTER.search(exc.reason):
                            raise
                        note = self._without_deadline(pod, exc.reason)
                return self.api.create(self.create_body(pod, gpu_type=gpu_type, gpu_count=gpu_count,
                                                        data_center=center)), note
            except NoCapacity as exc:
                log.info("pod %s: no capacity%s", pod.name, f" in {center}" if center else "")
                last = exc
        assert last is not None
        where = f" in {', '.join(c for c in centers if c)}" if centers != [None] else ""
        raise NoCapacity(f"RunPod has no capacity for {gpu_count} x {gpu_type} on {self.settings.runpod_cloud} "
                         f"cloud{where}: {last.message}", last.message, attempts=last.attempts,
                         backoff_s=last.backoff_s)

    def _without_deadline(self, pod: Pod, refusal: str) -> str:
        """RunPod's GraphQL refused terminateAfter: forget the provider deadline written down
        before the create (there is none), and say so in the log; returns what the run's
        events are to say (the director writes it once per run)."""
        self._stop_path(pod).unlink(missing_ok=True)
        note = (f"{NO_DEADLINE_NOTE}, so the pod is created through REST v2 without RunPod's own "
                f"deadline; the pod's watchdog and the reconciler end it (RunPod said: {refusal[-200:]})")
        log.warning("pod %s: %s", pod.name, note)
        return note

    def create_body(self, pod: Pod, *, gpu_type: str | None = None, gpu_count: int | None = None,
                    data_center: str | None = None) -> dict[str, Any]:
        """What REST v2's `POST /pods` gets when GraphQL will not take terminateAfter: the same pod
        in `CreatePodRequest`'s names (docs/orchestration.md, "RunPod API facts")."""
        body: dict[str, Any] = {
            "name": pod.name,
            "image": self.settings.runpod_image,
            "gpu": {"id": gpu_type or self.settings.runpod_gpu_type,
                    "count": gpu_count or self.settings.runpod_gpu_count},
            "cloud": self.settings.runpod_cloud,
            "disk": self.settings.runpod_disk_gb,
            "ports": ["22/tcp"],
            "env": {"PUBLIC_KEY": self.public_key(pod)},
        }
        if data_center:
            body["dataCenterIds"] = [data_center]
        return body

    def data_centers(self) -> list[str]:
        return [c.strip() for c in self.settings.runpod_data_centers.split(",") if c.strip()]

    def hardware(self, session: Session, pod: Pod) -> tuple[str, int]:
        """(GPU type, count) the pod's experiment asks for, else the settings' record hardware."""
        experiment = _experiment(session, pod)
        gpu_type = (experiment.gpu_type if experiment else None) or self.settings.runpod_gpu_type
        gpu_count = (experiment.gpu_count if experiment else None) or self.settings.runpod_gpu_count
        return gpu_type, gpu_count

    def terminate_after(self, session: Session, pod: Pod) -> datetime:
        """When RunPod is to end the pod itself: its deadline plus the data-download allowance
        (CADDIE_POD_FETCH_ALLOWANCE_S), and for a pod the experiment's seeds
        share, long enough for each seed it has now: created + n × one seed's life + the margin
        (one seed's life read off the renting seed's deadline: deadline − created − margin)."""
        assert pod.deadline_at is not None
        # The first run's data download moves the pod's deadline on; RunPod's cannot move.
        deadline = as_utc(pod.deadline_at) + timedelta(seconds=self.settings.pod_fetch_allowance_s)
        experiment = _experiment(session, pod) if pod.experiment_id is not None else None
        if experiment is None or not experiment.share_pods:
            return deadline
        seeds = session.exec(select(func.count()).select_from(Run).where(
            Run.experiment_id == experiment.id, col(Run.status).notin_(FINAL_RUN_STATUSES),
            col(Run.cancel_requested).is_(False))).one()
        seed_s = (as_utc(pod.deadline_at) - as_utc(pod.created_at)).total_seconds() - self.settings.pod_margin_s
        return deadline + timedelta(seconds=max(0, seeds - 1) * max(0.0, seed_s))

    def create_input(self, pod: Pod, *, gpu_type: str | None = None, gpu_count: int | None = None,
                     data_center: str | None = None, terminate_after: datetime) -> dict[str, Any]:
        """What `podFindAndDeployOnDemand` gets: everything a record run needs, said explicitly."""
        pod_input: dict[str, Any] = {
            "name": pod.name,
            "imageName": self.settings.runpod_image,
            "gpuTypeId": gpu_type or self.settings.runpod_gpu_type,
            "gpuCount": gpu_count or self.settings.runpod_gpu_count,
            "cloudType": self.settings.runpod_cloud,  # an enum: SECURE, COMMUNITY (or ALL, never sent)
            "containerDiskInGb": self.settings.runpod_disk_gb,
            "volumeInGb": 0,  # no pod volume: nothing outlives the pod, nothing bills after it
            "ports": "22/tcp",  # one string in GraphQL; the direct, SFTP-capable SSH endpoint
            "supportPublicIp": True,  # the direct endpoint needs one (Secure Cloud has it anyway)
            "startSsh": True,
            # RunPod images' start script writes PUBLIC_KEY to authorized_keys and starts sshd.
            "env": [{"key": "PUBLIC_KEY", "value": self.public_key(pod)}],
            "terminateAfter": _iso_utc(terminate_after),
        }
        if data_center:
            pod_input["dataCenterId"] = data_center  # one at a time: "no capacity" moves on to the next
        return pod_input

    def _find(self, name: str) -> dict[str, Any] | None:
        live = [p for p in self.api.list()
                if p.get("name") == name and str(p.get("status", "")).upper() not in ENDED]
        return live[0] if live else None

    def price_per_hour(self, pod: Pod | None = None) -> float | None:
        if pod is None or pod.external_id is None:
            return self.settings.runpod_price_per_hour
        if pod.cost_per_hour is not None:
            return pod.cost_per_hour
        return _price(self.api.get(pod.external_id) or {}) or self.settings.runpod_price_per_hour

    def balance(self) -> dict[str, float] | None:
        """The account's balance and spend per hour in dollars, from GraphQL."""
        me = self.api.graphql(BALANCE, {}).get("myself") or {}
        if "clientBalance" not in me:
            return None
        return {"balance": float(me["clientBalance"]), "spend_per_hour": float(me.get("currentSpendPerHr") or 0)}

    def afford(self, pod: Pod, stop_at: datetime) -> None:
        """Raise RetryLater (the run waits, then fails) while the account's balance is below
        what the pod would cost over its whole life (until RunPod ends it) at the estimated price."""
        life_s = (stop_at - as_utc(pod.created_at)).total_seconds()
        cost = costs.estimate(self.settings.runpod_price_per_hour, life_s)
        account = self.balance()
        if account is None:
            raise self.api.later("RunPod did not say the account's balance")
        if account["balance"] < cost:
            raise self.api.later(f"the RunPod balance of ${account['balance']:,.2f} is below the pod's "
                                  f"estimated cost of ${cost:,.2f}")

    # --- using --------------------------------------------------------------------------

    def connect(self, pod: Pod, *, pinned_host_key: str | None) -> Remote:
        target = SSHTarget(user=pod.username or "root", host=pod.host or "", port=pod.port or 22)
        try:
            return SSHRemote.connect(target, self.key_path(pod), pinned_host_key=pinned_host_key)
        except HostKeyMismatch:
            raise
        except ConnectError as exc:  # a new pod's sshd may still be booting
            raise RetryLater(exc.reason, attempts=self.settings.runpod_ssh_attempts, backoff_s=2.0) from None

    def watchdog_script(self, pod: Pod, seconds: float) -> str | None:
        return WATCHDOG.format(seconds=max(1, int(seconds)), deadline_file=shlex.quote(self.deadline_file),
                               url=shlex.quote(self.settings.runpod_api_url.rstrip("/") + "/pods/"),
                               graphql=shlex.quote(self.settings.runpod_graphql_url))

    def stop_at(self, pod: Pod) -> datetime | None:
        """The pod's `terminateAfter`, as written down before its create; None when unknown."""
        try:
            return datetime.fromisoformat(self._stop_path(pod).read_text().strip())
        except (OSError, ValueError):
            return None

    def _write_stop(self, pod: Pod, stop_at: datetime) -> None:
        path = self._stop_path(pod)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        path.write_text(_iso_utc(stop_at) + "\n")

    def _stop_path(self, pod: Pod) -> Path:
        path = self.key_path(pod)
        return path.with_name(path.name + ".stop")

    @property
    def deadline_file(self) -> str:
        """Unix seconds of the pod's deadline; the director moves it on when a shared pod takes
        another seed, and every watchdog on the pod waits for the later of it and its own."""
        return f"{self.workdir}/pod-deadline"

    # --- ending -------------------------------------------------------------------------

    def release(self, pod: Pod) -> PodStatus:
        external_id = pod.external_id
        if external_id is None:  # a create that timed out may still have made it
            found = self._find(pod.name)
            external_id = str(found["id"]) if found else None
        if external_id is not None and not self.terminate(external_id):
            raise StepFailed(f"RunPod has not yet confirmed that pod {external_id} is gone")
        self.forget(pod)
        return PodStatus.terminated

    def terminate(self, external_id: str) -> bool:
        self.api.delete(external_id)
        data = self.api.get(external_id)
        return data is None or str(data.get("status", "")).upper() == "TERMINATED"

    def list_pods(self) -> list[ListedPod] | None:
        if not self.configured:
            return None
        return [ListedPod(str(p.get("id")), str(p.get("name", "")), str(p.get("status", "")).upper())
                for p in self.api.list() if p.get("id")]

    # --- the pod's own SSH key ----------------------------------------------------------

    def key_path(self, pod: Pod) -> Path:
        return self.settings.data_dir.resolve() / "keys" / pod.name

    def public_key(self, pod: Pod) -> str:
        """The pod's public key in OpenSSH form; makes the key pair on first use."""
        path = self.key_path(pod)
        public = path.with_name(path.name + ".pub")
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                        serialization.NoEncryption())
            _write_private(path, private)
            public.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                             serialization.PublicFormat.OpenSSH)
                               + f" {pod.name}\n".encode())
        return public.read_text().strip()

    def forget(self, pod: Pod) -> None:
        path = self.key_path(pod)
        for file in (path, path.with_name(path.name + ".pub"), self._stop_path(pod)):
            file.unlink(missing_ok=True)


# Runs detached on the pod (its own session, so stopping the trainer leaves it be). RunPod puts
# a pod-scoped RUNPOD_API_KEY and RUNPOD_POD_ID into the container's environment; the launcher
# scrubs its own environment, so they are read from PID 1's. The key goes to curl on stdin,
# never on its command line. RunPod documents the key but not what it may call: the script asks
# REST v2 `DELETE /pods/{id}` first (204, or 404: gone) and, if REST refuses the key (401/403),
# GraphQL's `podTerminate`, the call pod-side scripts in the wild make with it.
WATCHDOG = """\
#!/usr/bin/env bash
# Ends this pod at its deadline with the pod's own RunPod key (never the account's).
set -u
deadline=$(( $(date +%s) + {seconds} ))
while :; do
  later=$(cat {deadline_file} 2>/dev/null || true)
  case $later in ''|*[!0-9]*) later=0;; esac
  [ "$later" -gt "$deadline" ] && deadline=$later
  left=$(( deadline - $(date +%s) ))
  [ "$left" -le 0 ] && break
  sleep $(( left < 60 ? left : 60 ))
done
from_init() {{ tr '\\0' '\\n' < /proc/1/environ 2>/dev/null | sed -n "s/^$1=//p" | head -n 1; }}
pod=${{RUNPOD_POD_ID:-$(from_init RUNPOD_POD_ID)}}
key=${{RUNPOD_API_KEY:-$(from_init RUNPOD_API_KEY)}}
if [ -z "$pod" ] || [ -z "$key" ]; then echo "no RUNPOD_POD_ID or RUNPOD_API_KEY: cannot end the pod"; exit 1; fi
case $pod in *[!A-Za-z0-9_-]*) echo "RUNPOD_POD_ID is not a plain id"; exit 1;; esac
header() {{ printf 'Authorization: Bearer %s\\n' "$key"; }}
for try in 1 2 3 4 5 6; do
  code=$(header | curl -s -o /dev/null -w '%{{http_code}}' --max-time 30 -X DELETE -H @- {url}"$pod")
  case $code in 2??|404) echo "deadline reached: pod $pod ended"; exit 0;; esac
  if [ "$code" = 401 ] || [ "$code" = 403 ]; then
    query='{{"query":"mutation {{ podTerminate(input: {{podId: \\"'"$pod"'\\"}}) }}"}}'
    answer=$(header | curl -s -w '\\n%{{http_code}}' --max-time 30 -H @- -H 'Content-Type: application/json' \\
      --data "$query" {graphql})
    code="graphql ${{answer##*$'\\n'}}"
    case $answer in
      *'"errors"'*'not found'*) echo "deadline reached: pod $pod was gone"; exit 0;;
      *'"errors"'*) ;;
      *$'\\n'200) echo "deadline reached: pod $pod ended"; exit 0;;
    esac
  fi
  echo "ending pod $pod: HTTP $code, try $try"
  sleep 10
done
exit 1
"""


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _message(response: httpx.Response) -> str:
    """RunPod's words: v2's problem details `{title, status, detail, errors: [str]}`, or a
    GraphQL `errors: [{message}]`, or whatever text came back."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if not isinstance(data, dict):
        return str(data)[:200]
    errors = [e.get("message", e) if isinstance(e, dict) else e for e in data.get("errors") or []]
    words = data.get("detail") or data.get("message") or data.get("error") or data.get("title")
    if words and errors:
        words = f"{words} ({'; '.join(str(e) for e in errors[:3])})"
    return str(words or (errors[0] if errors else data))[:300]


def _price(data: dict[str, Any]) -> float | None:
    """v2's `cost`, $/hour; None when it names none (it is 0 once a pod has stopped)."""
    value = data.get("cost")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _ssh_endpoint(data: dict[str, Any]) -> tuple[str, int, str | None] | None:
    """(host, port, login user) of the pod's direct SSH: v2's `ssh.direct {host, port, username,
    command}` (required in the schema since its 2026-08-13 update), else `runtime.ports`' 22/tcp
    at `ip:public` with no user (older answers); None until RunPod has mapped it (ports can
    come after RUNNING)."""
    direct = (data.get("ssh") or {}).get("direct") or {}
    if direct.get("host") and direct.get("port"):
        return str(direct["host"]), int(direct["port"]), str(direct.get("username") or "") or None
    for port in (data.get("runtime") or {}).get("ports") or []:
        if (isinstance(port, dict) and port.get("private") == 22 and port.get("type") == "tcp"
                and port.get("ip") and port.get("public")):
            return str(port["ip"]), int(port["public"]), None
    return None


def _safe_id(pod_id: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", pod_id):
        raise StepFailed(f"RunPod pod id {pod_id[:40]!r} is not a plain id")
    return pod_id


def _experiment(session: Session, pod: Pod) -> Experiment | None:
    run = session.get(Run, pod.run_id) if pod.run_id is not None else None
    experiment_id = pod.experiment_id or (run.experiment_id if run else None)
    return session.get(Experiment, experiment_id) if experiment_id is not None else None


def _iso_utc(moment: datetime) -> str:
    """ISO-8601 in UTC, as RunPod's SDK sends `terminateAfter` (2026-07-01T12:00:00+00:00), rounded
    up to the second so that RunPod never ends a pod before its deadline."""
    moment = as_utc(moment).astimezone(UTC)
    whole = moment.replace(microsecond=0)
    return (whole + timedelta(seconds=1) if whole < moment else whole).isoformat()


