"""GPU memory a job asks for (the ``gpu_mem_mb`` resource), so that a workstation packs as many cells onto one
card as fit (``--resources gpu_mem_mb=<the card's MiB>``) and never more.

The figures are peaks measured on an NVIDIA H100 (``torch.cuda.max_memory_allocated``, ResNet-18 with GroupNorm,
224 px, one physical batch of 128, 2026-11-25; the README's GPU benchmark table): non-private SGD 2.81 GiB,
``bk`` 5.48 GiB, ``ew`` 9.29 GiB, ``hooks`` 8.45 GiB. Activations dominate, so a job's need is taken as
proportional to its physical batch and to the crop's area, times :data:`MARGIN`, plus :data:`CONTEXT_MIB` for
the CUDA context and the allocator's cache, which ``max_memory_allocated`` does not count.

>>> gpu_memory_mb("none", crop=224, chunk=128)
4621
>>> gpu_memory_mb("dpsgd", crop=224, chunk=32, grad_sample_mode="bk")
2778
>>> gpu_memory_mb("evaluate", crop=224, chunk=256)
2463
"""

from __future__ import annotations

#: MiB per example at 224 px, from the measured peaks at batch 128 (per training kind or DP-SGD mode).
PER_EXAMPLE_MIB = {
    "none": 2.81 * 1024 / 128,
    "bk": 5.48 * 1024 / 128,
    "ew": 9.29 * 1024 / 128,
    "hooks": 8.45 * 1024 / 128,
    "vmap": 9.29 * 1024 / 128,  # not measured on a GPU: taken as ew's, the largest measured
    "functorch": 9.29 * 1024 / 128,
}
#: Inference keeps one layer's activations at a time: a fifth of training's per example, by the same measurement.
EVALUATE_FRACTION = 0.2
#: Room above the measured peak (fragmentation, another cuDNN workspace).
MARGIN = 1.25
#: The CUDA context and PyTorch's cached blocks, outside max_memory_allocated.
CONTEXT_MIB = 1024


def gpu_memory_mb(kind: str, *, crop: int, chunk: int, grad_sample_mode: str = "bk") -> int:
    """MiB of GPU memory one job of ``kind`` needs: ``none`` or ``ldp`` (non-private training), ``dpsgd`` (with
    its ``grad_sample_mode``), or ``evaluate``; ``chunk`` is the job's physical batch (evaluation: its batch)."""
    if kind == "dpsgd":
        per_example = PER_EXAMPLE_MIB[grad_sample_mode]
    elif kind == "evaluate":
        per_example = PER_EXAMPLE_MIB["none"] * EVALUATE_FRACTION
    else:
        per_example = PER_EXAMPLE_MIB["none"]
    return round(MARGIN * per_example * chunk * (crop / 224) ** 2 + CONTEXT_MIB)
