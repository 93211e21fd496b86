"""The /api router: every resource router under one prefix."""

from fastapi import APIRouter

from server.api import experiments, leaderboard, runs

api_router = APIRouter(prefix="/api")
api_router.include_router(experiments.router)
api_router.include_router(runs.router)
api_router.include_router(leaderboard.router)
