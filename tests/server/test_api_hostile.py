"""Hostile bodies for POST /api/experiments that pydantic's own checks let through: each is a
422 naming its field, and nothing is stored."""

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from server.models import Experiment, Run

BASE = '{"name": "hostile", "preset": "tiny", "seeds": [1, 2, 3], '


@pytest.mark.parametrize("tail, field", [
    # A lone surrogate is valid JSON but no UTF-8: it could be stored but never sent back.
    ('"config": {"data_path": "\\ud800"}}', "config"),
    ('"config": {"\\udc00": 1}}', "config"),
    ('"variants": [{"name": "v", "config": {"tokenizer_path": "x\\udfff"}}]}', "variants"),
    ('"reference_experiment_id": 999}', "reference_experiment_id"),
])
def test_hostile_bodies_are_422_naming_the_field(client: TestClient, session: Session, tail: str,
                                                 field: str) -> None:
    response = client.post("/api/experiments", content=BASE + tail,
                           headers={"content-type": "application/json"})

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", field]
    assert session.exec(select(Experiment)).all() == [] and session.exec(select(Run)).all() == []


def test_an_existing_reference_experiment_is_accepted(client: TestClient) -> None:
    first = client.post("/api/experiments", json={"name": "ref", "preset": "tiny", "seeds": [1]})
    assert first.status_code == 201
    second = client.post("/api/experiments", json={"name": "b", "preset": "tiny", "seeds": [1],
                                                   "reference_experiment_id": first.json()["id"]})
    assert second.status_code == 201, second.text
