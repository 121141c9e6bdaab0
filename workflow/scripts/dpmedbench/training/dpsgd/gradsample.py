"""Per-example gradients, in every mode DP-SGD can use (``grad_sample_mode``):

* ``ew``, ``hooks``, ``functorch``: Opacus's ``GradSampleModule`` variants. ``ew`` (expanded weights) is the
  fastest of them on the 2-core CPU machines at 224 px, batch 32: 1.85-2.0x a non-private step.
* ``vmap``: ``torch.func.vmap(grad(...))`` over the batch, written into ``p.grad_sample`` for Opacus's optimizer
  (as Opacus's own ``no_op`` mode expects): 2.04x there, and the most memory.
* ``bk`` (default): book-keeping clipping with mixed ghost norms (:mod:`.bookkeeping`); about 1.2x a non-private
  step there (1.8x on an H100), with a third of ``ew``'s extra memory.

Each mode gives a :data:`GradSampler`: (inputs, labels) -> (per-example losses, logits), which leaves every
trainable parameter's per-example gradients in ``p.grad_sample`` (``bk``: their clipped sum in ``p.clipped_sum``)
for the optimiser of :mod:`.step`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from opacus.grad_sample.utils import wrap_model
from opacus.validators import ModuleValidator
from torch import nn

from .bookkeeping import BookKeeping

GradSampleMode = Literal["vmap", "hooks", "ew", "functorch", "bk"]


GRAD_SAMPLE_MODES = ("vmap", "hooks", "ew", "functorch", "bk")


#: (inputs, labels) -> (per-example losses, logits); sets ``p.grad_sample`` (``bk``: ``p.clipped_sum``) on every
#: trainable parameter.
GradSampler = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def validate_for_dp(model: nn.Module) -> None:
    """Raise if Opacus cannot train ``model`` privately (e.g. it still has BatchNorm)."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError(f"model cannot be trained with DP-SGD: {errors}")


def make_grad_sampler(
    model: nn.Module,
    mode: GradSampleMode,
    *,
    max_grad_norm: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[nn.Module, GradSampler]:
    """The module to call for forward passes and a function that computes per-example gradients (``bk``: the
    clipped sum of them, which needs ``max_grad_norm``). ``autocast_dtype`` (``bk`` only): the autocast dtype of
    the forward and backward passes; norms and clipping stay in float32.

    For Opacus modes the returned module is Opacus's wrapper; for ``vmap`` and ``bk`` it is ``model`` itself.
    """
    if mode == "bk":
        if max_grad_norm is None:
            raise ValueError("grad_sample_mode 'bk' clips while it differentiates: it needs max_grad_norm")
        return model, BookKeeping(model, max_grad_norm=max_grad_norm, autocast_dtype=autocast_dtype)
    if autocast_dtype is not None:
        raise ValueError(
            f"grad_sample_mode {mode!r} computes per-example gradients and their norms in the autocast dtype; "
            f"only 'bk' keeps them in float32 under autocast: use 'bk' or precision float32"
        )
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
