"""docker-compose.yml is valid Compose (checked by docker-compose itself) and runs the full stack."""

import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = shutil.which("docker-compose") or "docker-compose"  # scripts/services.sh installs it


def compose_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "docker-compose.yml").write_text(text)
    (tmp_path / ".env").write_text("POSTGRES_PASSWORD=test-only\n")
    return subprocess.run([COMPOSE, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_compose_file_is_valid_and_complete(tmp_path: Path) -> None:
    result = compose_config(tmp_path, (ROOT / "docker-compose.yml").read_text())
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    services = config["services"]
    assert {"postgres", "redis", "server", "worker", "beat"} <= set(services)
    for name in ("postgres", "redis", "server", "worker"):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    beats = [n for n, s in services.items() if "beat" in " ".join(map(str, s.get("command", [])))]
    assert beats == ["beat"] and services["beat"].get("deploy", {}).get("replicas", 1) == 1
    env = services["worker"]["environment"]
    assert env["CADDIE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert env["CADDIE_REDIS_URL"].startswith("redis://redis:6379")


def test_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = (ROOT / "docker-compose.yml").read_text().replace("healthcheck:", "healthcheckk:", 1)
    result = compose_config(tmp_path, broken)
    assert result.returncode != 0
    assert "healthcheckk" in result.stderr


def test_missing_secret_fails_at_config_time(tmp_path: Path) -> None:
    (tmp_path / "docker-compose.yml").write_text((ROOT / "docker-compose.yml").read_text())
    (tmp_path / ".env").write_text("")
    result = subprocess.run([COMPOSE, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin"})
    assert result.returncode != 0
    assert "POSTGRES_PASSWORD" in result.stderr
