"""Book-keeping DP-SGD (``grad_sample_mode: bk``): per-example clipping with mixed ghost norms (Bu et al. 2022,
2023), without holding every per-example gradient.

One backward pass computes only input gradients and records each layer's input ``a`` and output gradient ``g``.
Each example's gradient norm is then summed layer by layer, and the clipped sum sum_i c_i g_i of every parameter
is formed from the same records, with c_i = min(1, C / (||g_i|| + 1e-6)) (Opacus's clip factor).

What a layer contributes is a :class:`LayerRule` in :data:`LAYER_RULES`, keyed by layer type, with the norm and
the clipped sum side by side (as Opacus keeps one grad sampler per layer type). A convolution takes the cheaper of
two routes: its per-example gradients (early layers: many positions, few weights) or the ghost norm
||G_i U_i^T||^2 = <U_i^T U_i, G_i^T G_i> (late layers: few positions, many weights), whose clipped sum is one
ordinary weight gradient with each example's output gradient scaled by c_i.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from torch import nn


@dataclass(frozen=True)
class LayerRule:
    """How one layer type takes part in book-keeping clipping.

    ``norms(module, a, g)`` -> (what the clipped sum may reuse, (B,) squared norms of each example's gradient of
    the layer's parameters); ``clipped_sums(module, a, g, reused, clip)`` -> sum_i clip_i g_i for the weight
    (and bias), in parameter order; ``check(module)`` raises ValueError for a configuration the rule gets wrong.
    """

    norms: Callable[[Any, torch.Tensor, torch.Tensor], tuple[Any, torch.Tensor]]
    clipped_sums: Callable[[Any, torch.Tensor, torch.Tensor, Any, torch.Tensor], list[torch.Tensor]]
    check: Callable[[Any], None] = lambda module: None


LAYER_RULES: dict[type[nn.Module], LayerRule] = {}


def register_layer_rule(layer_type: type[nn.Module], rule: LayerRule) -> None:
    LAYER_RULES[layer_type] = rule


def rule_for(module: nn.Module) -> LayerRule:
    """The rule of ``module``'s type (or of its nearest registered base class); ValueError if there is none."""
    for cls in type(module).__mro__:
        if cls in LAYER_RULES:
            return LAYER_RULES[cls]
    raise ValueError(f"grad_sample_mode 'bk' does not support trainable {type(module).__name__} layers")


# ------------------------------------------------------------------------------------------------------ Linear
def _linear_norms(module: nn.Linear, a: torch.Tensor, g: torch.Tensor) -> tuple[None, torch.Tensor]:
    if a.dim() != 2:
        raise ValueError("grad_sample_mode 'bk' supports Linear layers on (batch, features) inputs only")
    n2 = (a**2).sum(1) * (g**2).sum(1)
    if module.bias is not None:
        n2 = n2 + (g**2).sum(1)
    return None, n2


def _linear_sums(module: nn.Linear, a: torch.Tensor, g: torch.Tensor, _: None, clip: torch.Tensor) -> list:
    gc = g * clip[:, None]
    return [gc.t() @ a] + ([gc.sum(0)] if module.bias is not None else [])


register_layer_rule(nn.Linear, LayerRule(_linear_norms, _linear_sums))


# --------------------------------------------------------------------------------------------------- GroupNorm
def _group_norm_norms(module: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor) -> tuple[tuple, torch.Tensor]:
    normalized = F.group_norm(a, module.num_groups, eps=module.eps)
    gw = (g * normalized).flatten(2).sum(2)
    gb = g.flatten(2).sum(2)
    return (gw, gb), (gw**2).sum(1) + (gb**2).sum(1)


def _group_norm_sums(module: nn.GroupNorm, a: torch.Tensor, g: torch.Tensor, reused: tuple, clip: torch.Tensor) -> list:
    gw, gb = reused
    return [clip @ gw, clip @ gb]


register_layer_rule(nn.GroupNorm, LayerRule(_group_norm_norms, _group_norm_sums))


# ------------------------------------------------------------------------------------------------------ Conv2d
def conv_uses_ghost(module: nn.Conv2d, positions: int) -> bool:
    """Ghost norm costs T^2 (d + p) per example, the per-example gradient T d p and B p d numbers held until the
    clip factors are known: take the ghost norm where T (d + p) < d p (ResNet-18 at 224 px: layer3 and layer4).
    At the boundary (layer3) both routes take the same time on the CPU; the ghost norm holds less."""
    d = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    p = module.out_channels
    return positions * (d + p) < d * p


def unfold(a: torch.Tensor, module: nn.Conv2d, *, strided: bool | None = None) -> torch.Tensor:
    """``F.unfold(a, ...)`` with the convolution's geometry: (B, C k_h k_w, T).

    ``strided`` (default: off the CPU): one copy of a strided view of the padded input instead. F.unfold
    launches one im2col kernel per example on CUDA (ResNet-18, batch 128 on an H100: 7,680 launches and 27 % of
    a ``bk`` step); on the CPU F.unfold is the faster of the two (2.6x on the stem). Both give the same numbers.
    """
    if not (a.device.type != "cpu" if strided is None else strided):
        return F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # type: ignore[arg-type]
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    ph, pw = module.padding  # type: ignore[misc]  # string paddings are refused by _conv_check
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    b, c, h, w = a.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sb, sc, sy, sx = a.stride()
    windows = a.as_strided((b, c, kh, kw, ho, wo), (sb, sc, sy * dh, sx * dw, sy * sh, sx * sw))
    return windows.reshape(b, c * kh * kw, ho * wo)


def per_example_conv_grads(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, *, batched: bool) -> torch.Tensor:
    """Per-example weight gradients (B, p, d) of an ungrouped convolution with input ``a`` and output gradient
    ``g``. ``batched``: one ``bmm`` over the unfolded input (one kernel, but the unfolded copy is d/C_in times
    the input); otherwise one ``conv2d_weight`` per example, which on the CPU is 2-3x faster for the early
    layers because it never materialises the unfolded input."""
    if batched:
        return torch.bmm(g.flatten(2), unfold(a, module).transpose(1, 2))
    grads = [
        torch.nn.grad.conv2d_weight(
            a[i : i + 1], module.weight.shape, g[i : i + 1], module.stride, module.padding, module.dilation
        )
        for i in range(len(a))
    ]
    return torch.stack(grads).flatten(2)


def _conv_check(module: nn.Conv2d) -> None:
    if module.groups != 1:
        raise ValueError("grad_sample_mode 'bk' supports ungrouped convolutions only")
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        raise ValueError(
            f"grad_sample_mode 'bk' supports convolutions with numeric zero padding only, not "
            f"padding={module.padding!r}, padding_mode={module.padding_mode!r}: use 'ew' or 'hooks'"
        )


def _conv_norms(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    gm = g.flatten(2)  # (B, p, T)
    if conv_uses_ghost(module, gm.shape[2]):
        u = unfold(a, module)  # (B, d, T)
        n2 = (torch.bmm(u.transpose(1, 2), u) * torch.bmm(gm.transpose(1, 2), gm)).sum((1, 2))
        piece = None
    else:
        piece = per_example_conv_grads(module, a, g, batched=a.device.type != "cpu")
        n2 = (piece**2).sum((1, 2))
    if module.bias is not None:
        n2 = n2 + (gm.sum(2) ** 2).sum(1)
    return piece, n2


def _conv_sums(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, piece: torch.Tensor | None, clip: torch.Tensor):
    if piece is not None:
        weight = torch.einsum("b,bpd->pd", clip, piece).reshape(module.weight.shape)
    else:
        weight = torch.nn.grad.conv2d_weight(
            a, module.weight.shape, g * clip.view(len(a), 1, 1, 1), module.stride, module.padding, module.dilation
        )
    return [weight] + ([(g.flatten(2).sum(2) * clip[:, None]).sum(0)] if module.bias is not None else [])


register_layer_rule(nn.Conv2d, LayerRule(_conv_norms, _conv_sums, _conv_check))


# ----------------------------------------------------------------------------------------------------- sampler
def module_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's parameters: what its per-example norms and clipped sums are computed in."""
    return next(p.dtype for p in model.parameters())


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """Full float32 for CUDA matrix products and cuDNN convolutions (restored after). PyTorch lets cuDNN use
    TF32 by default, which keeps 10 mantissa bits: norms and clipped sums computed that way can exceed the
    clipping bound the accountant assumes by about 0.1 %."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class BookKeeping:
    """The ``bk`` sampler: called with a batch, it leaves ``p.clipped_sum`` = sum_i min(1, C / (||g_i|| + 1e-6))
    g_i on every trainable parameter and returns (per-example losses, logits).

    Every layer with trainable parameters needs a rule in :data:`LAYER_RULES` (a DP ResNet: ``Conv2d``,
    ``Linear``, ``GroupNorm``; ``FrozenBatchNorm2d`` has no trainable parameters). Other models are refused.
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.autocast_dtype = autocast_dtype  # forward and backward only: norms and clipped sums are float32
        self.layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        self.rules = {m: rule_for(m) for m in self.layers}
        for m, rule in self.rules.items():
            rule.check(m)
        self._records: list[list] = []
        self._active = False  # record only during this sampler's own forward pass, not during evaluation
        for m in self.layers:
            m.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if not self._active:
            return None
        if not output.requires_grad:
            # The first layer: nothing before it needs a gradient, so the backward pass stops at its output
            # instead of differentiating the input images.
            output = output.detach().requires_grad_(True)
        record = [module, inputs[0].detach(), None]
        self._records.append(record)
        output.register_hook(lambda grad: record.__setitem__(2, grad.detach()))
        return output

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, losses = self._backward(x, y)
        dtype = module_dtype(self.model)  # float32 (float64 in tests), whatever autocast computed in
        with no_tf32(), torch.autocast(x.device.type, enabled=False):
            norms2 = torch.zeros(len(x), dtype=dtype, device=logits.device)
            reused = []
            records = [(m, a.to(dtype), None if g is None else g.to(dtype)) for m, a, g in self._records]
            self._records = records
            for module, a, g in records:
                if g is None:
                    raise RuntimeError(f"no output gradient reached {module}: is it used in the forward pass?")
                piece, n2 = self.rules[module].norms(module, a, g)
                norms2 += n2
                reused.append(piece)
            clip = (self.max_grad_norm / (norms2.sqrt() + 1e-6)).clamp(max=1.0)
            for (module, a, g), piece in zip(self._records, reused, strict=True):
                sums = self.rules[module].clipped_sums(module, a, g, piece, clip)
                trainable = (q for q in (module.weight, module.bias) if q is not None and q.requires_grad)
                for p, grad in zip(trainable, sums, strict=True):
                    p.clipped_sum = grad if getattr(p, "clipped_sum", None) is None else p.clipped_sum + grad
        self._records = []
        return losses.detach(), logits.detach()

    def _backward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward and input-gradient backward pass, recording every layer's input and output gradient."""
        params = [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]
        self._records = []
        self._active = True
        try:
            for p in params:  # input gradients only: the weight gradients come clipped, from the records
                p.requires_grad_(False)
            with torch.autocast(
                x.device.type, dtype=self.autocast_dtype or torch.bfloat16, enabled=self.autocast_dtype is not None
            ):
                logits = self.model(x.detach())
                if self.autocast_dtype is not None:
                    logits = logits.float()  # the loss in float32, as autocast computes it anyway
                losses = F.cross_entropy(logits, y, reduction="none")
            losses.sum().backward()
        finally:
            self._active = False
            for p in params:
                p.requires_grad_(True)
        return logits, losses


class BookKeepingDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer fed with the clipped sums of :class:`BookKeeping` instead of per-example gradients:
    the same accumulation over skipped (physical) steps, noise, scaling and hooks."""

    @property
    def accumulated_iterations(self) -> int:
        """One sampler call per optimizer step (physical chunks are separate, skipped steps)."""
        return 1

    def clip_and_accumulate(self) -> None:
        for p in self.params:
            grad = p.clipped_sum
            if grad is None:
                raise RuntimeError("no clipped gradient: call the 'bk' sampler (or empty_grad_samples) first")
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            p.clipped_sum = None

    def pre_step(self, closure=None) -> bool:
        self.clip_and_accumulate()
        if self._check_skip_next_step():
            self._is_last_step_skipped = True
            return False
        self.add_noise()
        self.scale_grad()
        if self.step_hook:
            self.step_hook(self)
        self._is_last_step_skipped = False
        return True

    def zero_grad(self, set_to_none: bool = False) -> None:
        super().zero_grad(set_to_none)
        for p in self.params:
            p.clipped_sum = None
