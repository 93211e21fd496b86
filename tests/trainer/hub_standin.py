"""A local stand-in for the Hugging Face Hub's HTTP API, for one dataset repository.

It serves what `huggingface_hub.hf_hub_download` and `snapshot_download` ask of the Hub
(read from huggingface_hub's file_download.py and hf_api.py):

- `HEAD|GET /datasets/{repo}/resolve/{revision}/{path}`: the file, with `ETag` (its sha256, quoted),
  `X-Repo-Commit` (the revision's commit hash), `Content-Length`; GET honours one `bytes=N-`
  Range (206 + Content-Range). An unknown file is 404 with `X-Error-Code: EntryNotFound`, an
  unknown revision 404 with `RevisionNotFound`, another repository 401 with `RepoNotFound`
  (the Hub hides private repositories behind a 401).
- `GET /api/datasets/{repo}/revision/{revision}`: `{id, sha, siblings: [{rfilename}]}`.

Files live under `folder`; `revisions` maps a revision name to its commit hash ("main" and the
hash itself always resolve). Every request is recorded as (method, path, Range, Authorization).
Faults, used once each: `cut` holds paths whose next GET sends half its bytes and then closes
the connection, as a dropped link does. `delay_s` holds each file GET that long before its body,
as a slow link does; `most_at_once` is the most file GETs in flight at one time.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

REPO = "willdepueoai/parameter-golf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubStandIn:
    folder: Path
    repo: str = REPO
    revisions: dict[str, str] = field(default_factory=lambda: {"main": COMMIT})
    requests: list[Request] = field(default_factory=list)
    cut: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    most_at_once: int = 0
    url: str = ""
    _in_flight: int = 0
    _count_lock: threading.Lock = field(default_factory=threading.Lock)

    def counting(self, change: int) -> None:
        with self._count_lock:
            self._in_flight += change
            self.most_at_once = max(self.most_at_once, self._in_flight)

    def start(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def file(self, relative: str) -> Path:
        return self.folder / relative

    def gets(self) -> list[str]:
        """Repository paths of the file GETs, in order."""
        marker = "/resolve/"
        return [r.path.split(marker, 1)[1].split("/", 1)[1] for r in self.requests
                if r.method == "GET" and marker in r.path]

    def commit(self, revision: str) -> str | None:
        if revision in self.revisions.values():
            return revision
        return self.revisions.get(revision)


_ETAGS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) → sha256: hashed once


def _etag(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _ETAGS:
        _ETAGS[key] = _sha256(path)
    return _ETAGS[key]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _handler(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _record(self) -> None:
            hub.requests.append(Request(self.command, unquote(self.path), self.headers.get("Range"),
                                        self.headers.get("Authorization")))

        def _error(self, code: int, error_code: str, message: str) -> None:
            body = json.dumps({"error": message}).encode()
            self.send_response(code)
            self.send_header("X-Error-Code", error_code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._record()
            self._resolve(send_body=False)

        def do_GET(self) -> None:
            self._record()
            path = unquote(self.path.split("?", 1)[0])
            api = f"/api/datasets/{hub.repo}/revision/"
            if path.startswith(api):
                return self._revision(path[len(api):])
            return self._resolve(send_body=True)

        def _revision(self, revision: str) -> None:
            commit = hub.commit(revision)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            siblings = sorted(p.relative_to(hub.folder).as_posix() for p in hub.folder.rglob("*") if p.is_file())
            body = json.dumps({"id": hub.repo, "sha": commit, "private": False,
                               "siblings": [{"rfilename": s} for s in siblings]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _resolve(self, *, send_body: bool) -> None:
            path = unquote(self.path.split("?", 1)[0])
            prefix = f"/datasets/{hub.repo}/resolve/"
            if not path.startswith(prefix):
                return self._error(401, "RepoNotFound", "Repository not found")
            revision, _, relative = path[len(prefix):].partition("/")
            commit = hub.commit(revision)
            if commit is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            local = hub.folder / relative
            if not relative or not local.is_file():
                return self._error(404, "EntryNotFound", f"{relative} does not exist on {revision}")
            size = local.stat().st_size
            start = 0
            ranged = self.headers.get("Range")
            if send_body and ranged and ranged.startswith("bytes=") and ranged.endswith("-"):
                start = int(ranged[len("bytes="):-1])
            self.send_response(206 if start else 200)
            self.send_header("ETag", f'"{_etag(local)}"')
            self.send_header("X-Repo-Commit", commit)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(size - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
            self.end_headers()
            if not send_body:
                return
            hub.counting(+1)
            try:
                self._send(local, relative, size - start, start)
            finally:
                hub.counting(-1)

        def _send(self, local: Path, relative: str, send: int, start: int) -> None:
            time.sleep(hub.delay_s)
            if relative in hub.cut:
                hub.cut.discard(relative)
                send //= 2
                self.close_connection = True
            with open(local, "rb") as handle:
                handle.seek(start)
                while send > 0 and (chunk := handle.read(min(send, 1 << 20))):
                    self.wfile.write(chunk)
                    send -= len(chunk)
            self.wfile.flush()

    return Handler
