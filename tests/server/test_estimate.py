"""GET /api/estimate: seconds and dollars of an experiment before it is submitted."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.config import get_settings


def estimate(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/estimate", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_runpod_seeds_at_the_configured_price(client: TestClient) -> None:
    body = estimate(client, preset="baseline", provider="runpod", seeds=3)

    # 600 s training cap + 600 s evaluation cap + 300 s grace + 900 s pod margin, at
    # $21.52/hour for 8 GPUs.
    assert body["seconds_per_seed"] == 2400.0
    assert body["total_seconds"] == 7200.0
    assert (body["price_per_hour"], body["gpu_count"]) == (21.52, 8)
    assert body["usd_per_seed"] == pytest.approx(14.35)
    assert body["total_usd"] == pytest.approx(43.04)
    assert body["price_source"].startswith("CADDIE_RUNPOD_PRICE_PER_HOUR: $21.52/hour")


def test_price_follows_the_setting_gpus_and_training_cap(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADDIE_RUNPOD_PRICE_PER_HOUR", "36")
    monkeypatch.setenv("CADDIE_RUN_GRACE_S", "0")
    monkeypatch.setenv("CADDIE_POD_MARGIN_S", "60")
    get_settings.cache_clear()

    half = estimate(client, provider="runpod", seeds=2, gpu_count=4, max_wallclock_seconds=1200)

    assert (half["price_per_hour"], half["gpu_count"]) == (18.0, 4)
    assert half["seconds_per_seed"] == 1860.0  # 1200 s training + 600 s evaluation + 60 s
    assert (half["usd_per_seed"], half["total_usd"]) == (9.3, 18.6)
    assert half["price_source"].endswith("for 8 GPUs, scaled to 4")


def test_an_ablation_pays_for_every_seed_of_every_arm(client: TestClient) -> None:
    one = estimate(client, preset="baseline", provider="runpod", seeds=3)
    ablation = estimate(client, preset="baseline", provider="runpod", seeds=3, arms=4)

    assert (ablation["arms"], ablation["runs"], one["arms"], one["runs"]) == (4, 12, 1, 3)
    assert ablation["usd_per_seed"] == one["usd_per_seed"]
    assert ablation["total_seconds"] == 2400.0 * 12
    assert ablation["total_usd"] == pytest.approx(172.16)  # 12 pods of 2400 s at $21.52/hour


@pytest.mark.parametrize("provider", ["local", "ssh"])
def test_own_hosts_cost_nothing(client: TestClient, provider: str) -> None:
    body = estimate(client, provider=provider, seeds=5, preset="tiny")

    assert (body["usd_per_seed"], body["total_usd"], body["price_per_hour"]) == (0, 0, 0)
    assert body["seeds"] == 5
    assert "no charge" in body["price_source"]


def test_bad_parameters_are_422_naming_them(client: TestClient) -> None:
    for params, name in [({"preset": "nope"}, "preset"), ({"provider": "aws"}, "provider"),
                         ({"seeds": 0}, "seeds"), ({"seeds": "three"}, "seeds"),
                         ({"gpu_count": 9}, "gpu_count"), ({"arms": 0}, "arms"),
                         ({"arms": 18}, "arms"),
                         ({"max_wallclock_seconds": -1}, "max_wallclock_seconds")]:
        response = client.get("/api/estimate", params=params)
        assert response.status_code == 422, params
        assert ["query", name] in [p["loc"] for p in response.json()["detail"]], response.text
    unknown = client.get("/api/estimate", params={"preset": "nope"}).json()["detail"][0]
    assert "unknown preset 'nope'" in unknown["msg"]
