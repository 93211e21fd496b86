"""What an experiment may cost, before it is submitted."""

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

from server import costs, presets
from server.config import get_settings
from server.costs import Estimate
from server.models import MAX_SEEDS, MAX_VARIANTS

router = APIRouter(prefix="/estimate", tags=["estimate"])


class EstimateQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    preset: str = Field(default="baseline", max_length=64)
    provider: Literal["local", "ssh", "runpod"] = "local"
    seeds: int = Field(default=3, ge=1, le=MAX_SEEDS)  # how many seeds
    arms: int = Field(default=1, ge=1, le=MAX_VARIANTS + 1)  # control + ablation variants
    gpu_count: int | None = Field(default=None, ge=1, le=8)
    max_wallclock_seconds: float | None = Field(default=None, gt=0, le=86_400)  # an override

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str) -> str:
        return presets.check_preset(value)


@router.get("")
def read_estimate(query: Annotated[EstimateQuery, Query()]) -> Estimate:
    """Seconds and dollars per seed and in all (`seeds` in each of `arms`: an ablation's
    control and its variants): each seed's pod for as long as it may live
    (training cap + evaluation cap + CADDIE_RUN_GRACE_S + CADDIE_POD_MARGIN_S), at
    CADDIE_RUNPOD_PRICE_PER_HOUR for
    `runpod` (scaled to `gpu_count`), and nothing for `local` and `ssh`."""
    return costs.estimate_experiment(get_settings(), **query.model_dump())
