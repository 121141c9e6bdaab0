"""DP-SGD benchmarks and checks that print figures (run through ``python -m dpmedbench.bench``):

* :func:`bench_dpsgd`: step time of each per-example gradient mode against non-private SGD, interleaved;
* :func:`dp_equivalence`: each mode's noiseless update against a float64 per-example loop, on any device and in
  float64, float32 and float32 with TF32;
* :func:`bench_cell`: whole cells through the real training code at the real datasets' sizes, and the
  projected wall time of the paper's grid.
"""

from __future__ import annotations

import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .dpsgd import make_grad_sampler, make_optimizer, noisy_step
from .models import build_resnet18
from .runtime import pick_device


# ------------------------------------------------------------------------------------------ step time
def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _step_function(mode: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    """One training step of ``mode`` ("sgd" or a grad_sample_mode) on the batch (x, y), noise multiplier 1."""
    if mode == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def sgd_step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        return sgd_step
    _, sample = make_grad_sampler(model, mode, max_grad_norm=1.0)  # type: ignore[arg-type]
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
) -> dict[str, float]:
    """One process: median step time and peak memory of ``mode`` ("sgd" or a grad_sample_mode); with
    ``profile_dir``, also a torch.profiler table of three more steps in ``<profile_dir>/<mode>.txt``."""
    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    dev = pick_device(device)
    torch.manual_seed(0)
    model = build_resnet18(num_classes=2, weights=None, norm="group").to(dev)
    x, y = torch.randn(batch, 3, size, size, device=dev), torch.randint(0, 2, (batch,), device=dev)
    step = _step_function(mode, model, x, y)
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
    scripts = str(Path(__file__).resolve().parents[1])
    code = (
        f"import json, sys; sys.path.insert(0, {scripts!r}); from dpmedbench.benchdp import _dp_step_worker; "
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
                mode, f"{size}, {batch}, {steps}, {threads}, {device!r}, {cudnn_benchmark}, {profile!r}"
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


# --------------------------------------------------------------------------------- whole cells, real sizes
#: (train, val, test, channels, classes) of each dataset after the default splits.
REAL_SIZES = {"chest_xray": (4700, 523, 624, 1, 2), "aptos": (2636, 293, 733, 3, 5)}


def _synthetic_split(
    folder: Path, name: str, n: int, side: int, channels: int, classes: int, seed: int
) -> tuple[str, str]:
    """Random uint8 images and a manifest with balanced labels, written as the data stage writes them."""
    rng = np.random.default_rng(seed)
    shape = (n, side, side, channels)
    images = np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
    for start in range(0, n, 512):
        images[start : start + 512] = rng.integers(0, 256, images[start : start + 512].shape, dtype=np.uint8)
    images.flush()
    del images
    with open(folder / f"{name}.csv", "w") as fh:
        fh.write("index,source,label,class_name,group,origin\n")
        for i in range(n):
            fh.write(f"{i},img{i}.png,{i % classes},c{i % classes},p{i},{name}\n")
    return str(folder / f"{name}.npy"), str(folder / f"{name}.csv")


def _time_cell(dataset: str, mechanism: str, chunk: int, splits: dict, out: Path, **settings) -> list[float]:
    """Seconds of each epoch of one cell trained by :func:`dpmedbench.train.train_cell`."""
    from .settings import CellConfig, DPSettings
    from .train import train_cell

    threads = settings.pop("threads")
    config = CellConfig(
        dataset=dataset,
        mechanism=mechanism,
        beta=1.0,
        seed=0,
        pretrained=False,
        dpsgd=DPSettings(noise_multiplier=1.0, max_physical_batch=chunk),
        **settings,
    )
    train_cell(config, train=splits["train"], val=splits["val"], test=splits["test"], out_dir=out, threads=threads)
    with open(out / "history.csv") as fh:
        return [float(line.rsplit(",", 1)[1]) for line in fh.read().splitlines()[1:]]


def bench_cell(
    *,
    datasets: list[str],
    epochs: int,
    scale: float,
    size: int,
    crop: int,
    device: str,
    threads: int,
    dp_chunks: list[int],
    batch: int = 128,
    grid_epochs: int = 50,
    betas: int = 3,
) -> dict[str, dict[str, float]]:
    """Seconds per epoch of a non-private cell and of DP-SGD cells (one per physical chunk size) for each
    dataset, on synthetic arrays of the real sizes (times ``scale``), and the projected wall time of the grid.
    The last epoch's time is taken (the first one holds the start-up); it includes the epoch's evaluation of
    validation and test data."""
    settings = {"epochs": epochs, "batch_size": batch, "crop": crop, "device": device, "threads": threads}
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for d, dataset in enumerate(datasets):
            n_train, n_val, n_test, channels, classes = REAL_SIZES[dataset]
            folder = Path(tmp) / dataset
            folder.mkdir()
            counts = {"train": n_train, "val": n_val, "test": n_test}
            counts = {name: max(classes * 2, round(n * scale)) for name, n in counts.items()}
            splits = {
                name: _synthetic_split(folder, name, n, size, channels, classes, 10 * d + i)
                for i, (name, n) in enumerate(counts.items())
            }
            runs = [("none", "none", 128)] + [("dpsgd", f"dpsgd/{chunk}", chunk) for chunk in dp_chunks]
            for mechanism, label, chunk in runs:
                seconds = _time_cell(dataset, mechanism, chunk, splits, folder / label.replace("/", "_"), **settings)
                results.setdefault(dataset, {})[label] = seconds[-1]
                n, last = counts["train"], seconds[-1]
                print(
                    f"{dataset:<11} {label:<10} {pick_device(device)!s:<7} {n:>6} {seconds[0]:>9.2f} {last:>9.2f} "
                    f"{n / last:>9.0f} {last * grid_epochs / 60:>10.1f}",
                    flush=True,
                )
            dp = results[dataset][f"dpsgd/{dp_chunks[0]}"] if dp_chunks else 0.0
            results[dataset]["grid_seconds"] = ((1 + betas) * results[dataset]["none"] + betas * dp) * grid_epochs
    if dp_chunks:
        total = sum(r["grid_seconds"] for r in results.values())
        print(
            f"projected grid ({', '.join(datasets)}; per dataset 1 + {betas} non-private-speed cells and {betas} "
            f"DP-SGD cells with physical chunks of {dp_chunks[0]}, {grid_epochs} epochs each, one after another): "
            f"{total / 60:.1f} min",
            flush=True,
        )
    return results
