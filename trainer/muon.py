"""Muon for the block matrices, Adam for embeddings and scalars: the baseline's split.

Muon orthogonalizes each matrix's Nesterov momentum with five Newton-Schulz steps in
bf16: Keller Jordan's fixed quintic (`standard`) or the Polar Express per-step minimax
quintics (`polar_express`); MuonEq-R (`muoneq_r`) first scales every row of the momentum
to unit norm. MUON_VARIANT picks one, or `polar_express_muoneq_r` for both. Under data parallelism each rank orthogonalizes every world_size-th matrix only;
one all-reduce of the flat bf16 update buffer then hands every rank all updates (the
other ranks contribute zeros, so the sum is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from trainer.model import GPT, is_control_tensor, name_patterns

# Quintic Newton-Schulz coefficients (Keller Jordan's Muon): push singular values near 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_EPS = 1e-7
# Polar Express (Amsel, Persson, Musco, Gower 2025), 5 steps with a 2% safety factor on
# the spectral-norm bound; steps past the fifth reuse the last polynomial.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_SAFETY = 1.02
MUON_VARIANTS = ("standard", "polar_express", "muoneq_r", "polar_express_muoneq_r")


def newton_schulz5(grad: Tensor, steps: int, polar_express: bool = False) -> Tensor:
    """An approximately orthogonal matrix with the row/column space of `grad`, in bf16."""
    x = grad.bfloat16()
    if polar_express:
        x /= x.norm() * POLAR_EXPRESS_SAFETY + NS_EPS
    else:
        x /= x.norm() + NS_EPS
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T  # iterate on the wide side: A = X X^T is the smaller square
    for step in range(steps):
        if polar_express:
            a, b, c = POLAR_EXPRESS_COEFFICIENTS[min(step, len(POLAR_EXPRESS_COEFFICIENTS) - 1)]
        else:
            a, b, c = NS_COEFFICIENTS
        gram = x @ x.T
        poly = b * gram + c * gram @ gram
        x = a * x + poly @ x
    return x.T if tall else x


def row_normalized(grad: Tensor) -> Tensor:
    """MuonEq-R: every row scaled to unit L2 norm (zero rows stay zero)."""
    return grad / grad.norm(dim=1, keepdim=True).clamp_min(NS_EPS)


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
        variant: str = "standard",
    ):
        if variant not in MUON_VARIANTS:
            raise ValueError(f"MUON_VARIANT={variant!r} is not one of {list(MUON_VARIANTS)}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            backend_steps=backend_steps,
            nesterov=nesterov,
            weight_decay=weight_decay,
            variant=variant,
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
        variant = group.get("variant", "standard")
        if variant.endswith("muoneq_r"):
            g = row_normalized(g)
        g = Muon.orthogonalize(g, group["backend_steps"], variant.startswith("polar_express"))
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
    control = name_patterns(model.shape.control_tensor_name_patterns)
    matrices = [p for n, p in named if p.ndim == 2 and not is_control_tensor(n, control)]
    scalars = [p for n, p in named if p.ndim < 2 or is_control_tensor(n, control)]
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
        variant=config.muon_variant,
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
