"""The README's main job and `caddie up`, run as a user runs them: as subprocesses."""

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

from tests.sshd import free_port

pytestmark = pytest.mark.slow
CADDIE = [sys.executable, "-m", "cli.main"]
REPO = Path(__file__).resolve().parents[2]


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"CADDIE_DATABASE_URL", "CADDIE_REDIS_URL"}}
    return {**env, "CADDIE_DATA_DIR": str(data_dir)}


def test_demo_trains_three_seeds_and_prints_the_leaderboard(tmp_path: Path) -> None:
    data_dir = tmp_path / "caddie"
    done = subprocess.run([*CADDIE, "demo", "--port", str(free_port()), "--timeout", "400"],
                          cwd=REPO, env=embedded_env(data_dir), capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+succeeded\s+([\d.]+)\s+([\d.]+)\s+([\d,]+)", done.stdout, re.M)
    assert sorted(int(r[0]) for r in rows) == [42, 1337, 2025]
    assert all(0 < float(bpb) < 8 for _, bpb, _, _ in rows)
    assert re.search(r"mean val_bpb [\d.]+ ± [\d.]+ over 3 seeds; .*record-eligible: no", done.stdout)
    assert "is not 8×H100" in done.stdout and "not a full official validation split" in done.stdout

    # The shards it wrote are in the official format: 256 int32 header, then uint16 tokens.
    (val_shard,) = (data_dir / "demo" / "data" / "datasets").glob("*/fineweb_val_000000.bin")
    magic, version, n_tokens = struct.unpack("<3i", val_shard.read_bytes()[:12])
    assert (magic, version) == (20240520, 1)
    assert val_shard.stat().st_size == 256 * 4 + 2 * n_tokens


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
                    break
            except OSError:
                time.sleep(0.3)
        else:
            raise AssertionError("caddie up did not answer /healthz in 60 s")
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


def _gone(pid: str) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet (PID 1 here may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
