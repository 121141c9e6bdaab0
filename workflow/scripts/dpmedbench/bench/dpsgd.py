"""``bench dpsgd``: the step time of each per-example gradient mode against non-private SGD, measured interleaved
(each mode and SGD in fresh processes, round after round), with peak memory and an optional profile."""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..core.runtime import pick_device
from ..training.dpsgd.gradsample import make_grad_sampler
from ..training.dpsgd.step import make_optimizer, noisy_step
from ..training.models import build_resnet18


# ------------------------------------------------------------------------------------------ step time
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _step_function(
    mode: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool = False
) -> Callable[[], None]:
    """One training step of ``mode`` ("sgd" or a grad_sample_mode) on the batch (x, y), noise multiplier 1;
    ``bf16``: bfloat16 autocast of the forward pass (DP-SGD: its norms and clipping stay float32)."""
    if mode == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def sgd_step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x).float(), y)
            loss.backward()
            opt.step()

        return sgd_step
    autocast = torch.bfloat16 if bf16 else None
    _, sample = make_grad_sampler(model, mode, max_grad_norm=1.0, autocast_dtype=autocast)  # type: ignore[arg-type]
    dp_opt = make_optimizer(
        model,
        lr=0.01,
        momentum=0,
        weight_decay=0,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=len(x),
        generator=torch.Generator(device=x.device).manual_seed(0),
        grad_sample_mode=mode,
    )
    whole = [torch.arange(len(x), device=x.device)]

    def dp_step() -> None:  # one chunk: the whole batch, without copying it
        noisy_step(dp_opt, sample, model, whole, lambda idx: (x, y))

    return dp_step


def _dp_step_worker(
    mode: str,
    size: int,
    batch: int,
    steps: int,
    threads: int,
    device: str,
    cudnn_benchmark: bool = False,
    profile_dir: str | None = None,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict[str, float]:
    """One process: median step time and peak memory of ``mode`` ("sgd" or a grad_sample_mode); with
    ``profile_dir``, also a torch.profiler table of three more steps in ``<profile_dir>/<mode>.txt``."""
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    dev = pick_device(device)
    torch.manual_seed(0)
    model = build_resnet18(num_classes=2, weights=None, norm="group").to(dev)
    x, y = torch.randn(batch, 3, size, size, device=dev), torch.randint(0, 2, (batch,), device=dev)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    step = _step_function(mode, model, x, y, bf16=bf16)
    step()  # warm-up
    _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        _sync(dev)
        times.append(time.perf_counter() - start)
    cuda = dev.type == "cuda"
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if profile_dir:
        _profile_steps(step, lambda: _sync(dev), Path(profile_dir) / f"{mode}.txt", cuda=cuda)
    return {"seconds": statistics.median(times), "peak_bytes": float(peak), "device": str(dev)}


def _profile_steps(step: Callable[[], None], sync: Callable[[], None], path: Path, *, cuda: bool) -> None:
    """Three steps under torch.profiler; the operators' table, by self time on the device (CPU without CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync()
    averages = prof.key_averages()
    table = ""
    for key in ("self_device_time_total", "self_cuda_time_total") if cuda else ("self_cpu_time_total",):
        try:
            table = averages.table(sort_by=key, row_limit=30)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)


def _step_process(mode: str, worker_args: str) -> dict[str, float] | str:
    """Run :func:`_dp_step_worker` in a fresh process; its result, or the last line of its error."""
    scripts = str(Path(__file__).resolve().parents[2])
    code = (
        f"import json, sys; sys.path.insert(0, {scripts!r}); from dpmedbench.bench.dpsgd import _dp_step_worker; "
        f"print(json.dumps(_dp_step_worker({mode!r}, {worker_args})))"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit status {proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_dpsgd(
    *,
    size: int,
    batch: int,
    modes: list[str],
    steps: int,
    threads: int,
    device: str,
    rounds: int = 3,
    cudnn_benchmark: bool = False,
    profile_dir: str | None = None,
    bf16: bool = False,
    channels_last: bool = False,
) -> dict[str, dict[str, float]]:
    """Step time of each DP mode against non-private SGD, measured interleaved: ``rounds`` rounds, each running
    SGD and then every mode, one fresh process each, so machine noise falls on both sides of a ratio alike.
    Prints each process's figures as it ends, then per mode the median over rounds of (mode / SGD of the same
    round) with its range, the median step and the largest peak memory. ``profile_dir``: a torch.profiler table
    per mode, from the last round."""
    runs: dict[str, list[dict[str, float]]] = {}
    for r in range(rounds):
        for mode in ["sgd", *modes]:
            profile = profile_dir if r == rounds - 1 else None
            one = _step_process(
                mode,
                f"{size}, {batch}, {steps}, {threads}, {device!r}, {cudnn_benchmark}, {profile!r}, {bf16}, "
                f"{channels_last}",
            )
            if isinstance(one, str):
                print(f"  round {r + 1} {mode:<8} failed: {one}", flush=True)
                continue
            runs.setdefault(mode, []).append(one)
            print(
                f"  round {r + 1} {mode:<8} {one['seconds'] * 1e3:>10.1f} ms {one['peak_bytes'] / 2**30:>8.2f} GiB",
                flush=True,
            )
    return {mode: _summarise(mode, measured, runs.get("sgd", [])) for mode, measured in runs.items()}


def _summarise(mode: str, measured: list[dict[str, float]], base: list[dict[str, float]]) -> dict[str, float]:
    paired = [m["seconds"] / b["seconds"] for m, b in zip(measured, base, strict=False)]
    nan = float("nan")
    row = {
        "seconds": statistics.median(m["seconds"] for m in measured),
        "ratio": statistics.median(paired) if paired else nan,
        "ratio_low": min(paired, default=nan),
        "ratio_high": max(paired, default=nan),
        "peak_bytes": max(m["peak_bytes"] for m in measured),
        "rounds": len(measured),
    }
    extra = row["peak_bytes"] - max((b["peak_bytes"] for b in base), default=nan)
    print(
        f"{mode:<10} {measured[0]['device']:<8} {row['seconds'] * 1e3:>10.1f} {row['ratio']:>8.2f}x "
        f"{row['ratio_low']:>6.2f}-{row['ratio_high']:<5.2f} {row['peak_bytes'] / 2**30:>10.2f} "
        f"{extra / 2**30:>+10.2f}",
        flush=True,
    )
    return row


# ------------------------------------------------------------------------------ DP-SGD equivalence on a device


# --------------------------------------------------------------------------------- whole cells, real sizes
