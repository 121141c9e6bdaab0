"""``bench equivalence``: on any device, each DP-SGD mode's noiseless update against the clipped sum of per-example
gradients. A one-example-at-a-time loop in float64 is the truth; every mode (and the same loop) is then run in
float64, float32 with TF32 off and float32 with TF32 on, and the largest relative error over the parameter
tensors is printed."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..core.runtime import pick_device
from ..training.dpsgd.gradsample import make_grad_sampler
from ..training.dpsgd.step import make_optimizer, noisy_step
from ..training.models import build_resnet18

PRECISIONS = (
    ("float64", "float64", False),
    ("float32, TF32 off", "float32", False),
    ("float32, TF32 on", "float32", True),
)


Grads = list[torch.Tensor]


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matrix products and cuDNN convolutions on or off (no effect elsewhere), restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _relative_errors(got: Grads, truth: Grads) -> tuple[float, float]:
    """(largest ||got - truth|| / ||truth|| over the parameter tensors, the same over all parameters at once)."""
    pairs = list(zip((g.double().cpu() for g in got), truth, strict=True))
    per = [float(torch.linalg.vector_norm(g - t) / torch.linalg.vector_norm(t)) for g, t in pairs]
    diff = sum(float(torch.linalg.vector_norm(g - t) ** 2) for g, t in pairs)
    total = sum(float(torch.linalg.vector_norm(t) ** 2) for t in truth)
    return max(per), (diff / total) ** 0.5


def _per_example_grads(base: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, dtype: torch.dtype) -> list[Grads]:
    """Each example's gradient, one example at a time, in ``dtype`` (returned in float64 on the CPU)."""
    model = copy.deepcopy(base).to(x.device, dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = []
    for i in range(len(x)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i : i + 1].to(dtype)), y[i : i + 1]).backward()
        grads.append([p.grad.detach().double().cpu() for p in params])
    return grads


def _norm(example: Grads) -> float:
    return float(torch.sqrt(sum((g**2).sum() for g in example)))


def _clipped_sum(grads: list[Grads], clip: float) -> Grads:
    total = [torch.zeros_like(g) for g in grads[0]]
    for example in grads:
        factor = min(1.0, clip / (_norm(example) + 1e-6))
        for t, g in zip(total, example, strict=True):
            t += factor * g
    return total


def _mode_sum(base: torch.nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, clip: float, dtype) -> Grads:
    """The clipped sum a mode computes with noise 0, as in training: two physical chunks, Opacus's optimizer, and
    the update it leaves in ``p.grad`` times the expected batch size."""
    model = copy.deepcopy(base).to(x.device, dtype)
    _, sample = make_grad_sampler(model, mode, max_grad_norm=clip)  # type: ignore[arg-type]
    generator = torch.Generator(device=x.device).manual_seed(0)
    opt = make_optimizer(
        model,
        lr=0.0,
        momentum=0,
        weight_decay=0,
        noise_multiplier=0.0,
        max_grad_norm=clip,
        expected_batch_size=len(x),
        generator=generator,
        grad_sample_mode=mode,
    )
    xs = x.to(dtype)
    chunks = list(torch.arange(len(x), device=x.device).split(len(x) - len(x) // 2))
    noisy_step(opt, sample, model, chunks, lambda idx: (xs[idx], y[idx]))
    return [p.grad.detach() * len(x) for p in model.parameters() if p.requires_grad]


def dp_equivalence(
    *, device: str = "auto", modes: list[str], size: int = 224, batch: int = 8, seed: int = 0
) -> list[dict[str, object]]:
    """Noiseless DP-SGD updates of every mode against the truth, in each precision of :data:`PRECISIONS`.

    The truth is a one-example-at-a-time loop in float64: each example's gradient, clipped to C (the median of
    the examples' gradient norms, so half of them are clipped), summed. The same loop in each precision is
    reported too (``loop``), as the error that precision alone causes, and each mode is compared with it
    (``vs_loop``).
    """
    dev = pick_device(device)
    torch.manual_seed(seed)
    base = build_resnet18(num_classes=3, weights=None, norm="group")
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dev)
    y = (torch.arange(batch) % 3).to(dev)
    with _tf32(False):
        truth_grads = _per_example_grads(base, x, y, torch.float64)
    clip = sorted(_norm(example) for example in truth_grads)[batch // 2]
    truth = _clipped_sum(truth_grads, clip)
    rows: list[dict[str, object]] = []
    for label, dtype_name, tf32 in PRECISIONS:
        dtype = getattr(torch, dtype_name)
        with _tf32(tf32):
            loop = _clipped_sum(_per_example_grads(base, x, y, dtype), clip)
            sums = {"loop": loop} | {mode: _mode_sum(base, mode, x, y, clip, dtype) for mode in modes}
        for mode, got in sums.items():
            worst, overall = _relative_errors(got, truth)
            row = {"precision": label, "mode": mode, "device": str(dev), "max_rel_error": worst}
            rows.append(row | {"rel_error": overall, "vs_loop": _relative_errors(got, loop)[0]})
            print(
                f"{label:<18} {mode:<8} {dev!s:<8} {worst:>14.3e} {overall:>12.3e} {rows[-1]['vs_loop']:>12.3e}",
                flush=True,
            )
    return rows
