"""`caddie doctor`'s RunPod lines: the key, balance, spend limit, GPU stock and image.

Read-only GraphQL queries only (`myself`, `gpuTypes`): nothing is created, nothing is spent.
RunPod's words come through the worker's RunPodAPI (imported when a key is set, as the ssh
check imports the worker's key loader), which keeps the key out of every message.
"""

import re
from collections.abc import Callable, Iterator
from typing import Any

from server import costs
from server.config import Settings
from server.eligibility import MAX_EVAL_SECONDS, MAX_TRAIN_SECONDS

ACCOUNT = "query { myself { clientBalance currentSpendPerHr spendLimit } }"
GPU_STOCK = ("query stock($gpu: String, $count: Int, $center: String) { gpuTypes(input: {id: $gpu}) "
             "{ id displayName lowestPrice(input: {gpuCount: $count, dataCenterId: $center}) "
             "{ stockStatus uninterruptablePrice } } }")
# RunPod's PyTorch images: runpod/pytorch:2.8.0-py3.11-cuda12.8.1-cudnn-devel-ubuntu22.04 (the
# older 1.0.x-cu1281-torch280-... naming is read too).
_TAG_TORCH = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?-py([\d.]+)-cuda([\d.]+)")
_TAG_TORCH_NEW = re.compile(r"cu(\d{3,4})-torch(\d)(\d{1,2})(\d)")


class Failed(Exception):
    pass


class RunPodChecks:
    """One line each; `myself` is asked once for the key, balance and spend-limit lines."""

    def __init__(self, settings: Settings) -> None:
        from worker.providers.runpod import RunPodAPI

        self.settings = settings
        self.api = RunPodAPI(settings)
        self._me: dict[str, Any] | None = None
        self._failed: str | None = None

    def lines(self) -> Iterator[tuple[str, Callable[[], str]]]:
        yield "runpod key", self.key
        yield "runpod balance", self.balance
        yield "runpod spend limit", self.spend_limit
        yield "runpod gpu", self.gpu
        yield "runpod image", self.image

    def myself(self) -> dict[str, Any]:
        from worker.errors import StepFailed
        from worker.providers import RetryLater

        if self._failed is not None:  # said once on the key's line; the others only point to it
            raise Failed(f"not asked: {self._failed[:80]}")
        if self._me is None:
            try:
                self._me = self.api.graphql(ACCOUNT, {}, what="myself").get("myself") or {}
            except (StepFailed, RetryLater) as exc:
                self._failed = str(exc)
                raise Failed(self._failed) from None
        return self._me

    def key(self) -> str:
        self.myself()
        where = "CADDIE_RUNPOD_API_KEY" if self.settings.runpod_api_key else "CADDIE_RUNPOD_API_KEY_FILE"
        return f"RunPod accepts the key from {where} (read-only query `myself`)"

    def one_pod(self) -> tuple[float, float]:
        """($/hour, $ of one run's pod over its whole life) at the configured price."""
        price = self.settings.runpod_price_per_hour
        life_s = (MAX_TRAIN_SECONDS + MAX_EVAL_SECONDS + self.settings.pod_margin_s
                  + self.settings.pod_fetch_allowance_s)
        return price, costs.estimate(price, life_s)

    def balance(self) -> str:
        me = self.myself()
        if me.get("clientBalance") is None:
            raise Failed("RunPod did not say the account's balance")
        balance, spend = float(me["clientBalance"]), float(me.get("currentSpendPerHr") or 0)
        price, cost = self.one_pod()
        told = f"${balance:,.2f}, spending ${spend:,.2f}/hour now"
        if balance < cost:
            raise Failed(f"{told}: below one run's pod at most (${cost:,.2f}: ${price:,.2f}/hour "
                         "for 20 min of train + eval, the margin and the data download); add credit first")
        return f"{told}; one run's pod costs at most ${cost:,.2f} (${price:,.2f}/hour, CADDIE_RUNPOD_PRICE_PER_HOUR)"

    def spend_limit(self) -> str:
        limit = self.myself().get("spendLimit")
        if limit is None:
            return "RunPod did not say the account's spend limit"
        limit, price = float(limit), self.settings.runpod_price_per_hour
        pods = int(limit // price) if price > 0 else self.settings.max_pods
        if pods < 1:
            raise Failed(f"${limit:,.2f}/hour is below one pod at ${price:,.2f}/hour: RunPod refuses the start; "
                         "ask RunPod to raise it")
        fits = f"${limit:,.2f}/hour holds {pods} pod(s) at ${price:,.2f}/hour"
        if pods < self.settings.max_pods:
            return f"{fits}: set CADDIE_MAX_PODS={pods} (it is {self.settings.max_pods}), or RunPod refuses the rest"
        return f"{fits}; CADDIE_MAX_PODS is {self.settings.max_pods}"

    def gpu(self) -> str:
        from worker.errors import StepFailed
        from worker.providers import RetryLater

        gpu, count = self.settings.runpod_gpu_type, self.settings.runpod_gpu_count
        centers: list[str | None] = [c.strip() for c in self.settings.runpod_data_centers.split(",")
                                     if c.strip()] or [None]
        stock: list[str] = []
        for center in centers:
            try:
                types = self.api.graphql(GPU_STOCK, {"gpu": gpu, "count": count, "center": center},
                                         what="gpuTypes").get("gpuTypes") or []
            except (StepFailed, RetryLater) as exc:
                raise Failed(str(exc)) from None
            if not types:
                raise Failed(f"RunPod knows no GPU type {gpu!r} (CADDIE_RUNPOD_GPU_TYPE)")
            status = (types[0].get("lowestPrice") or {}).get("stockStatus")
            stock.append(f"{center or 'any data centre'}: {status or 'none free'}")
        wanted = f"{count} x {gpu} on {self.settings.runpod_cloud} cloud"
        if not any(s.split(": ")[1] != "none free" for s in stock):
            raise Failed(f"{wanted}: none free now ({'; '.join(stock)}; CADDIE_RUNPOD_DATA_CENTERS)")
        return f"{wanted}: {'; '.join(stock)}"

    def image(self) -> str:
        from worker.providers.runpod import MIN_TORCH

        image = self.settings.runpod_image
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        found = _TAG_TORCH.match(tag)
        if found:
            torch = (int(found[1]), int(found[2]))
            said = f"torch {found[1]}.{found[2]}{'.' + found[3] if found[3] else ''}, CUDA {found[5]}, Python {found[4]}"
        elif newer := _TAG_TORCH_NEW.search(tag):
            torch = (int(newer[2]), int(newer[3]))
            said = f"torch {newer[2]}.{newer[3]}.{newer[4]}, CUDA {newer[1][:2]}.{newer[1][2:]}"
        else:
            return (f"{image}: its tag does not say its torch; the pod's preflight checks it "
                    f"(the trainer needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]})")
        if torch < MIN_TORCH:
            raise Failed(f"{image} has {said}; the trainer needs torch >= {MIN_TORCH[0]}.{MIN_TORCH[1]}: "
                         "set CADDIE_RUNPOD_IMAGE to a newer RunPod PyTorch image")
        return f"{image}: {said}"
