"""``bench resize`` and ``bench ldp``: the data stage's decode and resize against naive paths, and materialising a
Local-DP copy against the naive per-image path."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from ..data.imaging import decode_resized, decode_resized_naive
from ..data.synth import chest_image, fundus_image


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

    from ..ldp.copies import materialise_copy

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


_PEAK_CHILD = """
import sys, time
from dpmedbench.data.imaging import decode_resized

def status(key):  # kB, of this process only (ru_maxrss would carry the parent's peak across exec)
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

data = open(sys.argv[1], "rb").read()
before = status("VmRSS")
start = time.perf_counter()
decode_resized(data, size=int(sys.argv[2]), channels=int(sys.argv[3]))
print(before, status("VmHWM"), time.perf_counter() - start)
"""


def largest_allowed_images(folder: Path) -> dict[str, tuple[Path, int]]:
    """The worst cases the data stage accepts, written to ``folder``: a JPEG and a PNG of
    :data:`~dpmedbench.data.imaging.MAX_PIXELS` pixels (4:3, RGB, with texture so that they are not trivially
    small), each under :data:`~dpmedbench.data.archive.MAX_MEMBER_BYTES`. ``{label: (path, channels)}``."""
    from ..data.archive import MAX_MEMBER_BYTES
    from ..data.imaging import MAX_PIXELS

    h = int((MAX_PIXELS * 3 / 4) ** 0.5)
    w = MAX_PIXELS // h
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = 128 + 60 * np.sin(x / 97) * np.cos(y / 131)
    out = {}
    for label, fmt, channels, noise in (("JPEG, 1 channel", "JPEG", 1, 12), ("PNG, 3 channels", "PNG", 3, 3)):
        planes = [base + rng.normal(0, noise, base.shape).astype(np.float32) for _ in range(channels)]
        arr = np.stack(planes, -1).clip(0, 255).astype(np.uint8)
        path = folder / f"largest.{fmt.lower()}"
        Image.fromarray(arr[..., 0] if channels == 1 else arr).save(path, format=fmt, quality=95)
        if path.stat().st_size > MAX_MEMBER_BYTES:
            raise SystemExit(f"{path}: {path.stat().st_size:,} bytes, over the member limit: lower the noise")
        out[f"{label}, {w} x {h}"] = (path, channels)
    return out


def bench_memory(*, size: int, workers: tuple[int, ...], folder: Path) -> dict[str, float]:
    """Peak memory of decoding the largest images the data stage accepts, each in a fresh process (what one
    prepare worker holds at most), and the bound for ``workers`` workers. Prints a row per image."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    peaks = {}
    for label, (path, channels) in largest_allowed_images(folder).items():
        run = subprocess.run(
            [sys.executable, "-c", _PEAK_CHILD, str(path), str(size), str(channels)],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        )
        before, after, seconds = run.stdout.split()
        peak, added = int(after) / 1024, (int(after) - int(before)) / 1024
        peaks[label] = peak
        bound = "  ".join(f"{n}: {peak * n:,.0f}" for n in workers)
        print(
            f"{label:<32} {path.stat().st_size / 1e6:>7.1f} {float(seconds):>6.2f} {peak:>8,.0f} {added:>8,.0f}   "
            f"{bound}"
        )
    return peaks
