"""A local stand-in for RunPod's API: REST v2 `/v2/pods` and the GraphQL calls Caddie makes.

It answers as RunPod's published v2 schema says (docs/orchestration.md, "RunPod API facts"):
v2's `POST /pods` refuses a body with a field `CreatePodRequest` does not know (422, problem+json
naming it) and answers 201 with the pod; a new pod goes PROVISIONING → STARTING → RUNNING over
successive GETs; `runtime` is null until RUNNING and then lists the port mappings, `22/tcp` as
`{private: 22, public, type: "tcp", ip}`; `ssh` (required since the schema's 2026-08-13 update)
is `{direct: null}` until then and `{direct: {host, port, username, command}}` once mapped;
`cost` is $/hour and 0 once the pod has stopped; `DELETE` answers 204 and the pod is gone for
good (GET, DELETE: 404; not listed); every error is `{title, status, detail}`. The "pod" it hands
out is the test's real sshd: on RUNNING it writes the pod's PUBLIC_KEY into that sshd's
authorized_keys, as RunPod's images do, and takes it out again when the pod ends, so a pod that
is gone can no longer be reached.

GraphQL's create, `podFindAndDeployOnDemand(input: $input)`, takes the input as a variable and
coerces it as a GraphQL server does: a field `PodFindAndDeployOnDemandInput` does not define, or a
value of the wrong type, is refused with HTTP 400 and `errors: [{message}]`; "no capacity" comes
as HTTP 200 with an `errors` list. It answers `{id, desiredStatus}`. The pod's `terminateAfter` is
kept (`pod["terminate_after"]`) — unless `knows_terminate_after` is False, when GraphQL refuses
the field as RunPod's released schema may (HTTP 400, "not defined by type") — and a reaper ends every pod whose `terminateAfter` has passed on
the stand-in's clock, which a test may move forward (`clock_offset_s`); those are listed in
`ended_by_deadline` with the clock's time then.

Faults are queued per operation and used once each ("create" serves both creates):

- "500": HTTP 500; "timeout": answers after `slow_s` (longer than the client waits);
- "429": HTTP 429 with `Retry-After: 12`, as RunPod's rate limit answers;
- "capacity" (create only): RunPod's "no longer any instances" words (HTTP 200 + errors);
- "invalid" (create only): a validation error (HTTP 400);
- "made-then-timeout" (create only): makes the pod, then answers too late;
- "linger" (delete only): says 204 but leaves the pod running.

`myself` answers clientBalance, currentSpendPerHr and `spend_limit` ($/hour); `gpuTypes(input:
{id})` answers `{id, displayName, securePrice, lowestPrice(input: {gpuCount, dataCenterId}) {stockStatus,
uninterruptablePrice}}` from `stock` ({data centre: stockStatus}; a centre not in it has none).

`full_centers` lists data centres with no capacity (a create naming only those is refused as
RunPod refuses it); `balance` is the account's clientBalance; `price` is every new pod's `cost`;
`ssh_public` False leaves port 22 without a public mapping; `pod_key_rest` False makes REST
refuse pod-scoped keys (then only GraphQL's podTerminate takes them).

Every request is recorded (method, path, headers, body, status) for the tests to search.
"""

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.sshd import Sshd

NO_CAPACITY = "There are no longer any instances available with the requested specifications."
ENDED = ("EXITED", "ERROR", "TERMINATED")
# CreatePodRequest's fields (its schema forbids any other: `unevaluatedProperties: false`).
CREATE_FIELDS = {"name", "image", "args", "disk", "ports", "env", "registry", "mounts", "gpu", "cpu",
                 "cloud", "dataCenterIds", "globalNetworking"}
# PodFindAndDeployOnDemandInput's fields, as RunPod's SDK and clients send them (runpod-python
# api/mutations/pods.py and apps/tasks.py; dstack; the Pulumi provider): any other is refused.
DEPLOY_FIELDS = {"name", "imageName", "gpuTypeId", "gpuTypeIdList", "gpuCount", "cloudType", "containerDiskInGb",
                 "volumeInGb", "volumeMountPath", "networkVolumeId", "ports", "env", "dockerArgs", "startSsh",
                 "startJupyter", "supportPublicIp", "dataCenterId", "dataCenterIds", "countryCode", "minVcpuCount",
                 "minMemoryInGb", "allowedCudaVersions", "minCudaVersion", "minDownload", "minUpload",
                 "templateId", "containerRegistryAuthId", "stopAfter", "terminateAfter"}
DEPLOY_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "imageName": str, "gpuTypeId": str, "gpuCount": int, "cloudType": str, "containerDiskInGb": int,
    "volumeInGb": int, "ports": str, "env": list, "startSsh": bool, "supportPublicIp": bool, "dataCenterId": str,
    "dataCenterIds": list, "terminateAfter": str, "stopAfter": str}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int = 0


ACCOUNT_KEY = "rpa_ACCOUNTKEY0123456789abcdef"  # the account API key the stand-in accepts in tests


def problem(status: int, title: str, detail: str, errors: list[str] | None = None) -> tuple[int, Any]:
    """RunPod v2's error body (RFC 9457 problem details)."""
    body: dict[str, Any] = {"title": title, "status": status, "detail": detail}
    if errors:
        body["errors"] = errors
    return status, body


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunPodStandIn:
    def __init__(self, sshd: Sshd, account_key: str, *, boot_gets: int = 2, slow_s: float = 1.5) -> None:
        self.sshd = sshd
        self.account_key = account_key
        self.boot_gets = boot_gets  # GETs a new pod answers before it is RUNNING
        self.slow_s = slow_s
        self.pods: dict[str, dict[str, Any]] = {}
        self.ended: dict[str, dict[str, Any]] = {}
        self.faults: dict[str, list[str]] = {"create": [], "get": [], "list": [], "delete": []}
        self.requests: list[Recorded] = []
        self.pod_keys: dict[str, str] = {}  # pod id → the pod-scoped key RunPod would inject
        self.full_centers: set[str] = set()
        self.balance = 256.19
        self.price = 21.52
        self.ssh_public = True
        self.pod_key_rest = True
        self.knows_terminate_after = True
        self.spend_limit = 80.0
        self.stock: dict[str, str] = {"EU-RO-1": "High", "US-KS-2": "Low"}
        self.clock_offset_s = 0.0  # the stand-in's clock runs this far ahead of the real one
        self.ended_by_deadline: dict[str, datetime] = {}  # pod id → the clock when terminateAfter ended it
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.stopping = threading.Event()
        self.reaper = threading.Thread(target=self._reap, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()
        self.reaper.start()

    def stop(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
        self.reaper.join(timeout=5)

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def _reap(self) -> None:
        """RunPod's server-side stop: end each pod whose terminateAfter has passed."""
        while not self.stopping.wait(0.05):
            now = self.now()
            with self.lock:
                due = [i for i, p in self.pods.items() if p["terminate_after"] and p["terminate_after"] <= now]
            for pod_id in due:
                if self._end(pod_id):
                    self.ended_by_deadline[pod_id] = now

    def live(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.pods.values()]

    def add_pod(self, name: str, *, status: str = "RUNNING", public_key: str | None = None) -> str:
        """A pod made behind Caddie's back (another tool, a lost create answer)."""
        env = {"PUBLIC_KEY": public_key} if public_key else {}
        body = {"name": name, "image": "runpod/pytorch", "env": env, "ports": ["22/tcp"],
                "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 8}}
        with self.lock:
            return self._new_pod(body, status=status)["id"]

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_prefix))

    # --- the API ------------------------------------------------------------------------

    def _new_pod(self, body: dict[str, Any], *, status: str = "PROVISIONING",
                 terminate_after: datetime | None = None) -> dict[str, Any]:
        pod_id = secrets.token_hex(7)
        centers = body.get("dataCenterIds") or ["EU-RO-1"]
        gpu = body.get("gpu") or {}
        pod = {"id": pod_id, "name": body.get("name"), "image": body.get("image"), "args": body.get("args", ""),
               "disk": body.get("disk", 50), "ports": list(body.get("ports") or []), "env": body.get("env") or {},
               "registry": None, "status": status, "gpu": {"id": gpu.get("id"), "count": gpu.get("count", 1)},
               "cloud": body.get("cloud", "SECURE"), "dataCenterId": centers[0], "template": None,
               "cost": self.price, "locked": False, "createdAt": _now(), "startedAt": None, "gets": 0,
               "body": body, "terminate_after": terminate_after}
        self.pods[pod_id] = pod
        self.pod_keys[pod_id] = "pod-scoped-" + secrets.token_hex(8)
        return pod

    def _public(self, pod: dict[str, Any]) -> dict[str, Any]:
        """The pod as v2's `Pod` schema shows it."""
        view = {k: pod[k] for k in ("id", "name", "image", "args", "disk", "ports", "env", "registry", "status",
                                    "gpu", "cloud", "dataCenterId", "template", "locked", "createdAt", "startedAt")}
        view["actions"] = ["stop", "restart", "terminate"] if pod["status"] == "RUNNING" else ["start", "terminate"]
        view["mounts"] = {}
        view["globalNetworking"] = {"enabled": False}
        view["cost"] = 0.0 if pod["status"] in ("EXITED", "TERMINATED") else pod["cost"]
        view["runtime"] = None
        if pod["status"] == "RUNNING":
            ports = []
            if "22/tcp" in pod["ports"]:
                public = self.ssh_public
                ports.append({"private": 22, "public": self.sshd.port if public else None, "type": "tcp",
                              "ip": self.sshd.host if public else None})
            view["runtime"] = {"uptime": pod["gets"], "ports": ports}
        view["ssh"] = {"direct": None}
        if pod["status"] == "RUNNING" and "22/tcp" in pod["ports"] and self.ssh_public:
            host, port, user = self.sshd.host, self.sshd.port, self.sshd.user
            view["ssh"]["direct"] = {"host": host, "port": port, "username": user,
                                     "command": f"ssh {user}@{host} -p {port} -i ~/.ssh/id_ed25519"}
        return view

    def _boot(self, pod: dict[str, Any]) -> None:
        pod["gets"] += 1
        if pod["status"] == "PROVISIONING" and pod["gets"] >= 1:
            pod["status"] = "STARTING"
        if pod["status"] == "STARTING" and pod["gets"] >= self.boot_gets:
            pod["status"], pod["startedAt"] = "RUNNING", _now()
            public = pod["env"].get("PUBLIC_KEY")
            if public:
                with open(self.sshd.folder / "authorized_keys", "a") as handle:
                    handle.write(public.strip() + "\n")

    def _fault(self, operation: str) -> str | None:
        with self.lock:
            queue = self.faults[operation]
            return queue.pop(0) if queue else None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        record = Recorded(method, path, headers, body)
        self.requests.append(record)
        code, data = self._route(method, path, headers.get("authorization", ""), body)
        record.status = code
        return code, data

    def _route(self, method: str, path: str, token: str, body: bytes) -> tuple[int, Any]:
        if path.split("?")[0] == "/graphql":
            return self._graphql(token, json.loads(body or b"{}"))
        parts = [p for p in path.split("?")[0].split("/") if p]
        # A pod's own key may end that pod (the watchdog); everything else needs the account's.
        own = (self.pod_key_rest and method == "DELETE" and len(parts) == 3
               and token == f"Bearer {self.pod_keys.get(parts[2])}")
        if not token.startswith("Bearer "):
            return problem(401, "Unauthorized", "missing bearer token")
        if token != f"Bearer {self.account_key}" and not own:
            if token.removeprefix("Bearer ") in self.pod_keys.values():
                return problem(403, "Forbidden", "access denied")
            return problem(401, "Unauthorized", "invalid api key")
        if parts[:2] != ["v2", "pods"]:
            return problem(404, "Not Found", "resource not found")
        if len(parts) == 2 and method == "POST":
            return self._create(body)
        if len(parts) == 2 and method == "GET":
            return self._faulty("list") or (200, {"pods": [self._public(p) for p in self.live()]})
        if len(parts) == 3 and method == "GET":
            return self._faulty("get") or self._get(parts[2])
        if len(parts) == 3 and method == "DELETE":
            return self._delete(parts[2])
        return problem(405, "Method Not Allowed", "The requested method is not allowed for this path.")

    def _faulty(self, operation: str) -> tuple[int, Any] | None:
        fault = self._fault(operation)
        if fault == "500":
            return problem(500, "Internal Server Error", "internal server error")
        if fault == "429":
            return problem(429, "Too Many Requests", "rate limit exceeded for the minute window")
        if fault == "timeout":
            time.sleep(self.slow_s)
            return problem(500, "Internal Server Error", "too late")
        return None

    def _invalid(self, body: Any) -> tuple[int, Any] | None:
        """What v2's schema refuses in a create body."""
        if not isinstance(body, dict):
            return problem(400, "Bad Request", "request could not be processed")
        errors = [f"$: additional properties '{k}' not allowed" for k in sorted(set(body) - CREATE_FIELDS)]
        errors += [f"$: missing property '{k}'" for k in ("name", "image") if not body.get(k)]
        if ("gpu" in body) == ("cpu" in body):
            errors.append("$: exactly one of 'gpu' or 'cpu' must be set")
        if not isinstance(body.get("env", {}), dict) or not isinstance(body.get("ports", []), list):
            errors.append("$: 'env' must be an object and 'ports' an array")
        if body.get("cloud", "SECURE") not in ("SECURE", "COMMUNITY"):
            errors.append("$.cloud: value must be one of 'SECURE', 'COMMUNITY'")
        return problem(422, "Unprocessable Entity", "Request validation failed.", errors) if errors else None

    def _create(self, raw: bytes) -> tuple[int, Any]:
        """REST v2's create: no terminateAfter in its schema."""
        try:
            body = json.loads(raw)
        except ValueError:
            return problem(400, "Bad Request", "request could not be processed")
        refused = self._invalid(body)
        if refused:
            return refused
        fault = self._fault("create")
        if fault in ("500", "429", "timeout"):
            return self._faulty_now(fault)
        if fault == "capacity" or (body.get("dataCenterIds") and set(body["dataCenterIds"]) <= self.full_centers):
            return problem(400, "Bad Request", NO_CAPACITY)
        with self.lock:
            pod = self._new_pod(body)
            view = self._public(pod)
        if fault == "made-then-timeout":
            time.sleep(self.slow_s)
        return 201, view

    def _get(self, pod_id: str) -> tuple[int, Any]:
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None:
                return problem(404, "Not Found", "pod not found")
            self._boot(pod)
            return 200, self._public(pod)

    def _delete(self, pod_id: str) -> tuple[int, Any]:
        fault = self._fault("delete")
        if fault == "linger":
            return 204, None
        if fault is not None:
            self.faults["delete"].insert(0, fault)
            return self._faulty("delete")  # type: ignore[return-value]
        return (204, None) if self._end(pod_id) else problem(404, "Not Found", "pod not found")

    def _end(self, pod_id: str) -> bool:
        with self.lock:
            pod = self.pods.pop(pod_id, None)
            if pod is None:
                return False
            pod["status"] = "TERMINATED"
            self.ended[pod_id] = pod
            public = (pod["env"].get("PUBLIC_KEY") or "").strip()
            keys = self.sshd.folder / "authorized_keys"
            if public and keys.exists():  # the pod is gone: its key no longer lets anyone in
                kept = [line for line in keys.read_text().splitlines() if line.strip() != public]
                keys.write_text("".join(line + "\n" for line in kept))
            return True

    def _graphql(self, token: str, payload: dict[str, Any]) -> tuple[int, Any]:
        query, variables = payload.get("query", ""), payload.get("variables") or {}
        if "podTerminate" in query:
            inline = re.search(r'podId:\s*"([^"]*)"', query)
            pod_id = inline.group(1) if inline else str((variables.get("input") or {}).get("podId", ""))
            if token not in (f"Bearer {self.account_key}", f"Bearer {self.pod_keys.get(pod_id)}"):
                return 401, {"errors": [{"message": "Unauthorized"}]}
            if not self._end(pod_id):
                return 200, {"errors": [{"message": "pod not found to terminate"}], "data": None}
            return 200, {"data": {"podTerminate": None}}
        if token != f"Bearer {self.account_key}":
            return 401, {"errors": [{"message": "Unauthorized"}]}
        if "podFindAndDeployOnDemand" in query:
            return self._deploy(variables.get("input"))
        if "myself" in query:
            spend = sum(p["cost"] for p in self.live())
            return 200, {"data": {"myself": {"clientBalance": self.balance, "currentSpendPerHr": spend,
                                             "spendLimit": self.spend_limit}}}
        if "gpuTypes" in query:
            return self._gpu_types(variables)
        return 200, {"errors": [{"message": "Cannot query field on type \"Mutation\"."}], "data": None}

    def _gpu_types(self, variables: dict[str, Any]) -> tuple[int, Any]:
        """`gpuTypes(input: {id: $gpu})` with `lowestPrice(input: {gpuCount: $count, dataCenterId:
        $center})`: stockStatus null where the centre has no such GPU free."""
        gpu, center = variables.get("gpu"), variables.get("center")
        if gpu != "NVIDIA H100 80GB HBM3":
            return 200, {"data": {"gpuTypes": []}}
        stock = self.stock.get(center) if center else next(iter(self.stock.values()), None)
        price = {"stockStatus": stock, "uninterruptablePrice": 2.69 if stock else None}
        return 200, {"data": {"gpuTypes": [{"id": gpu, "displayName": "H100 SXM", "securePrice": 2.69,
                                            "lowestPrice": price}]}}

    def _deploy(self, pod_input: Any) -> tuple[int, Any]:
        """GraphQL's create: the input coerced as PodFindAndDeployOnDemandInput, then a pod."""
        refused = _uncoercible(pod_input, self.knows_terminate_after)
        if refused:
            return 400, {"errors": [{"message": f'Variable "$input" got invalid value; {refused}',
                                     "extensions": {"code": "BAD_USER_INPUT"}}]}
        fault = self._fault("create")
        if fault in ("500", "429", "timeout"):
            return self._faulty_now(fault)
        if fault == "invalid":
            return 400, {"errors": [{"message": 'Variable "$input" got invalid value; Value "MOON" does not '
                                                'exist in "CloudTypeEnum" enum.'}]}
        full = fault == "capacity" or pod_input.get("dataCenterId") in self.full_centers
        if full:
            return 200, {"errors": [{"message": NO_CAPACITY, "path": ["podFindAndDeployOnDemand"]}],
                         "data": {"podFindAndDeployOnDemand": None}}
        body = {"name": pod_input.get("name"), "image": pod_input.get("imageName"),
                "gpu": {"id": pod_input.get("gpuTypeId"), "count": pod_input.get("gpuCount", 1)},
                "cloud": pod_input.get("cloudType", "ALL"), "disk": pod_input.get("containerDiskInGb", 50),
                "ports": [p for p in str(pod_input.get("ports") or "").split(",") if p],
                "env": {e["key"]: e["value"] for e in pod_input.get("env") or []},
                "dataCenterIds": [pod_input["dataCenterId"]] if pod_input.get("dataCenterId") else None}
        after = pod_input.get("terminateAfter")
        with self.lock:
            pod = self._new_pod(body, terminate_after=datetime.fromisoformat(after) if after else None)
            pod["input"] = pod_input
        if fault == "made-then-timeout":
            time.sleep(self.slow_s)
        return 200, {"data": {"podFindAndDeployOnDemand": {"id": pod["id"], "desiredStatus": "RUNNING"}}}

    def _faulty_now(self, fault: str) -> tuple[int, Any]:
        self.faults["create"].insert(0, fault)
        return self._faulty("create")  # type: ignore[return-value]

    def pod_delete_by_pod_key(self, pod_id: str, key: str) -> bool:
        """Whether a DELETE of pod_id arrived carrying that key (the watchdog's call)."""
        return any(r.method == "DELETE" and r.path.endswith(f"/pods/{pod_id}")
                   and r.headers.get("authorization") == f"Bearer {key}" for r in self.requests)

    def deploys(self) -> list[dict[str, Any]]:
        """The input of every GraphQL create, in order."""
        found = []
        for r in self.requests:
            payload = json.loads(r.body or b"{}") if r.path == "/graphql" else {}
            if "podFindAndDeployOnDemand" in payload.get("query", ""):
                found.append((payload.get("variables") or {}).get("input"))
        return found

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                code, data = standin.handle(self.command, self.path, headers, body)
                payload = b"" if data is None else json.dumps(data).encode()
                kind = "application/problem+json" if code >= 400 and "title" in (data or {}) else "application/json"
                try:
                    self.send_response(code)
                    if payload:
                        self.send_header("content-type", kind)
                    if code == 429:
                        self.send_header("retry-after", "12")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting (a "timeout" fault)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _uncoercible(pod_input: Any, knows_terminate_after: bool = True) -> str | None:
    """Why a GraphQL server would refuse this value as PodFindAndDeployOnDemandInput; None: fine."""
    if not isinstance(pod_input, dict):
        return 'Expected type "PodFindAndDeployOnDemandInput" to be an object.'
    fields = DEPLOY_FIELDS if knows_terminate_after else DEPLOY_FIELDS - {"terminateAfter"}
    for key in sorted(pod_input):
        if key not in fields:
            return f'Field "{key}" is not defined by type "PodFindAndDeployOnDemandInput".'
        kind, value = DEPLOY_TYPES.get(key), pod_input[key]
        if value is not None and kind is not None and (not isinstance(value, kind) or
                                                        (kind is int and isinstance(value, bool))):
            return f'Field "{key}" got a value of the wrong type: {json.dumps(value)[:60]}.'
    if pod_input.get("cloudType") not in (None, "SECURE", "COMMUNITY", "ALL"):
        return f'Value "{pod_input["cloudType"]}" does not exist in "CloudTypeEnum" enum.'
    if any(not isinstance(e, dict) or set(e) != {"key", "value"} for e in pod_input.get("env") or []):
        return 'Field "env" expects a list of EnvironmentVariableInput {key, value}.'
    after = pod_input.get("terminateAfter")
    try:
        if after is not None and datetime.fromisoformat(after).tzinfo is None:
            return 'Field "terminateAfter": a DateTime needs its UTC offset.'
    except ValueError:
        return f'Field "terminateAfter" got an invalid DateTime: {after!r}.'
    return None
