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
