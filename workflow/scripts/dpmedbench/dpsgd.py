"""DP-SGD pieces: per-example gradients in several modes, Opacus's DPOptimizer for clipping and noise, and
the accountants.

Per-example gradient modes (``grad_sample_mode``):

* ``ew``, ``hooks``, ``functorch``: Opacus's ``GradSampleModule`` variants. ``ew`` (expanded weights) is the
  fastest of them on the 2-core CPU machines at 224 px, batch 32: 1.85-2.0x a non-private step.
* ``vmap``: ``torch.func.vmap(grad(...))`` over the batch, written into ``p.grad_sample`` for Opacus's optimizer
  (as Opacus's own ``no_op`` mode expects): 2.04x there, and the most memory.
* ``bk`` (default): book-keeping clipping with mixed ghost norms (:mod:`dpmedbench.bookkeeping`); about 1.2x a
  non-private step there (1.8x on an H100), with a third of ``ew``'s extra memory.

Whatever the mode, noise and accounting are Opacus's: :class:`opacus.optimizers.DPOptimizer` clips each
example's gradient to ``max_grad_norm`` (``bk``: :class:`BookKeepingDPOptimizer` takes the clipped sums the
sampler computed with the same clip factors, ``min(1, C / (norm + 1e-6))``), sums, adds N(0, (sigma C)^2)
noise and divides by the expected batch size; RDP and PRV accountants track the steps.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

from .bookkeeping import BookKeeping, BookKeepingDPOptimizer

GradSampleMode = Literal["vmap", "hooks", "ew", "functorch", "bk"]
GRAD_SAMPLE_MODES = ("vmap", "hooks", "ew", "functorch", "bk")
ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: (inputs, labels) -> (per-example losses, logits); sets ``p.grad_sample`` (``bk``: ``p.clipped_sum``) on every
#: trainable parameter.
GradSampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def validate_for_dp(model: nn.Module) -> None:
    """Raise if Opacus cannot train ``model`` privately (e.g. it still has BatchNorm)."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model cannot be trained with DP-SGD: {errors}")


def make_grad_sampler(
    model: nn.Module, mode: GradSampleMode, *, max_grad_norm: float | None = None
) -> tuple[nn.Module, GradSampler]:
    """The module to call for forward passes and a function that computes per-example gradients (``bk``: the
    clipped sum of them, which needs ``max_grad_norm``).

    For Opacus modes the returned module is Opacus's wrapper; for ``vmap`` and ``bk`` it is ``model`` itself.
    """
    if mode == "bk":
        if max_grad_norm is None:
            raise ValueError("grad_sample_mode 'bk' clips while it differentiates: it needs max_grad_norm")
        return model, BookKeeping(model, max_grad_norm=max_grad_norm)
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
    """Zero-row per-example gradients (and, for ``bk``, a zero clipped sum): a Poisson batch can be empty, and
    its step must still be noised and accounted like any other."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
            p.clipped_sum = torch.zeros_like(p)


def noisy_step(
    optimizer: DPOptimizer,
    sampler: GradSampler,
    model: nn.Module,
    chunks: Sequence[torch.Tensor],
    fetch: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    after_sample: Callable[[torch.Tensor], None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """One DP-SGD step on a logical batch given as physical ``chunks`` of indices (``fetch(indices)`` -> inputs,
    labels): per-example gradients chunk by chunk, every chunk but the last a skipped step that only accumulates,
    then one noisy update. An empty chunk (an empty Poisson batch) still gets its noise. As after a plain
    ``optimizer.step()``, the update's (noisy, averaged) gradient stays in ``p.grad`` until the next step; the
    per-example state is released. ``after_sample(chunk)`` runs after each chunk's per-example gradients exist,
    before they are clipped (the patient plan sums them by patient there). Returns (losses, logits, labels) of
    every non-empty chunk.

    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2))
    >>> _, sample = make_grad_sampler(model, "bk", max_grad_norm=1.0)
    >>> opt = make_optimizer(model, lr=0.1, momentum=0, weight_decay=0, noise_multiplier=0.0, max_grad_norm=1.0,
    ...                      expected_batch_size=3, generator=torch.Generator().manual_seed(0))
    >>> x, y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    >>> out = noisy_step(opt, sample, model, torch.arange(3).split(2), lambda i: (x[i], y[i]))
    >>> [len(losses) for losses, _, _ in out], model[1].weight.grad.shape
    ([2, 1], torch.Size([2, 4]))
    """
    out = []
    for i, chunk in enumerate(chunks):
        optimizer.zero_grad(set_to_none=True)  # after a skipped step Opacus keeps the accumulated sum
        if len(chunk):
            x, y = fetch(chunk)
            losses, logits = sampler(x, y)
            out.append((losses, logits, y))
            if after_sample is not None:
                after_sample(chunk)
        else:
            empty_grad_samples(model)
        if i < len(chunks) - 1:
            optimizer.signal_skip_step(do_skip=True)
        optimizer.step()
    for p in optimizer.params:
        p.grad_sample = None
    return out


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
    grad_sample_mode: str = "bk",
) -> DPOptimizer:
    base = torch.optim.SGD(
        [p for p in model.parameters() if p.requires_grad], lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    optimizer_class = BookKeepingDPOptimizer if grad_sample_mode == "bk" else DPOptimizer
    return optimizer_class(
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
    """Epsilon spent by the steps in ``history`` ([(noise_multiplier, sample_rate, steps)]); infinite once a
    step with a noise multiplier of 0 (no noise: no guarantee) has run.

    >>> epsilon([(0.0, 0.1, 10)], delta=1e-5, accountant="prv")
    inf
    """
    if not history:
        return 0.0
    if any(sigma == 0 and rate > 0 and steps > 0 for sigma, rate, steps in history):
        return math.inf  # the accountants divide by sigma (PRV fails outright)
    acc = ACCOUNTANTS[accountant]()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))


def group_epsilon(history: list[tuple[float, float, int]], *, delta: float, group_size: int) -> float:
    """Epsilon at ``delta`` for any group of ``group_size`` examples (a patient with that many images), from the
    run's RDP by RDP group privacy (Mironov 2017, Proposition 2): an (alpha, eps)-RDP mechanism is
    (alpha / 2^c, 3^c eps)-RDP for groups of 2^c >= ``group_size`` when alpha >= 2^(c+1); converted to
    (epsilon, delta) as Opacus's RDP accountant converts (Balle et al. 2020), minimised over the orders. A group of
    one gets the RDP accountant's epsilon.

    >>> history = [(1.0, 0.01, 1000)]
    >>> one, two = group_epsilon(history, delta=1e-5, group_size=1), group_epsilon(history, delta=1e-5, group_size=2)
    >>> abs(one - epsilon(history, delta=1e-5, accountant="rdp")) < 0.05 and two > 2 * one
    True
    >>> group_epsilon([], delta=1e-5, group_size=4)
    0.0
    """
    if not history:
        return 0.0
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

    c = math.ceil(math.log2(max(1, group_size)))
    orders = np.concatenate([np.linspace(1.25, 10.0, 36), np.arange(11.0, 257.0)])  # alpha / 2^c
    if c:
        orders = orders[orders >= 2.0]  # alpha >= 2^(c+1)
    rdp = np.zeros_like(orders)
    with warnings.catch_warnings():  # large orders overflow to inf/nan, dropped below; the bound stays valid
        warnings.simplefilter("ignore")
        for sigma, q, steps in history:
            rdp += compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders * 2**c)
        finite = np.isfinite(rdp)
        if not finite.any():
            return math.inf
        eps, _ = get_privacy_spent(orders=orders[finite], rdp=3**c * rdp[finite], delta=delta)
    return float(eps)
