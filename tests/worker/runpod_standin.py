"""A local stand-in for RunPod's API: REST v2 `/v2/pods` and the two GraphQL calls Caddie uses.

It answers like RunPod (a new pod goes PROVISIONING → STARTING → RUNNING over successive
GETs and then publishes `ssh.direct`), and the "pod" it hands out is the test's real sshd:
on RUNNING it writes the pod's PUBLIC_KEY into that sshd's authorized_keys, as RunPod's
images do. Faults are queued per operation and used once each:

- "500": HTTP 500; "timeout": answers after `slow_s` (longer than the client waits);
- "capacity": HTTP 500 with RunPod's "no longer any instances" message;
- "made-then-timeout" (create only): makes the pod, then answers too late;
- "linger" (delete only): says yes but leaves the pod running.

`full_centers` lists data centres with no capacity (a create naming only those is refused as
RunPod refuses it); `balance` is the account's clientBalance; `adjusted_price`, when set, is
the pod's adjustedCostPerHr beside its listed costPerHr / cost of 21.52.

Every request is recorded (method, path, headers, body) for the tests to search.
"""

import json
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.sshd import Sshd

NO_CAPACITY = "There are no longer any instances available with the requested specifications."


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


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
        self.adjusted_price: float | None = None
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def live(self) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(p) for p in self.pods.values()]

    def add_pod(self, name: str, *, status: str = "RUNNING", public_key: str | None = None) -> str:
        """A pod made behind Caddie's back (another tool, a lost create answer)."""
        env = {"PUBLIC_KEY": public_key} if public_key else {}
        with self.lock:
            return self._new_pod({"name": name, "env": env}, status=status)["id"]

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.path.startswith(path_prefix))

    # --- the API ------------------------------------------------------------------------

    def _new_pod(self, body: dict[str, Any], *, status: str = "PROVISIONING") -> dict[str, Any]:
        pod_id = secrets.token_hex(7)
        centers = body.get("dataCenterIds") or ["EU-RO-1"]
        pod = {"id": pod_id, "name": body.get("name"), "status": status, "cost": 21.52,
               "costPerHr": 21.52, "adjustedCostPerHr": self.adjusted_price, "dataCenterId": centers[0],
               "env": body.get("env") or {}, "gets": 0, "body": body, "terminateAfter": None}
        self.pods[pod_id] = pod
        self.pod_keys[pod_id] = "pod-scoped-" + secrets.token_hex(8)
        return pod

    def _public(self, pod: dict[str, Any]) -> dict[str, Any]:
        view = {k: pod[k] for k in ("id", "name", "status", "cost", "costPerHr", "adjustedCostPerHr",
                                    "dataCenterId")}
        view["ssh"] = None
        if pod["status"] == "RUNNING":
            view["ssh"] = {"direct": {"host": self.sshd.host, "port": self.sshd.port,
                                      "username": self.sshd.user}}
        return view

    def _boot(self, pod: dict[str, Any]) -> None:
        pod["gets"] += 1
        if pod["status"] == "PROVISIONING" and pod["gets"] >= 1:
            pod["status"] = "STARTING"
        if pod["status"] == "STARTING" and pod["gets"] >= self.boot_gets:
            pod["status"] = "RUNNING"
            public = pod["env"].get("PUBLIC_KEY")
            if public:
                with open(self.sshd.folder / "authorized_keys", "a") as handle:
                    handle.write(public.strip() + "\n")

    def _fault(self, operation: str) -> str | None:
        with self.lock:
            queue = self.faults[operation]
            return queue.pop(0) if queue else None

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        self.requests.append(Recorded(method, path, headers, body))
        token = headers.get("authorization", "")
        if path.startswith("/graphql"):
            return self._graphql(token, json.loads(body or b"{}"))
        parts = [p for p in path.split("?")[0].split("/") if p]
        # A pod's own key may end that pod (the watchdog); everything else needs the account's.
        own = method == "DELETE" and len(parts) == 3 and token == f"Bearer {self.pod_keys.get(parts[2])}"
        if token != f"Bearer {self.account_key}" and not own:
            return 401, {"error": "invalid api key"}
        if parts[:2] != ["v2", "pods"]:
            return 404, {"error": "no such route"}
        if len(parts) == 2 and method == "POST":
            return self._create(json.loads(body))
        if len(parts) == 2 and method == "GET":
            return self._faulty("list") or (200, {"pods": [self._public(p) for p in self.live()]})
        if len(parts) == 3 and method == "GET":
            return self._faulty("get") or self._get(parts[2])
        if len(parts) == 3 and method == "DELETE":
            return self._delete(parts[2])
        return 405, {"error": "method not allowed"}

    def _faulty(self, operation: str) -> tuple[int, Any] | None:
        fault = self._fault(operation)
        if fault == "500":
            return 500, {"error": "internal server error"}
        if fault == "timeout":
            time.sleep(self.slow_s)
            return 500, {"error": "too late"}
        if fault == "capacity":
            return 500, {"error": NO_CAPACITY}
        return None

    def _create(self, body: dict[str, Any]) -> tuple[int, Any]:
        fault = self._fault("create")
        if fault == "made-then-timeout":
            with self.lock:
                self._new_pod(body)
            time.sleep(self.slow_s)
            return 201, {}
        if fault is not None:
            self.faults["create"].insert(0, fault)
            return self._faulty("create")  # type: ignore[return-value]
        if body.get("dataCenterIds") and set(body["dataCenterIds"]) <= self.full_centers:
            return 500, {"error": NO_CAPACITY}
        with self.lock:
            pod = self._new_pod(body)
            return 201, self._public(pod)

    def _get(self, pod_id: str) -> tuple[int, Any]:
        with self.lock:
            pod = self.pods.get(pod_id)
            if pod is None:
                return 404, {"error": "pod not found"}
            self._boot(pod)
            return 200, self._public(pod)

    def _delete(self, pod_id: str) -> tuple[int, Any]:
        fault = self._fault("delete")
        if fault == "linger":
            return 200, {}
        if fault is not None:
            self.faults["delete"].insert(0, fault)
            return self._faulty("delete")  # type: ignore[return-value]
        with self.lock:
            pod = self.pods.pop(pod_id, None)
            if pod is None:
                return 404, {"error": "pod not found"}
            pod["status"] = "TERMINATED"
            self.ended[pod_id] = pod
            return 204, None

    def _graphql(self, token: str, payload: dict[str, Any]) -> tuple[int, Any]:
        if token != f"Bearer {self.account_key}":
            return 200, {"errors": [{"message": "Unauthorized"}]}
        query, variables = payload.get("query", ""), payload.get("variables") or {}
        if "podTerminateAfter" in query:
            data = variables.get("input") or {}
            with self.lock:
                pod = self.pods.get(data.get("podId", ""))
                if pod is None:
                    return 200, {"errors": [{"message": "pod not found"}]}
                pod["terminateAfter"] = data.get("terminateAfter")
            return 200, {"data": {"podTerminateAfter": {"id": pod["id"], "terminateAfter": pod["terminateAfter"]}}}
        if "myself" in query:
            spend = sum(p["cost"] for p in self.live())
            return 200, {"data": {"myself": {"clientBalance": self.balance, "currentSpendPerHr": spend}}}
        return 200, {"errors": [{"message": "unknown query"}]}

    def pod_delete_by_pod_key(self, pod_id: str, key: str) -> bool:
        """Whether a DELETE of pod_id arrived carrying that key (the watchdog's call)."""
        return any(r.method == "DELETE" and r.path.endswith(f"/pods/{pod_id}")
                   and r.headers.get("authorization") == f"Bearer {key}" for r in self.requests)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                code, data = standin.handle(self.command, self.path, headers, body)
                payload = b"" if data is None else json.dumps(data).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting (a "timeout" fault)

            do_GET = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
