"""DP-SGD pieces: per-example gradients in several modes, Opacus's DPOptimizer for clipping and noise, and
the accountants.

Per-example gradient modes (``grad_sample_mode``):

* ``ew`` (default), ``hooks``, ``functorch``: Opacus's ``GradSampleModule`` variants. ``ew`` (expanded
  weights) measured fastest on the 2-core CPU machines at 224 px, batch 32: 1.85x a non-private step.
* ``vmap``: ``torch.func.vmap(grad(...))`` over the batch, written into ``p.grad_sample`` for Opacus's optimizer
  (as Opacus's own ``no_op`` mode expects): 2.04x there, and the most memory.

Whatever the mode, clipping, noise and accounting are Opacus's: :class:`opacus.optimizers.DPOptimizer` clips each
example's gradient to ``max_grad_norm``, sums, adds N(0, (sigma C)^2) noise and divides by the expected batch
size; RDP and PRV accountants track the steps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

GradSampleMode = Literal["vmap", "hooks", "ew", "functorch"]
GRAD_SAMPLE_MODES = ("vmap", "hooks", "ew", "functorch")
ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: (model, inputs, labels) -> (per-example losses, logits); sets ``p.grad_sample`` on every trainable parameter.
GradSampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def validate_for_dp(model: nn.Module) -> None:
    """Raise if Opacus cannot train ``model`` privately (e.g. it still has BatchNorm)."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model cannot be trained with DP-SGD: {errors}")


def make_grad_sampler(model: nn.Module, mode: GradSampleMode) -> tuple[nn.Module, GradSampler]:
    """The module to call for forward passes and a function that computes per-example gradients.

    For Opacus modes the returned module is Opacus's wrapper; for ``vmap`` it is ``model`` itself.
    """
    if mode == "vmap":
        from torch.func import functional_call, grad, vmap

        names = [n for n, p in model.named_parameters() if p.requires_grad]
        params_by_name = dict(model.named_parameters())

        def sample(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            params = {n: params_by_name[n].detach() for n in names}
            buffers = dict(model.named_buffers())

            def loss_one(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
                logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
                loss = F.cross_entropy(logits, yi.unsqueeze(0))
                return loss, (loss.detach(), logits.detach()[0])

            grads, (losses, logits) = vmap(grad(loss_one, has_aux=True), in_dims=(None, 0, 0))(params, x, y)
            for n in names:
                params_by_name[n].grad_sample = grads[n]
            return losses, logits

        return model, sample
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(f"unknown grad_sample_mode {mode!r}; known: {GRAD_SAMPLE_MODES}")
    kwargs = {"force_functorch": True} if mode == "functorch" else {}
    opacus_mode = "hooks" if mode == "functorch" else mode
    wrapped = wrap_model(model, grad_sample_mode=opacus_mode, batch_first=True, loss_reduction="mean", **kwargs)

    def sample_opacus(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = wrapped(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        losses.mean().backward()
        return losses.detach(), logits.detach()

    return wrapped, sample_opacus


def empty_grad_samples(model: nn.Module) -> None:
    """Zero-row per-example gradients: a Poisson batch can be empty, and its step must still be noised and
    accounted like any other."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)


def make_optimizer(
    model: nn.Module,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    generator: torch.Generator,
) -> DPOptimizer:
    base = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    return DPOptimizer(
        base,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
        generator=generator,
    )


def calibrate_noise(*, target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """Smallest noise multiplier (to Opacus's 0.01 tolerance in epsilon) reaching ``target_epsilon`` at
    ``delta`` after ``steps`` Poisson-sampled steps, by ``accountant`` ("prv" or "rdp")."""
    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.01,
        )
    )


def epsilon(history: list[tuple[float, float, int]], *, delta: float, accountant: str) -> float:
    """Epsilon spent by the steps in ``history`` ([(noise_multiplier, sample_rate, steps)])."""
    if not history:
        return 0.0
    acc = ACCOUNTANTS[accountant]()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))
