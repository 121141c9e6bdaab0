"""Benchmarks that print figures (not tests). Run ``make bench`` or::

    PYTHONPATH=workflow/scripts python -m dpmedbench.bench resize [--images 60] [--size 256] [--folder DIR]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench ldp [--images 1000] [--size 256] [--channels 3]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench dpsgd [--size 224] [--batch 32] [--modes bk,ew,hooks]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench equivalence [--device cuda] [--size 224] [--batch 8]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench cell [--datasets chest_xray,aptos] [--epochs 2]

``equivalence`` checks, on any device, that each DP-SGD mode's noiseless update is the clipped sum of
per-example gradients: a one-example-at-a-time loop in float64 is the truth; every mode (and the same loop)
is then run in float64, float32 with TF32 off and float32 with TF32 on, and the largest relative error over
the parameter tensors is printed.

``cell`` runs whole cells through the real training code on synthetic arrays of the real datasets' sizes
(chest X-ray 4,700 train images of 256x256x1, APTOS 2,636 of 256x256x3), prints seconds per epoch and images
per second, and projects the wall time of the paper's grid (per dataset: one non-private and three Local-DP
cells, which train alike, and three DP-SGD cells; 50 epochs each).

``ldp`` times materialising a Local-DP copy (laplace_pixel, beta 1; streamed to one float16 .npy, with the
saturation figures and PSNR/SSIM on the default sample of 64 images) against the naive path: ``rng.laplace`` per image,
clip, and one 8-bit PNG per image (as the authors wrote one JPEG per image).

``resize`` times the data stage's decode+resize path against two naive paths on the same images, one
process each, and prints images/s, the ratios and the PSNR between fast and naive outputs:

* ``naive RGB``: ``Image.open().convert("RGB").resize(LANCZOS)``, what torchvision's ``ImageFolder``
  loader (used by the authors) does before any transform;
* ``naive same``: ``Image.open().convert(<output mode>).resize(LANCZOS)`` of the same crop box, a stricter
  baseline that already converts X-rays to one channel.

Without ``--folder`` it uses synthetic X-ray JPEGs with the sizes and file sizes of the real ones
(1000-2400 px, ~150-250 KB, greyscale with some stored as RGB) and fundus PNGs (1600-2400 px wide); with
``--folder`` it uses the .jpeg/.jpg/.png files found there (e.g. a few hundred real images).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

from .imaging import decode_resized, decode_resized_naive
from .synth import chest_image, fundus_image


def synthetic_images(kind: str, n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        if kind == "xray-jpeg":
            # Real radiographs are smooth: draw at a quarter of the size, upsample, add mild noise. This
            # gives JPEGs of ~150-250 KB like the Kermany files (1.2 GB for 5,856 images).
            w, h = int(rng.integers(1000, 2400)), int(rng.integers(900, 2200))
            small = Image.fromarray(chest_image(rng, w // 4, h // 4, bool(i % 2)), "L")
            arr = np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)
            arr = np.clip(arr + rng.normal(0, 1.5, arr.shape), 0, 255).astype(np.uint8)
            im = Image.fromarray(arr, "L")
            (im.convert("RGB") if i % 7 == 0 else im).save(buf, format="JPEG", quality=92)
        else:
            w = int(rng.integers(1600, 2400))
            Image.fromarray(fundus_image(rng, w, int(w * 0.7), i % 5), "RGB").save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def _rate(fn: Callable[..., np.ndarray], images: list[bytes], **kw: object) -> tuple[float, list[np.ndarray]]:
    start = time.perf_counter()
    outs = [fn(data, **kw) for data in images]
    return len(images) / (time.perf_counter() - start), outs


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def naive_rgb(data: bytes, *, size: int, channels: int) -> np.ndarray:
    """torchvision's ImageFolder loader (``convert("RGB")``) followed by a LANCZOS resize."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def bench_resize(images: list[bytes], *, size: int, channels: int, label: str) -> dict[str, float]:
    _rate(decode_resized, images[:2], size=size, channels=channels)  # warm-up
    fast, fast_out = _rate(decode_resized, images, size=size, channels=channels)
    same, same_out = _rate(decode_resized_naive, images, size=size, channels=channels)
    rgb, _ = _rate(naive_rgb, images, size=size, channels=channels)
    psnr = float(np.mean([_psnr(a, b) for a, b in zip(fast_out, same_out, strict=True)]))
    kb = np.mean([len(d) for d in images]) / 1e3
    print(
        f"{label:<24} {len(images):>4} {kb:>6.0f} {fast:>9.1f} {rgb:>10.1f} {fast / rgb:>7.2f}x "
        f"{same:>11.1f} {fast / same:>7.2f}x {psnr:>7.1f} dB",
        flush=True,
    )
    return {
        "fast": fast,
        "naive_rgb": rgb,
        "naive_same": same,
        "ratio_rgb": fast / rgb,
        "ratio_same": fast / same,
        "psnr": psnr,
    }


def bench_ldp(*, images: int, size: int, channels: int) -> dict[str, float]:
    import tempfile

    from .ldp import materialise_copy

    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (images, size, size, channels), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        np.save(root / "train.npy", clean)
        np.save(root / "val.npy", clean[:1])
        start = time.perf_counter()
        materialise_copy(
            dataset="aptos",
            beta=1.0,
            mechanism="laplace_pixel",
            clip=False,
            seed=0,
            noise_source="seeded",
            inputs={"train": root / "train.npy", "val": root / "val.npy"},
            outputs={"train": root / "out" / "train.npy", "val": root / "out" / "val.npy"},
            privacy_json=root / "out" / "privacy.json",
        )
        ours = images / (time.perf_counter() - start)
        naive_n = max(8, images // 10)
        (root / "naive").mkdir()
        start = time.perf_counter()
        for i in range(naive_n):
            noisy = clean[i] / 255.0 + rng.laplace(0.0, 1.0, clean[i].shape)
            arr = np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8)
            Image.fromarray(arr[..., 0] if channels == 1 else arr).save(root / "naive" / f"{i}.png")
        naive = naive_n / (time.perf_counter() - start)
    print(
        f"{f'{size}x{size}x{channels}':<14} {images:>6} {ours:>12.1f} {naive:>13.1f} {ours / naive:>8.1f}x", flush=True
    )
    return {"ours": ours, "naive": naive, "ratio": ours / naive}


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
    import resource
    import statistics

    import torch
    import torch.nn.functional as F

    from .dpsgd import make_grad_sampler, make_optimizer
    from .models import build_resnet18
    from .train import pick_device

    torch.set_num_threads(threads)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    dev = pick_device(device)
    torch.manual_seed(0)
    model = build_resnet18(num_classes=2, weights=None, norm="group").to(dev)
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, 2, (batch,), device=dev)
    if mode == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.01)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    else:
        _, sample = make_grad_sampler(model, mode, max_grad_norm=1.0)  # type: ignore[arg-type]
        opt = make_optimizer(
            model,
            lr=0.01,
            momentum=0,
            weight_decay=0,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=batch,
            generator=torch.Generator(device=dev).manual_seed(0),
            grad_sample_mode=mode,
        )

        def step() -> None:
            sample(x, y)
            opt.step()
            opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = (
        torch.cuda.max_memory_allocated()
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    if profile_dir:
        _profile_steps(step, sync, Path(profile_dir) / f"{mode}.txt", cuda=dev.type == "cuda")
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
    for key in (
        ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total") if cuda else ("self_cpu_time_total",)
    ):
        try:
            table = averages.table(sort_by=key, row_limit=30)
            break
        except (AttributeError, KeyError, ValueError):
            continue
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(table)


def bench_dpsgd(
    *,
    size: int,
    batch: int,
    modes: list[str],
    steps: int,
    threads: int,
    device: str,
    cudnn_benchmark: bool = False,
    profile_dir: str | None = None,
) -> dict:
    import json
    import os
    import subprocess
    import sys

    results = {}
    scripts = str(Path(__file__).resolve().parents[1])
    for mode in ["sgd", *modes]:
        code = (
            f"import json, sys; sys.path.insert(0, {scripts!r}); from dpmedbench.bench import _dp_step_worker; "
            f"print(json.dumps(_dp_step_worker({mode!r}, {size}, {batch}, {steps}, {threads}, {device!r}, "
            f"{cudnn_benchmark!r}, {profile_dir!r})))"
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}
        )
        if proc.returncode != 0:
            print(f"{mode:<10} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            continue
        results[mode] = r = json.loads(proc.stdout.strip().splitlines()[-1])
        base = results["sgd"]
        print(
            f"{mode:<10} {r['device']:<8} {r['seconds'] * 1e3:>10.1f} {r['seconds'] / base['seconds']:>8.2f}x "
            f"{r['peak_bytes'] / 2**30:>10.2f} {(r['peak_bytes'] - base['peak_bytes']) / 2**30:>+10.2f}",
            flush=True,
        )
    return results


# ------------------------------------------------------------------------------ DP-SGD equivalence on a device
PRECISIONS = (
    ("float64", "float64", False),
    ("float32, TF32 off", "float32", False),
    ("float32, TF32 on", "float32", True),
)


@contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """TF32 for CUDA matrix products and cuDNN convolutions on or off (no effect elsewhere), restored after."""
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _relative_errors(got: list, truth: list) -> tuple[float, float]:
    """(largest ||got - truth|| / ||truth|| over the parameter tensors, the same over all parameters at once)."""
    import torch

    per = [
        float(torch.linalg.vector_norm(g.double().cpu() - t) / torch.linalg.vector_norm(t))
        for g, t in zip(got, truth, strict=True)
    ]
    diff = sum(float(torch.linalg.vector_norm(g.double().cpu() - t) ** 2) for g, t in zip(got, truth, strict=True))
    total = sum(float(torch.linalg.vector_norm(t) ** 2) for t in truth)
    return max(per), (diff / total) ** 0.5


def dp_equivalence(
    *, device: str = "auto", modes: list[str], size: int = 224, batch: int = 8, seed: int = 0
) -> list[dict[str, object]]:
    """Noiseless DP-SGD updates of every mode against the truth, in each precision of :data:`PRECISIONS`.

    The truth is a one-example-at-a-time loop in float64: each example's gradient, clipped to C (the median
    of the examples' gradient norms, so half of them are clipped), summed. Each mode runs as in training: the
    batch in two physical chunks, Opacus's optimizer with noise multiplier 0, and the update it leaves in
    ``p.grad`` times the expected batch size is compared. The same loop in each precision is reported too, as
    the error that precision alone causes.
    """
    import copy

    import torch
    import torch.nn.functional as F

    from .dpsgd import make_grad_sampler, make_optimizer
    from .models import build_resnet18
    from .train import pick_device

    dev = pick_device(device)
    torch.manual_seed(seed)
    base = build_resnet18(num_classes=3, weights=None, norm="group")
    x64 = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    y = (torch.arange(batch) % 3).to(dev)

    def per_example(dtype: torch.dtype) -> list[list[torch.Tensor]]:
        model = copy.deepcopy(base).to(dev, dtype)
        params = [p for p in model.parameters() if p.requires_grad]
        grads = []
        for i in range(batch):
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x64[i : i + 1].to(dev, dtype)), y[i : i + 1]).backward()
            grads.append([p.grad.detach().double().cpu() for p in params])
        return grads

    def clipped_sum(grads: list[list[torch.Tensor]], clip: float) -> list[torch.Tensor]:
        total = [torch.zeros_like(g) for g in grads[0]]
        for example in grads:
            norm = float(torch.sqrt(sum((g**2).sum() for g in example)))
            for t, g in zip(total, example, strict=True):
                t += min(1.0, clip / (norm + 1e-6)) * g
        return total

    with _tf32(False):
        truth_grads = per_example(torch.float64)
    norms = sorted(float(torch.sqrt(sum((g**2).sum() for g in example))) for example in truth_grads)
    clip = norms[len(norms) // 2]
    truth = clipped_sum(truth_grads, clip)
    rows: list[dict[str, object]] = []
    for label, dtype_name, tf32 in PRECISIONS:
        dtype = getattr(torch, dtype_name)
        with _tf32(tf32):
            loop = clipped_sum(per_example(dtype), clip)
            worst, overall = _relative_errors(loop, truth)
            rows.append(
                {"precision": label, "mode": "loop", "max_rel_error": worst, "rel_error": overall, "vs_loop": 0.0}
            )
            for mode in modes:
                model = copy.deepcopy(base).to(dev, dtype)
                _, sample = make_grad_sampler(model, mode, max_grad_norm=clip)  # type: ignore[arg-type]
                opt = make_optimizer(
                    model,
                    lr=0.0,
                    momentum=0,
                    weight_decay=0,
                    noise_multiplier=0.0,
                    max_grad_norm=clip,
                    expected_batch_size=batch,
                    generator=torch.Generator(device=dev).manual_seed(0),
                    grad_sample_mode=mode,
                )
                half = batch // 2
                x = x64.to(dev, dtype)
                sample(x[:half], y[:half])
                opt.signal_skip_step(do_skip=True)
                opt.step()
                opt.zero_grad()
                sample(x[half:], y[half:])
                opt.step()
                got = [p.grad.detach() * batch for p in model.parameters() if p.requires_grad]
                worst, overall = _relative_errors(got, truth)
                vs_loop = _relative_errors(got, loop)[0]
                rows.append(
                    {"precision": label, "mode": mode, "max_rel_error": worst, "rel_error": overall, "vs_loop": vs_loop}
                )
            for row in rows[-len(modes) - 1 :]:
                row["device"] = str(dev)
                print(
                    f"{row['precision']:<18} {row['mode']:<8} {row['device']:<8} {row['max_rel_error']:>14.3e} "
                    f"{row['rel_error']:>12.3e} {row['vs_loop']:>12.3e}",
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
    images = np.lib.format.open_memmap(
        folder / f"{name}.npy", mode="w+", dtype=np.uint8, shape=(n, side, side, channels)
    )
    for start in range(0, n, 512):
        images[start : start + 512] = rng.integers(0, 256, images[start : start + 512].shape, dtype=np.uint8)
    images.flush()
    del images
    with open(folder / f"{name}.csv", "w") as fh:
        fh.write("index,source,label,class_name,group,origin\n")
        for i in range(n):
            fh.write(f"{i},img{i}.png,{i % classes},c{i % classes},p{i},{name}\n")
    return str(folder / f"{name}.npy"), str(folder / f"{name}.csv")


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
    dataset, trained by :func:`dpmedbench.train.train_cell` on synthetic arrays of the real sizes (times
    ``scale``), and the projected wall time of the grid. The last epoch's time is taken (the first one holds
    the start-up); it includes the epoch's evaluation of validation and test data."""
    import tempfile

    from .train import CellConfig, DPSettings, train_cell

    results: dict[str, dict[str, float]] = {}
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for d, dataset in enumerate(datasets):
            n_train, n_val, n_test, channels, classes = REAL_SIZES[dataset]
            folder = Path(tmp) / dataset
            folder.mkdir()
            splits = {
                name: _synthetic_split(
                    folder, name, max(classes * 2, round(n * scale)), size, channels, classes, 10 * d + i
                )
                for i, (name, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))
            }
            n = max(classes * 2, round(n_train * scale))
            runs = [("none", "none", 128)] + [("dpsgd", f"dpsgd/{chunk}", chunk) for chunk in dp_chunks]
            for mechanism, label, chunk in runs:
                config = CellConfig(
                    dataset=dataset,
                    mechanism=mechanism,
                    beta=1.0,
                    seed=0,
                    epochs=epochs,
                    batch_size=batch,
                    crop=crop,
                    pretrained=False,
                    device=device,
                    dpsgd=DPSettings(noise_multiplier=1.0, max_physical_batch=chunk),
                )
                metrics = train_cell(
                    config,
                    train=splits["train"],
                    val=splits["val"],
                    test=splits["test"],
                    out_dir=folder / label.replace("/", "_"),
                    threads=threads,
                )
                with open(folder / label.replace("/", "_") / "history.csv") as fh:
                    seconds = [float(line.rsplit(",", 1)[1]) for line in fh.read().splitlines()[1:]]
                per_epoch = seconds[-1]
                results.setdefault(dataset, {})[label] = per_epoch
                print(
                    f"{dataset:<11} {label:<10} {metrics['device']:<7} {n:>6} {seconds[0]:>9.2f} {per_epoch:>9.2f} "
                    f"{n / per_epoch:>9.0f} {per_epoch * grid_epochs / 60:>10.1f}",
                    flush=True,
                )
            dp = results[dataset][f"dpsgd/{dp_chunks[0]}"] if dp_chunks else 0.0
            grid = ((1 + betas) * results[dataset]["none"] + betas * dp) * grid_epochs
            results[dataset]["grid_seconds"] = grid
            total += grid
    if dp_chunks:
        print(
            f"projected grid ({', '.join(datasets)}; per dataset 1 + {betas} non-private-speed cells and {betas} "
            f"DP-SGD cells with physical chunks of {dp_chunks[0]}, {grid_epochs} epochs each, one after another): "
            f"{total / 60:.1f} min",
            flush=True,
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dpmedbench.bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("resize", help="decode+resize throughput, fast path vs naive path")
    r.add_argument("--images", type=int, default=60, help="synthetic images per format (default 60)")
    r.add_argument("--size", type=int, default=256, help="output side in pixels (default 256)")
    r.add_argument("--folder", type=Path, help="benchmark the images in this folder instead")
    r.add_argument("--channels", type=int, choices=(1, 3), help="with --folder: 1 (X-ray) or 3 (fundus)")
    ldp = sub.add_parser("ldp", help="materialising a Local-DP copy vs rng.laplace + one PNG per image")
    ldp.add_argument("--images", type=int, default=1000, help="images in the copy (default 1000)")
    ldp.add_argument("--size", type=int, default=256, help="image side (default 256)")
    ldp.add_argument("--channels", type=int, choices=(1, 3), default=3)
    dp = sub.add_parser("dpsgd", help="DP-SGD step time / non-private step time, and peak memory")
    dp.add_argument("--size", type=int, default=224, help="image side (default 224)")
    dp.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    dp.add_argument("--modes", default="bk,ew,hooks,vmap", help="grad_sample_modes to time (default bk,ew,hooks,vmap)")
    dp.add_argument("--steps", type=int, default=5, help="timed steps per mode, after one warm-up (default 5)")
    dp.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    dp.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    dp.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN pick its fastest algorithms")
    dp.add_argument("--profile", metavar="DIR", help="also write a torch.profiler table per mode into DIR")
    eq = sub.add_parser("equivalence", help="noiseless DP-SGD updates of each mode vs a float64 per-example loop")
    eq.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    eq.add_argument("--modes", default="bk,ew,hooks", help="grad_sample_modes to check (default bk,ew,hooks)")
    eq.add_argument("--size", type=int, default=224, help="image side (default 224)")
    eq.add_argument("--batch", type=int, default=8, help="examples (default 8)")
    cell = sub.add_parser("cell", help="seconds per epoch of whole cells at the real sizes; projected grid time")
    cell.add_argument("--datasets", default="chest_xray,aptos", help="datasets (default chest_xray,aptos)")
    cell.add_argument("--epochs", type=int, default=2, help="epochs per cell (default 2; the last one is timed)")
    cell.add_argument("--scale", type=float, default=1.0, help="fraction of the real image counts (default 1)")
    cell.add_argument("--size", type=int, default=256, help="stored image side (default 256)")
    cell.add_argument("--crop", type=int, default=224, help="model input side (default 224)")
    cell.add_argument("--device", default="auto", help="auto (CUDA, MPS, CPU), cpu, cuda, ...")
    cell.add_argument("--threads", type=int, default=4, help="CPU threads (default 4, as the train rule)")
    cell.add_argument("--batch", type=int, default=128, help="logical batch size (default 128, the paper's)")
    cell.add_argument("--dp-chunks", default="32", help="DP-SGD physical chunk sizes, one cell each (default 32)")
    args = parser.parse_args(argv)

    if args.command == "equivalence":
        print(
            f"DP-SGD with noise 0 vs a per-example loop in float64 (ResNet-18, GroupNorm, {args.size} px, batch "
            f"{args.batch}, two physical chunks, C = median per-example norm): relative error ||got - truth|| / "
            f"||truth||, the largest over parameter tensors and over all parameters; 'loop' is the same loop in "
            f"that precision, 'vs loop' the largest relative error against it"
        )
        print(f"{'precision':<18} {'mode':<8} {'device':<8} {'max rel error':>14} {'rel error':>12} {'vs loop':>12}")
        dp_equivalence(device=args.device, modes=args.modes.split(","), size=args.size, batch=args.batch)
        return

    if args.command == "cell":
        print(
            f"whole cells through the real training code, synthetic arrays of the real sizes x {args.scale}, "
            f"{args.size} px stored, {args.crop} px crop, batch {args.batch}, {args.threads} threads; seconds per "
            f"epoch include evaluating val and test"
        )
        print(
            f"{'dataset':<11} {'cell':<10} {'device':<7} {'train':>6} {'epoch 1 s':>9} {'epoch s':>9} {'img/s':>9} "
            f"{'50 ep min':>10}"
        )
        bench_cell(
            datasets=args.datasets.split(","),
            epochs=args.epochs,
            scale=args.scale,
            size=args.size,
            crop=args.crop,
            device=args.device,
            threads=args.threads,
            dp_chunks=[int(c) for c in args.dp_chunks.split(",") if c],
            batch=args.batch,
        )
        return

    if args.command == "dpsgd":
        print(
            f"ResNet-18 (GroupNorm), {args.size} px, batch {args.batch}, {args.threads} threads; median of "
            f"{args.steps} steps; each mode in its own process"
        )
        print(f"{'mode':<10} {'device':<8} {'step ms':>10} {'vs SGD':>9} {'peak GiB':>10} {'extra GiB':>10}")
        bench_dpsgd(
            size=args.size,
            batch=args.batch,
            modes=args.modes.split(","),
            steps=args.steps,
            threads=args.threads,
            device=args.device,
            cudnn_benchmark=args.cudnn_benchmark,
            profile_dir=args.profile,
        )
        return

    if args.command == "ldp":
        print(
            "Local-DP copy, laplace_pixel beta 1, one process, images/s. ours: seeded per-image generators, "
            "float16 .npy streamed in chunks, PSNR/SSIM on 64 images; naive: rng.laplace + one PNG per image"
        )
        print(f"{'images':<14} {'n':>6} {'ours':>12} {'naive':>13} {'ratio':>9}")
        bench_ldp(images=args.images, size=args.size, channels=args.channels)
        return

    print(
        f"decode + resize to {args.size}x{args.size}, images/s on one process. fast: dp-medbench; naive RGB: "
        f"Image.open().convert('RGB').resize(LANCZOS) (torchvision ImageFolder loader); naive same: "
        f"convert to the output mode (L for X-rays), same crop. PSNR: fast vs naive same."
    )
    print(
        f"{'images':<24} {'n':>4} {'KB':>6} {'fast':>9} {'naive RGB':>10} {'ratio':>8} {'naive same':>11} "
        f"{'ratio':>8} {'PSNR':>10}"
    )
    if args.folder:
        files = sorted(p for p in args.folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
        files = [p for p in files if not p.name.startswith("._")]
        if not files:
            raise SystemExit(f"{args.folder}: no .jpeg/.jpg/.png files")
        channels = args.channels or (1 if files[0].suffix.lower() in {".jpeg", ".jpg"} else 3)
        bench_resize([p.read_bytes() for p in files], size=args.size, channels=channels, label=str(args.folder))
        return
    bench_resize(synthetic_images("xray-jpeg", args.images), size=args.size, channels=1, label="X-ray JPEG (synthetic)")
    bench_resize(
        synthetic_images("fundus-png", max(4, args.images // 3)),
        size=args.size,
        channels=3,
        label="fundus PNG (synthetic)",
    )


if __name__ == "__main__":
    main()
