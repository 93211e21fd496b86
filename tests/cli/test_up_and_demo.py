"""The README's main job and `caddie up`, run as a user runs them: as subprocesses."""

import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from cli.stack import PortBusy, Stack
from server.config import Settings
from tests.sshd import free_port

pytestmark = pytest.mark.slow
CADDIE = [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parents[2]


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CADDIE_DATABASE_URL", "CADDIE_REDIS_URL"}}
    return {**env, "CADDIE_DATA_DIR": str(data_dir)}


HOLD = """
import http.server, sys
class Other(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b'{"status": "ok"}' if self.path == "/healthz" else b'{"detail": "sign in"}'
        self.send_response(200 if self.path == "/healthz" else 401)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Other)
print("listening", flush=True)
server.serve_forever()
"""


@pytest.fixture
def other_service():
    """(port, pid) of another program's HTTP server whose /healthz answers 200 like Caddie's."""
    port = free_port()
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(port)], stdout=subprocess.PIPE, text=True)
    assert other.stdout is not None and other.stdout.readline().strip() == "listening"
    yield port, other.pid
    other.kill()
    other.wait()


def test_demo_trains_three_seeds_and_prints_the_leaderboard(tmp_path: Path, other_service) -> None:
    data_dir = tmp_path / "caddie"
    busy, other_pid = other_service  # the demo's port is taken: it says by whom and moves on
    # The path, not the scores, is checked: 12 steps of the tiny preset instead of its 60, and
    # the worker looks at a run every 0.25 s instead of every 2 s (the tiny runs last seconds).
    env = {**embedded_env(data_dir), "CADDIE_POLL_INTERVAL_S": "0.25"}
    done = subprocess.run([*CADDIE, "demo", "--port", str(busy), "--timeout", "400", "--iterations", "12"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    moved = re.search(rf"port {busy} is already in use by PID {other_pid} \(.*\); the demo uses port (\d+)",
                      done.stdout)
    assert moved and int(moved.group(1)) != busy, done.stdout[:2000]
    rows = re.findall(r"^\s+(\d+)\s+succeeded\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)", done.stdout, re.M)
    assert sorted(int(r[0]) for r in rows) == [42, 1337, 2025]
    assert all(0 < float(bpb) < 8 for _, bpb, _, _ in rows)
    assert re.search(r"mean val_bpb [\d.]+ ± [\d.]+ over 3 seeds; .*record-eligible: no", done.stdout)
    # The demo's tiny preset has no training cap: the non-record track, which waives the
    # hardware and time rules but not the full validation split.
    assert "not a full official validation split" in done.stdout and "8×H100" not in done.stdout

    # The shards it wrote are in the official format: 256 int32 header, then uint16 tokens.
    (val_shard,) = (data_dir / "demo" / "data" / "datasets").glob("*/fineweb_val_000000.bin")
    magic, version, n_tokens = struct.unpack("<3i", val_shard.read_bytes()[:12])
    assert (magic, version) == (20240520, 1)
    assert val_shard.stat().st_size == 256 * 4 + 2 * n_tokens
    # --iterations reached each seed's trainer.
    logs = sorted((data_dir / "pods").glob("run-*/train.log"))
    assert len(logs) == 3 and all("step:12/12 val_loss:" in log.read_text() for log in logs)


def test_up_serves_the_api_and_stops_its_processes_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    up = subprocess.Popen([*CADDIE, "up", "--port", str(port)], cwd=REPO,
                          env=embedded_env(tmp_path / "caddie"), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("caddie up did not answer /healthz in 60 s")
        assert health["status"] == "ok" and len(health["instance"]) == 32  # this start's nonce
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/docs", timeout=5) as r:
            assert r.status == 200 and b"swagger" in r.read().lower()
        children = subprocess.run(["pgrep", "-P", str(up.pid)], capture_output=True, text=True,
                                  check=False).stdout.split()
        assert len(children) == 3, children  # API server, worker, beat
        # /healthz answers a moment before `up` prints its banner: Ctrl-C only after the banner.
        assert up.stdout is not None
        lines = []
        stuck = threading.Timer(60, os.killpg, (up.pid, signal.SIGKILL))  # no banner: fail, not hang
        stuck.start()
        for line in up.stdout:
            lines.append(line)
            if "Caddie is up at" in line:
                break
        stuck.cancel()
        os.killpg(up.pid, signal.SIGINT)
        rest, _ = up.communicate(timeout=60)
        out = "".join(lines) + rest
        assert up.returncode == 0, out
        assert "Caddie is up at" in out and "SQLite" in out and "filesystem transport" in out
        assert (tmp_path / "caddie" / "caddie.db").is_file()  # migrated on start
        assert all(_gone(pid) for pid in children)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)


def test_up_on_a_busy_port_stops_and_names_the_process_holding_it(tmp_path: Path, other_service) -> None:
    busy, other_pid = other_service
    done = subprocess.run([*CADDIE, "up", "--port", str(busy)], cwd=REPO, env=embedded_env(tmp_path / "c"),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert "Caddie is up" not in done.stdout
    assert f"port {busy} on 127.0.0.1 is already in use by PID {other_pid} (" in done.stderr, done.stderr
    assert "pick another port with --port" in done.stderr and "Traceback" not in done.stderr


def test_a_health_answer_from_another_server_is_not_taken_for_ours(tmp_path: Path, other_service) -> None:
    # The other server took the port after the check: its 200 /healthz lacks this start's nonce.
    busy, other_pid = other_service
    stack = Stack(Settings(data_dir=tmp_path), port=busy)
    with pytest.raises(PortBusy, match=rf"something else answers .*/healthz.*PID {other_pid}"):
        stack.wait_healthy(timeout_s=10)


def _gone(pid: str) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (PID 1 here may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
