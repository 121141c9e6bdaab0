"""DP-SGD pieces: per-example gradients in several modes, Opacus's DPOptimizer for clipping and noise, and
the accountants.

Per-example gradient modes (``grad_sample_mode``):

* ``ew``, ``hooks``, ``functorch``: Opacus's ``GradSampleModule`` variants. ``ew`` (expanded weights) is the
  fastest of them on the 2-core CPU machines at 224 px, batch 32: 1.85-2.0x a non-private step.
* ``vmap``: ``torch.func.vmap(grad(...))`` over the batch, written into ``p.grad_sample`` for Opacus's optimizer
  (as Opacus's own ``no_op`` mode expects): 2.04x there, and the most memory.
* ``bk`` (default): book-keeping clipping with mixed ghost norms (Bu et al. 2022, 2023), written here; about 1.2x
  a non-private step there, with a third of ``ew``'s extra memory. One backward pass
  computes only input gradients and records each layer's input and output gradient. Per-example gradient
  norms come from them layer by layer, with each convolution taking the cheaper of two routes: the per-example
  gradient itself (early layers: many positions, few weights; on the CPU one ``conv2d_weight`` per example,
  since unfolding the input costs more than the product) or the ghost norm, ||G_i U_i^T||^2 =
  <U_i^T U_i, G_i^T G_i> (late layers: few positions, many weights). The clipped sum sum_i c_i g_i is then the
  clip-weighted sum of the per-example gradients, or, for ghost-norm layers, one ordinary weight-gradient
  computation with each example's output gradient scaled by its clip factor c_i. Per-example gradients are held
  only for the early layers, where they are small, and the backward pass stops at the first layer's output
  instead of differentiating the images.

Whatever the mode, noise and accounting are Opacus's: :class:`opacus.optimizers.DPOptimizer` clips each
example's gradient to ``max_grad_norm`` (``bk``: :class:`BookKeepingDPOptimizer` takes the clipped sums the
sampler computed with the same clip factors, ``min(1, C / (norm + 1e-6))``), sums, adds N(0, (sigma C)^2)
noise and divides by the expected batch size; RDP and PRV accountants track the steps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample.utils import wrap_model
from opacus.optimizers import DPOptimizer
from opacus.validators import ModuleValidator
from torch import nn

GradSampleMode = Literal["vmap", "hooks", "ew", "functorch", "bk"]
GRAD_SAMPLE_MODES = ("vmap", "hooks", "ew", "functorch", "bk")
ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: (model, inputs, labels) -> (per-example losses, logits); sets ``p.grad_sample`` on every trainable parameter.
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


@contextlib.contextmanager
def _no_tf32() -> Iterator[None]:
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

    Supports the layers of a DP ResNet: ``Conv2d``, ``Linear`` and ``GroupNorm`` with trainable parameters
    (``FrozenBatchNorm2d`` has none). A model with any other trainable layer is refused.
    """

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.layers = [m for m in model.modules() if any(p.requires_grad for p in m.parameters(recurse=False))]
        for m in self.layers:
            if not isinstance(m, nn.Conv2d | nn.Linear | nn.GroupNorm):
                raise ValueError(f"grad_sample_mode 'bk' does not support trainable {type(m).__name__} layers")
            if isinstance(m, nn.Conv2d) and (isinstance(m.padding, str) or m.padding_mode != "zeros"):
                raise ValueError(
                    f"grad_sample_mode 'bk' supports convolutions with numeric zero padding only, not "
                    f"padding={m.padding!r}, padding_mode={m.padding_mode!r}: use 'ew' or 'hooks'"
                )
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
        params = [p for m in self.layers for p in m.parameters(recurse=False) if p.requires_grad]
        self._records = []
        self._active = True
        try:
            for p in params:  # input gradients only: the weight gradients come clipped, below
                p.requires_grad_(False)
            logits = self.model(x.detach())
            losses = F.cross_entropy(logits, y, reduction="none")
            losses.sum().backward()
        finally:
            self._active = False
            for p in params:
                p.requires_grad_(True)
        with _no_tf32():
            norms2 = torch.zeros(len(x), dtype=logits.dtype, device=logits.device)
            pieces = []
            for module, a, g in self._records:
                if g is None:
                    raise RuntimeError(f"no output gradient reached {module}: is it used in the forward pass?")
                piece, n2 = _norms(module, a, g)
                norms2 += n2
                pieces.append((module, a, g, piece))
            clip = (self.max_grad_norm / (norms2.sqrt() + 1e-6)).clamp(max=1.0)
            for module, a, g, piece in pieces:
                for p, grad in zip(
                    (q for q in (module.weight, module.bias) if q is not None and q.requires_grad),
                    _clipped_sums(module, a, g, piece, clip),
                    strict=True,
                ):
                    p.clipped_sum = grad if getattr(p, "clipped_sum", None) is None else p.clipped_sum + grad
        self._records = []
        return losses.detach(), logits.detach()


def _conv_uses_ghost(module: nn.Conv2d, positions: int) -> bool:
    """Ghost norm costs T^2 (d + p) per example, the per-example gradient T d p and B p d numbers held until the
    clip factors are known: take the ghost norm where T (d + p) < d p (ResNet-18 at 224 px: layer3 and layer4).
    At the boundary (layer3) both routes take the same time on the CPU; the ghost norm holds less."""
    d = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
    p = module.out_channels
    return positions * (d + p) < d * p


def _unfold(a: torch.Tensor, module: nn.Conv2d, *, strided: bool | None = None) -> torch.Tensor:
    """``F.unfold(a, ...)`` with the convolution's geometry: (B, C k_h k_w, T).

    ``strided`` (default: off the CPU): one copy of a strided view of the padded input instead. F.unfold
    launches one im2col kernel per example on CUDA (ResNet-18, batch 128 on an H100: 7,680 launches and 27 % of
    a ``bk`` step); on the CPU F.unfold is the faster of the two (2.6x on the stem). Both give the same numbers.
    """
    if not (a.device.type != "cpu" if strided is None else strided):
        return F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)  # type: ignore[arg-type]
    (kh, kw), (dh, dw), (sh, sw) = module.kernel_size, module.dilation, module.stride
    ph, pw = module.padding  # type: ignore[misc]  # string paddings are refused by BookKeeping
    if ph or pw:
        a = F.pad(a, (pw, pw, ph, ph))
    b, c, h, w = a.shape
    ho, wo = (h - dh * (kh - 1) - 1) // sh + 1, (w - dw * (kw - 1) - 1) // sw + 1
    sb, sc, sy, sx = a.stride()
    windows = a.as_strided((b, c, kh, kw, ho, wo), (sb, sc, sy * dh, sx * dw, sy * sh, sx * sw))
    return windows.reshape(b, c * kh * kw, ho * wo)


def _per_example_conv_grads(module: nn.Conv2d, a: torch.Tensor, g: torch.Tensor, *, batched: bool) -> torch.Tensor:
    """Per-example weight gradients (B, p, d) of an ungrouped convolution with input ``a`` and output gradient
    ``g``. ``batched``: one ``bmm`` over the unfolded input (one kernel, but the unfolded copy is d/C_in times
    the input); otherwise one ``conv2d_weight`` per example, which on the CPU is 2-3x faster for the early
    layers because it never materialises the unfolded input."""
    if batched:
        return torch.bmm(g.flatten(2), _unfold(a, module).transpose(1, 2))
    grads = [
        torch.nn.grad.conv2d_weight(
            a[i : i + 1], module.weight.shape, g[i : i + 1], module.stride, module.padding, module.dilation
        )
        for i in range(len(a))
    ]
    return torch.stack(grads).flatten(2)


def _norms(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> tuple[object, torch.Tensor]:
    """Per-example squared gradient norms of one layer's parameters, and what the clipped sum can reuse."""
    if isinstance(module, nn.Linear):
        if a.dim() != 2:
            raise ValueError("grad_sample_mode 'bk' supports Linear layers on (batch, features) inputs only")
        n2 = (a**2).sum(1) * (g**2).sum(1)
        if module.bias is not None:
            n2 = n2 + (g**2).sum(1)
        return None, n2
    if isinstance(module, nn.GroupNorm):
        normalized = F.group_norm(a, module.num_groups, eps=module.eps)
        gw = (g * normalized).flatten(2).sum(2)
        gb = g.flatten(2).sum(2)
        return (gw, gb), (gw**2).sum(1) + (gb**2).sum(1)
    if module.groups != 1:
        raise ValueError("grad_sample_mode 'bk' supports ungrouped convolutions only")
    gm = g.flatten(2)  # (B, p, T)
    if _conv_uses_ghost(module, gm.shape[2]):
        u = _unfold(a, module)  # (B, d, T)
        n2 = (torch.bmm(u.transpose(1, 2), u) * torch.bmm(gm.transpose(1, 2), gm)).sum((1, 2))
        piece = None
    else:
        piece = _per_example_conv_grads(module, a, g, batched=a.device.type != "cpu")
        n2 = (piece**2).sum((1, 2))
    if module.bias is not None:
        n2 = n2 + (gm.sum(2) ** 2).sum(1)
    return piece, n2


def _clipped_sums(module: nn.Module, a: torch.Tensor, g: torch.Tensor, piece: object, clip: torch.Tensor) -> list:
    """sum_i clip_i g_i for the layer's weight (and bias), in parameter order."""
    b = len(a)
    if isinstance(module, nn.Linear):
        gc = g * clip[:, None]
        out = [gc.t() @ a]
        return out + ([gc.sum(0)] if module.bias is not None else [])
    if isinstance(module, nn.GroupNorm):
        gw, gb = piece
        return [clip @ gw, clip @ gb]
    if piece is not None:
        weight = torch.einsum("b,bpd->pd", clip, piece).reshape(module.weight.shape)
    else:
        weight = torch.nn.grad.conv2d_weight(
            a, module.weight.shape, g * clip.view(b, 1, 1, 1), module.stride, module.padding, module.dilation
        )
    return [weight] + ([(g.flatten(2).sum(2) * clip[:, None]).sum(0)] if module.bias is not None else [])


class BookKeepingDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer fed with the clipped sums of :class:`BookKeeping` instead of per-example gradients:
    the same accumulation over skipped (physical) steps, noise, scaling and hooks."""

    @property
    def accumulated_iterations(self) -> int:
        """One sampler call per optimizer step (physical batches are separate, skipped steps), as in train.py."""
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
    """Epsilon spent by the steps in ``history`` ([(noise_multiplier, sample_rate, steps)])."""
    if not history:
        return 0.0
    acc = ACCOUNTANTS[accountant]()
    acc.history = [tuple(h) for h in history]
    return float(acc.get_epsilon(delta=delta))
