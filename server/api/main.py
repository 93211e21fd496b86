"""The /api router: every resource router under one prefix."""

from fastapi import APIRouter, Depends

from server.api import estimate, experiments, leaderboard, queue, reproduce, runs
from server.api.deps import read_access

api_router = APIRouter(prefix="/api", dependencies=[Depends(read_access)])
api_router.include_router(experiments.router)
api_router.include_router(runs.router)
api_router.include_router(leaderboard.router)
api_router.include_router(queue.router)
api_router.include_router(estimate.router)
api_router.include_router(reproduce.router)
