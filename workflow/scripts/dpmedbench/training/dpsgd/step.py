"""The noisy step of DP-SGD, whatever the per-example gradient mode (:mod:`.gradsample`): Opacus's
:class:`opacus.optimizers.DPOptimizer` clips each example's gradient to ``max_grad_norm`` (``bk``:
:class:`.bookkeeping.BookKeepingDPOptimizer` takes the clipped sums the sampler computed with the same clip
factors, ``min(1, C / (norm + 1e-6))``), sums, adds N(0, (sigma C)^2) noise and divides by the expected batch size.
One logical batch is processed in physical chunks; the accountants (:mod:`.accounting`) count the steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from opacus.optimizers import DPOptimizer
from torch import nn

from .bookkeeping import BookKeepingDPOptimizer
from .gradsample import GradSampler


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
    >>> from dpmedbench.training.dpsgd.gradsample import make_grad_sampler
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
