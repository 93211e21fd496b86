"""Muon for the block matrices, Adam for embeddings and scalars: the baseline's split.

Muon orthogonalizes each matrix's Nesterov momentum with five Newton-Schulz steps in
bf16. Under data parallelism each rank orthogonalizes every world_size-th matrix only;
one all-reduce of the flat bf16 update buffer then hands every rank all updates (the
other ranks contribute zeros, so the sum is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from trainer.model import GPT, is_control_tensor

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon): push singular values near 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7


def newton_schulz5(grad: Tensor, steps: int) -> Tensor:
    """An approximately orthogonal matrix with the row/column space of `grad`, in bf16."""
    a, b, c = NS_COEFFICIENTS
    x = grad.bfloat16()
    x /= x.norm() + NS_EPS
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T  # iterate on the wide side: A = X X^T is the smaller square
    for _ in range(steps):
        gram = x @ x.T
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalized per matrix."""

    # Replaced by a torch.compile'd newton_schulz5 on CUDA (see `compile_newton_schulz`).
    orthogonalize = staticmethod(newton_schulz5)

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        backend_steps: int,
        nesterov: bool = True,
        weight_decay: float = 0.0,
    ):
        defaults = dict(
            lr=lr,
            momentum=momentum,
            backend_steps=backend_steps,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        distributed = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params = group["params"]
            if not params:
                continue
            flat = torch.zeros(
                sum(int(p.numel()) for p in params), device=params[0].device, dtype=torch.bfloat16
            )
            offset = 0
            for i, p in enumerate(params):
                if i % world_size == rank and p.grad is not None:
                    flat[offset : offset + p.numel()] = self._update(p, group).reshape(-1)
                offset += p.numel()
            if distributed:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            decay = 1.0 - group["lr"] * group.get("weight_decay", 0.0)  # decoupled, per step
            for p in params:
                update = flat[offset : offset + p.numel()].view_as(p).to(dtype=p.dtype)
                if decay != 1.0:
                    p.mul_(decay)
                p.add_(update, alpha=-group["lr"])
                offset += p.numel()
        return loss

    def _update(self, p: Tensor, group: dict) -> Tensor:
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(p.grad)
        buf = state["momentum_buffer"]
        buf.mul_(group["momentum"]).add_(p.grad)
        g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else p.grad
        g = Muon.orthogonalize(g, group["backend_steps"])
        # Tall matrices get a larger step so the update's RMS matches square ones.
        return g * max(1, g.size(0) / g.size(1)) ** 0.5


def compile_newton_schulz() -> None:
    """Use a compiled Newton-Schulz from now on (CUDA; the baseline does the same)."""
    Muon.orthogonalize = staticmethod(torch.compile(newton_schulz5))


@dataclass
class OptimizerSet:
    """The baseline's optimizers, in its step order: token (Adam), [head (Adam)], Muon, scalars."""

    optimizers: list[torch.optim.Optimizer]
    muon: Muon

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def scale_lr(self, scale: float) -> None:
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * scale

    def set_muon_momentum(self, momentum: float) -> None:
        for group in self.muon.param_groups:
            group["momentum"] = momentum


def build_optimizers(model: GPT, config, fused: bool) -> OptimizerSet:
    """Group parameters as the baseline does and build its optimizers.

    2-D block matrices → Muon (matrix_lr, decoupled MUON_WEIGHT_DECAY); the token
    embedding → Adam (tied_embed_lr or embed_lr); an untied head → Adam (head_lr);
    vectors, scalars and control tensors of the blocks plus the skip weights → Adam
    (scalar_lr). Switch-added parameters join the same groups: the BigramHash table the
    token group, its projection Muon, the SmearGate the scalars.
    """
    named = list(model.blocks.named_parameters())
    matrices = [p for name, p in named if p.ndim == 2 and not is_control_tensor(name)]
    scalars = [p for name, p in named if p.ndim < 2 or is_control_tensor(name)]
    if model.skip_weights.numel() > 0:
        scalars.append(model.skip_weights)
    if model.smear_gate is not None:
        scalars.append(model.smear_gate)
    if model.bigram_proj is not None:
        matrices.append(model.bigram_proj.weight)
    adam = dict(betas=(config.beta1, config.beta2), eps=config.adam_eps, fused=fused)
    token_lr = config.tied_embed_lr if config.tie_embeddings else config.embed_lr
    token_groups = [{"params": [model.tok_emb.weight], "lr": token_lr, "base_lr": token_lr}]
    if model.bigram_emb is not None:
        token_groups.append(
            {"params": [model.bigram_emb.weight], "lr": token_lr, "base_lr": token_lr}
        )
    token = torch.optim.Adam(token_groups, **adam)
    muon = Muon(
        matrices,
        lr=config.matrix_lr,
        momentum=config.muon_momentum,
        backend_steps=config.muon_backend_steps,
        weight_decay=config.muon_weight_decay,
    )
    for group in muon.param_groups:
        group["base_lr"] = config.matrix_lr
    scalar = torch.optim.Adam(
        [{"params": scalars, "lr": config.scalar_lr, "base_lr": config.scalar_lr}], **adam
    )
    optimizers: list[torch.optim.Optimizer] = [token, muon, scalar]
    if model.lm_head is not None:
        head = torch.optim.Adam(
            [{"params": [model.lm_head.weight], "lr": config.head_lr, "base_lr": config.head_lr}],
            **adam,
        )
        optimizers.insert(1, head)
    return OptimizerSet(optimizers=optimizers, muon=muon)
