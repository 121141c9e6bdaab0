"""``bench cell``: whole cells through the real training code on synthetic arrays of the real datasets' sizes
(chest X-ray 4,700 train images of 256x256x1, APTOS 2,636 of 256x256x3): seconds per epoch, images per second,
and the projected wall time of the paper's grid (per dataset: one non-private and three Local-DP cells, which
train alike, and three DP-SGD cells; 50 epochs each)."""

from __future__ import annotations

import secrets
import tempfile
from pathlib import Path

import numpy as np

from ..core.runtime import pick_device

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


def synthetic_dataset(tmp: Path, dataset: str, index: int, scale: float, size: int) -> tuple[dict, dict[str, int]]:
    """Random splits of ``dataset``'s real sizes times ``scale`` in ``tmp/<dataset>/``: ``{split: (npy, csv)}``
    and the image counts."""
    n_train, n_val, n_test, channels, classes = REAL_SIZES[dataset]
    folder = tmp / dataset
    folder.mkdir()
    counts = {"train": n_train, "val": n_val, "test": n_test}
    counts = {name: max(classes * 2, round(n * scale)) for name, n in counts.items()}
    splits = {
        name: _synthetic_split(folder, name, n, size, channels, classes, 10 * index + i)
        for i, (name, n) in enumerate(counts.items())
    }
    return splits, counts


def _time_cell(dataset: str, mechanism: str, chunk: int, splits: dict, out: Path, **settings) -> list[float]:
    """Seconds of each epoch of one cell trained by :func:`dpmedbench.training.cell.train_cell`."""
    from ..core.settings import CellConfig, DPSettings
    from ..training.cell import train_cell

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
    train_cell(
        config,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        out_dir=out,
        threads=threads,
        key=secrets.token_bytes(32),
    )  # a throwaway key: keyed noise, as the default cells draw it
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
            splits, counts = synthetic_dataset(Path(tmp), dataset, d, scale, size)
            folder = Path(tmp) / dataset
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


# --------------------------------------------------------------------------------- the whole grid, packed
_GRID_JOB = """
import json, sys, time
sys.path.insert(0, {scripts!r})
from pathlib import Path
from dpmedbench.bench.cells import _time_cell
job = json.loads(sys.argv[1])
start = time.perf_counter()
_time_cell(job["dataset"], job["mechanism"], job["chunk"], job["splits"], Path(job["out"]), **job["settings"])
print(json.dumps({{"seconds": time.perf_counter() - start}}))
"""


def grid_jobs(datasets: list[str], *, betas: int, dp_chunk: int, crop: int, grad_sample_mode: str = "bk") -> list[dict]:
    """The paper's grid as training jobs: per dataset the non-private cell and ``betas`` Local-DP cells (which
    train like it) and ``betas`` DP-SGD cells, each with the GPU memory it declares (:mod:`dpmedbench.core.gpumem`).

    >>> [(j["label"], j["gpu_mem_mb"]) for j in grid_jobs(["chest_xray"], betas=1, dp_chunk=32, crop=224)]
    [('chest_xray/none', 4621), ('chest_xray/ldp1', 4621), ('chest_xray/dpsgd1', 2778)]
    """
    from ..core.gpumem import gpu_memory_mb

    jobs = []
    for dataset in datasets:
        cells = [("none", "none", 128)] + [(f"ldp{b + 1}", "none", 128) for b in range(betas)]
        cells += [(f"dpsgd{b + 1}", "dpsgd", dp_chunk) for b in range(betas)]
        for label, mechanism, chunk in cells:
            kind = "dpsgd" if mechanism == "dpsgd" else "none"
            need = gpu_memory_mb(kind, crop=crop, chunk=chunk, grad_sample_mode=grad_sample_mode)
            jobs.append(
                {
                    "label": f"{dataset}/{label}",
                    "dataset": dataset,
                    "mechanism": mechanism,
                    "chunk": chunk,
                    "gpu_mem_mb": need,
                }
            )
    return jobs


def pack(jobs: list[dict], *, card_mib: int, parallel: int, start, poll) -> tuple[float, int]:
    """Run ``jobs`` as the local profile schedules them: as many at once as fit in ``card_mib`` (and at most
    ``parallel``), the next one started as soon as it fits. ``start(job)`` returns a handle, ``poll(handle)``
    True once it has ended. Returns the wall seconds and the most jobs that ran at once."""
    import time

    waiting, running, most = list(jobs), [], 0
    began = time.perf_counter()
    while waiting or running:
        running = [(job, handle) for job, handle in running if not poll(handle)]
        free = card_mib - sum(job["gpu_mem_mb"] for job, _ in running)
        for job in list(waiting):
            if len(running) < parallel and job["gpu_mem_mb"] <= free:
                running.append((job, start(job)))
                waiting.remove(job)
                free -= job["gpu_mem_mb"]
        if waiting and not running:
            raise SystemExit(
                f"{waiting[0]['label']} needs {waiting[0]['gpu_mem_mb']} MiB, more than the card's {card_mib}"
            )
        most = max(most, len(running))
        time.sleep(0.05)
    return time.perf_counter() - began, most


def bench_grid(
    *,
    datasets: list[str],
    epochs: int,
    scale: float,
    size: int,
    crop: int,
    device: str,
    threads: int,
    dp_chunk: int,
    card_mib: int,
    parallel: int,
    batch: int = 128,
    betas: int = 3,
) -> dict[str, float]:
    """Wall time of the paper's grid (:func:`grid_jobs`) trained by the real training code on synthetic arrays
    of the real sizes (times ``scale``), each cell a fresh process, packed onto one device as the local profile
    packs them (:func:`pack`). Prints each cell's seconds as it ends and the total."""
    import json
    import subprocess
    import sys

    scripts = str(Path(__file__).resolve().parents[2])
    settings = {"epochs": epochs, "batch_size": batch, "crop": crop, "device": device, "threads": threads}
    jobs = grid_jobs(datasets, betas=betas, dp_chunk=dp_chunk, crop=crop)
    with tempfile.TemporaryDirectory() as tmp:
        splits = {
            dataset: synthetic_dataset(Path(tmp), dataset, d, scale, size)[0] for d, dataset in enumerate(datasets)
        }
        code = _GRID_JOB.format(scripts=scripts)
        started: list[subprocess.Popen] = []

        def start(job: dict) -> subprocess.Popen:
            args = {**job, "splits": splits[job["dataset"]], "out": str(Path(tmp) / job["label"]), "settings": settings}
            proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], stdout=subprocess.PIPE, text=True)
            proc.label = job["label"]  # type: ignore[attr-defined]
            started.append(proc)
            return proc

        def poll(proc: subprocess.Popen) -> bool:
            if proc.poll() is None:
                return False
            out = proc.stdout.read() if proc.stdout else ""
            if proc.returncode != 0:
                raise SystemExit(f"a grid cell failed (exit status {proc.returncode})")
            seconds = json.loads(out.splitlines()[-1])["seconds"]
            print(f"  {proc.label:<20} {seconds:>8.1f} s", flush=True)  # type: ignore[attr-defined]
            return True

        try:
            seconds, most = pack(jobs, card_mib=card_mib, parallel=parallel, start=start, poll=poll)
        finally:  # a failed cell stops the others before their folder goes
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    print(f"grid: {len(jobs)} cells, {epochs} epochs each, at most {most} at once: {seconds / 60:.2f} min", flush=True)
    return {"grid_minutes": seconds / 60, "cells": len(jobs), "most_at_once": most}
