"""Benchmarks that print figures (not tests). Run ``make bench`` or::

    PYTHONPATH=workflow/scripts python -m dpmedbench.bench resize [--images 60] [--size 256] [--folder DIR]
    PYTHONPATH=workflow/scripts python -m dpmedbench.bench ldp [--images 1000] [--size 256] [--channels 3]

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
from collections.abc import Callable
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


def _dp_step_worker(mode: str, size: int, batch: int, steps: int, threads: int, device: str) -> dict[str, float]:
    """One process: median step time and peak memory of ``mode`` ("sgd" or a grad_sample_mode)."""
    import resource
    import statistics

    import torch
    import torch.nn.functional as F

    from .dpsgd import make_grad_sampler, make_optimizer
    from .models import build_resnet18
    from .train import pick_device

    torch.set_num_threads(threads)
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
    return {"seconds": statistics.median(times), "peak_bytes": float(peak), "device": str(dev)}


def bench_dpsgd(*, size: int, batch: int, modes: list[str], steps: int, threads: int, device: str) -> dict:
    import json
    import os
    import subprocess
    import sys

    results = {}
    scripts = str(Path(__file__).resolve().parents[1])
    for mode in ["sgd", *modes]:
        code = (
            f"import json, sys; sys.path.insert(0, {scripts!r}); from dpmedbench.bench import _dp_step_worker; "
            f"print(json.dumps(_dp_step_worker({mode!r}, {size}, {batch}, {steps}, {threads}, {device!r})))"
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
    args = parser.parse_args(argv)

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
