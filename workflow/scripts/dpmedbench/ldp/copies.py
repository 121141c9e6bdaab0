"""A whole Local-DP copy on disk: every split streamed through the mechanism a chunk at a time into a
memory-mapped ``.npy``, with its saturation and quality figures, and the copy's ``privacy.json``."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..core.fileio import atomic_outputs, json_text
from ..core.noisekey import NoiseKeyError, key_id
from ..core.privacy import CLEAN_DATA_OUTPUTS, guarantee_of
from .mechanisms import (
    DEFAULT_BLOCK,
    DEFAULT_NEIGHBOURHOOD,
    GREY_LEVELS,
    MECHANISMS,
    LdpParams,
    decode_stored,
    perturb_into,
    storage_of,
    store,
)
from .noise import NoiseSource, randomness, seed_policy
from .quality import psnr, quality_indices, ssim

log = logging.getLogger(__name__)


def materialise_copy(
    *,
    dataset: str,
    beta: float,
    mechanism: str,
    clip: bool,
    seed: int,
    noise_source: NoiseSource,
    inputs: dict[str, str | os.PathLike[str]],
    key: bytes | None = None,
    outputs: dict[str, str | os.PathLike[str]],
    privacy_json: str | os.PathLike[str],
    chunk_images: int = 64,
    quality_images: int = 64,
    block: int = DEFAULT_BLOCK,
    neighbourhood: int = DEFAULT_NEIGHBOURHOOD,
) -> dict[str, Any]:
    """Write the noisy copy of each split in ``inputs`` (``{split: prepared .npy}``) to ``outputs``
    (``{split: noisy .npy}``) and the privacy record to ``privacy_json``.

    Streams ``chunk_images`` images at a time: memory stays bounded whatever the dataset size. PSNR and SSIM
    are computed on ``quality_images`` evenly spaced images per split (0: all). Everything is written under
    temporary names and renamed only when every file is complete. ``key``: the secret noise key, which
    ``noise_source: keyed`` needs (:mod:`dpmedbench.core.noisekey`).
    """
    _check_request(mechanism, beta, neighbourhood)
    if noise_source == "keyed" and key is None:
        raise NoiseKeyError("noise_source 'keyed' needs the noise key (noise_key), and none was given")
    params = LdpParams(clip=clip, block=block, neighbourhood=neighbourhood)
    storage = storage_of(mechanism, clip)
    splits = list(inputs)
    finals = [Path(outputs[s]) for s in splits] + [Path(privacy_json)]
    record: dict[str, Any] = {}
    with atomic_outputs(*finals) as tmps:
        for split, tmp in zip(splits, tmps, strict=False):
            clean = np.load(inputs[split], mmap_mode="r")
            if clean.dtype != np.uint8 or clean.ndim != 4:
                raise ValueError(
                    f"{inputs[split]}: expected a uint8 (N, H, W, C) array, got {clean.dtype} {clean.shape}"
                )
            noise = {"mechanism": mechanism, "beta": beta, "seed": seed, "dataset": dataset, "split": split}
            shape = tuple(int(v) for v in clean.shape[1:])
            record[split] = _copy_split(
                clean,
                tmp,
                storage=storage,
                chunk=chunk_images,
                quality=quality_images,
                noise_source=noise_source,
                params=params,
                key=key,
                **noise,
            )
            log.info("%s beta=%g %s: %d images, %s", dataset, beta, split, len(clean), record[split])
        privacy = _copy_record(
            dataset=dataset, beta=beta, mechanism=mechanism, shape=shape, params=params, storage=storage,
            seed=seed, noise_source=noise_source, key=key, splits=record,
        )  # fmt: skip
        tmps[-1].write_text(json_text(privacy))
    return privacy


def _check_request(mechanism: str, beta: float, neighbourhood: int) -> None:
    if mechanism not in MECHANISMS:
        raise ValueError(f"unknown Local-DP mechanism {mechanism!r}; known: {sorted(MECHANISMS)}")
    if beta <= 0:
        raise ValueError(f"beta must be positive, got {beta}")
    if neighbourhood < 1:
        raise ValueError(f"the neighbourhood m must be at least 1 pixel, got {neighbourhood}")


def _copy_record(
    *,
    dataset: str,
    beta: float,
    mechanism: str,
    shape: tuple[int, ...],
    params: LdpParams,
    storage: str,
    seed: int,
    noise_source: NoiseSource,
    key: bytes | None,
    splits: dict[str, Any],
) -> dict[str, Any]:
    """The copy's ``privacy.json``: the mechanism's privacy record (none with a published seed), how the copy is
    stored and seeded, and each split's saturation and quality figures (``splits``)."""
    record = MECHANISMS[mechanism].privacy(beta, shape, params)
    record = replace(record, randomness=randomness(noise_source),
                     details={**record.details, "outside_guarantee": dict(CLEAN_DATA_OUTPUTS)})  # fmt: skip
    record = guarantee_of(record, noise_source, key_id(key) if noise_source == "keyed" and key else None)
    return {
        "dataset": dataset,
        "beta": beta,
        "description": MECHANISMS[mechanism].description,
        **record.to_json(),
        "values_per_image": int(np.prod(shape)),
        "storage": storage,
        "clipped": storage == "uint8",
        "noised_splits": list(splits),
        "clean_splits": ["test"],
        "seed_policy": seed_policy(seed, noise_source),
        "seed": seed if noise_source == "seeded" else None,
        "splits": splits,
        "quality_note": "PSNR and SSIM compare a clean image with its noisy copy as a viewer sees it "
        "(values clipped to [0, 1]), averaged over quality_images evenly spaced images of the split; "
        "saturated_fraction is the share of all noisy values outside [0, 1] (grey levels outside 0-255, before any "
        "clipping); clamped_int16 counts the values beyond the int16 range, clamped (post-processing).",
        "dpmedbench_version": __version__,
    }


def _copy_split(
    clean: np.ndarray, tmp: Path, *, storage: str, chunk: int, quality: int, **noise: Any
) -> dict[str, float | int]:
    """Write the noisy copy of one split to ``tmp``, ``chunk`` images at a time; its saturation and quality."""
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=storage, shape=clean.shape)
    stats = _Stats(quality_indices(len(clean), quality))
    buffer = np.empty((min(chunk, len(clean)), *clean.shape[1:]), dtype=np.int32)  # reused, grey levels
    for start in range(0, len(clean), chunk):
        batch = np.asarray(clean[start : start + chunk])
        work = buffer[: len(batch)]
        perturb_into(work, batch, start=start, **noise)
        stats.count_saturated(work)
        stats.clamped += store(work, out[start : start + len(batch)])
        stats.add_quality(start, batch, out[start : start + len(batch)])
    out.flush()
    del out
    return stats.summary()


class _Stats:
    """Saturation over every value; PSNR and SSIM means over the images in ``quality``."""

    def __init__(self, quality: np.ndarray) -> None:
        self.quality = set(quality.tolist())
        self.n = 0
        self.psnr: list[float] = []
        self.ssim: list[float] = []
        self.saturated = 0
        self.clamped = 0
        self.values = 0

    def count_saturated(self, noisy: np.ndarray) -> None:
        self.saturated += int(np.count_nonzero(noisy < 0)) + int(np.count_nonzero(noisy > GREY_LEVELS))
        self.values += noisy.size
        self.n += len(noisy)

    def add_quality(self, start: int, clean_uint8: np.ndarray, stored: np.ndarray) -> None:
        for offset in range(len(clean_uint8)):
            if start + offset in self.quality:
                clean = clean_uint8[offset].astype(np.float32) / np.float32(255.0)
                shown = np.clip(decode_stored(stored[offset]), 0.0, 1.0)
                self.psnr.append(min(psnr(clean, shown), 100.0))
                self.ssim.append(ssim(clean, shown))

    def summary(self) -> dict[str, float | int]:
        if not self.n:
            return {"images": 0}
        return {
            "images": self.n,
            "quality_images": len(self.psnr),
            "psnr_db_mean": round(float(np.mean(self.psnr)), 3),
            "ssim_mean": round(float(np.mean(self.ssim)), 4),
            "saturated_fraction": round(self.saturated / self.values, 4),
            "clamped_int16": self.clamped,
        }
