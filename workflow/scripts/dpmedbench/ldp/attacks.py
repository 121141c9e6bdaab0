"""What an attacker recovers from a Local-DP copy: re-identification and reconstruction.

Two attacks on one released noisy copy of a split, knowing only the mechanism and beta (as the published
configuration says):

* **re-identification**: a hospital holds its own clean images and checks a released noisy image against all of
  them. The noisy image is denoised, and every clean image of the split is ranked by its Pearson correlation
  with it over all pixel values; top-1 and top-5 rates are the shares of noisy images whose original ranks first
  (or among the first five), next to chance 1/N and 5/N. Ties count against the attacker.
* **reconstruction**: the denoiser's output against the clean image, PSNR and SSIM, next to the noisy copy's own.

The denoiser is the simplest that fits both mechanisms: an optional per-image recentring (subtract the image's
mean and add the mean over all released images, which undoes most of a brightness shift) followed by a k x k
box mean filter of the unclipped values (averaging k^2 values divides a per-value Laplace noise's variance by
k^2), then clipping to [0, 1]. (k, recentring) is chosen per copy by the best mean PSNR on a few tuning images,
disjoint from the evaluated ones: an attacker who knows beta can tune the same way on images of their own.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

from ..core.fileio import atomic_outputs, json_text, read_json
from ..core.seeds import derive_seed
from .mechanisms import decode_stored
from .quality import psnr, ssim

log = logging.getLogger(__name__)

#: Box filter sizes the denoiser is tuned over (those smaller than the image).
BOX_SIZES = (1, 3, 5, 9, 17, 33)


@dataclass(frozen=True)
class Denoiser:
    box: int  # k of the k x k mean filter (1: none)
    recentre: bool  # replace each image's mean by the mean over all released images

    def describe(self) -> str:
        parts = ["recentred" if self.recentre else "", f"{self.box}x{self.box} mean filter" if self.box > 1 else ""]
        return ", ".join(p for p in parts if p) or "none (the noisy copy as released)"

    def apply(self, noisy: np.ndarray, population_mean: float) -> np.ndarray:
        """Denoised float32 values (unclipped) of noisy images (n, H, W, C) on the [0, 1] scale."""
        out = np.asarray(noisy, dtype=np.float32)
        if self.recentre:
            out = out - out.mean(axis=(1, 2, 3), keepdims=True) + np.float32(population_mean)
        if self.box > 1:
            out = uniform_filter(out, size=(1, self.box, self.box, 1), mode="reflect")
        return out


def candidate_denoisers(side: int) -> list[Denoiser]:
    """Every (box size smaller than ``side``, recentring) pair.

    >>> [d.box for d in candidate_denoisers(8) if not d.recentre]
    [1, 3, 5]
    """
    return [Denoiser(k, r) for k in BOX_SIZES if k < side for r in (False, True)]


def tune_denoiser(clean: np.ndarray, noisy: np.ndarray, population_mean: float) -> tuple[Denoiser, float]:
    """The candidate with the best mean PSNR of its clipped output against ``clean`` (float [0, 1] images, the
    tuning set), and that PSNR; the simplest one wins ties."""
    best: tuple[Denoiser, float] | None = None
    for denoiser in candidate_denoisers(min(clean.shape[1:3])):
        shown = np.clip(denoiser.apply(noisy, population_mean), 0.0, 1.0)
        score = float(np.mean([min(psnr(c, s), 100.0) for c, s in zip(clean, shown, strict=True)]))
        if best is None or score > best[1] + 1e-9:
            best = (denoiser, score)
    assert best is not None
    return best


def standardise(images: np.ndarray) -> np.ndarray:
    """Rows of (n, D) float32 with zero mean and unit norm, so that a dot product is Pearson's correlation;
    constant images become zero rows (correlated with nothing)."""
    rows = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def true_match_ranks(queries: np.ndarray, truth: np.ndarray, gallery: Iterator[tuple[int, np.ndarray]]) -> np.ndarray:
    """Rank (0 = first) of each query's true original among the gallery by correlation.

    ``queries``: (q, D) standardised rows; ``truth``: (q,) gallery index of each query's original; ``gallery``:
    (start index, standardised rows) chunks covering the whole gallery once. A gallery image that correlates
    exactly as well as the original counts as ranked above it (ties go against the attacker).
    """
    scores: list[np.ndarray] = []
    starts: list[int] = []
    for start, rows in gallery:
        starts.append(start)
        scores.append(queries @ rows.T)
    order = np.argsort(starts)
    table = np.concatenate([scores[i] for i in order], axis=1)  # (q, N)
    own = table[np.arange(len(truth)), truth]
    return (table >= own[:, None]).sum(axis=1) - 1


def reidentification(ranks: np.ndarray, gallery_size: int) -> dict[str, Any]:
    """Top-1 and top-5 rates of ``ranks`` next to chance.

    >>> reidentification(np.array([0, 0, 3, 9]), 10)["top1"]
    0.5
    """
    return {
        "queries": len(ranks),
        "gallery": int(gallery_size),
        "top1": float(np.mean(ranks < 1)),
        "top5": float(np.mean(ranks < 5)),
        "chance_top1": 1.0 / gallery_size,
        "chance_top5": min(5.0, gallery_size) / gallery_size,
    }


def _chunks(array: np.ndarray, size: int, transform: Any) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(array), size):
        yield start, transform(np.asarray(array[start : start + size]))


def _as_unit(clean_uint8: np.ndarray) -> np.ndarray:
    return np.asarray(clean_uint8, dtype=np.float32) / np.float32(255.0)


def attack_copy(
    clean: np.ndarray,
    stored: np.ndarray,
    *,
    seed: int,
    queries: int = 500,
    quality_images: int = 64,
    tuning_images: int = 32,
    chunk: int = 256,
) -> dict[str, Any]:
    """Both attacks on one split: ``clean`` (N, H, W, C) uint8 originals, ``stored`` the noisy copy as
    stored (uint8 or int16 grey levels, same shape). Tuning images are drawn with ``seed`` and never evaluated; the
    evaluated images (``quality_images`` for reconstruction, ``queries`` for re-identification; 0: all the
    others) come from the rest."""
    if clean.shape != stored.shape or clean.ndim != 4:
        raise ValueError(f"the clean split {clean.shape} and its noisy copy {stored.shape} differ in shape")
    n = len(clean)
    if n < 4:
        raise ValueError(f"{n} image(s): the attacks need at least 4 (half to tune, half to evaluate)")
    population_mean = float(
        np.mean([decode_stored(np.asarray(stored[s : s + chunk])).mean() for s in range(0, n, chunk)])
    )
    order = np.random.default_rng(seed).permutation(n)
    tune_idx, rest = np.sort(order[: min(tuning_images, n // 2)]), order[min(tuning_images, n // 2) :]
    denoiser, _ = tune_denoiser(_as_unit(clean[tune_idx]), decode_stored(stored[tune_idx]), population_mean)
    eval_idx = np.sort(rest[: quality_images or len(rest)])
    reid_filter = _tune_reidentification(clean, stored, tune_idx, chunk)
    query_idx = np.sort(rest[: queries or len(rest)])
    ranks = {
        name: _ranks(clean, stored, query_idx, [use], chunk)[0]
        for name, use in (("filtered", reid_filter), ("released", Denoiser(1, False)))
    }
    return {
        "images": n,
        "tuning_images": len(tune_idx),
        "denoiser": {**asdict(denoiser), "description": denoiser.describe()},
        "reconstruction": _reconstruction(clean[eval_idx], stored[eval_idx], denoiser, population_mean),
        "reidentification": {**reidentification(ranks["filtered"], n), "filter": reid_filter.describe()},
        "reidentification_released": reidentification(ranks["released"], n),
    }


def _reconstruction(clean: np.ndarray, stored: np.ndarray, denoiser: Denoiser, population_mean: float) -> dict:
    """PSNR and SSIM against the clean images of the copy as a viewer sees it and of the denoiser's output."""
    clean, noisy = _as_unit(clean), decode_stored(np.asarray(stored))
    views = {"noisy": np.clip(noisy, 0.0, 1.0), "denoised": np.clip(denoiser.apply(noisy, population_mean), 0, 1)}
    result: dict[str, Any] = {"images": len(clean)}
    for name, shown in views.items():
        result[f"psnr_db_{name}"] = _mean(psnr(c, s) for c, s in zip(clean, shown, strict=True))
        result[f"ssim_{name}"] = _mean(ssim(c, s) for c, s in zip(clean, shown, strict=True))
    return result


def _ranks(
    clean: np.ndarray, stored: np.ndarray, query_idx: np.ndarray, filters: Sequence[Denoiser], chunk: int
) -> list[np.ndarray]:
    """Ranks of the true originals of the noisy images ``query_idx``, once per filter, in one pass over the
    gallery (every clean image of the split)."""
    noisy = decode_stored(np.asarray(stored[query_idx]))
    stacked = np.concatenate([standardise(f.apply(noisy, 0.0)) for f in filters])
    truth = np.tile(query_idx, len(filters))
    ranks = true_match_ranks(stacked, truth, _chunks(clean, chunk, lambda b: standardise(_as_unit(b))))
    return np.split(ranks, len(filters))


def _tune_reidentification(clean: np.ndarray, stored: np.ndarray, tune_idx: np.ndarray, chunk: int) -> Denoiser:
    """The box filter (correlation ignores brightness, so no recentring) whose queries rank their originals
    best on the tuning images: highest mean reciprocal rank, the smallest box on ties."""
    filters = [d for d in candidate_denoisers(min(clean.shape[1:3])) if not d.recentre]
    ranks = _ranks(clean, stored, tune_idx, filters, chunk)
    scores = [float(np.mean(1.0 / (1.0 + r))) for r in ranks]
    return filters[int(np.argmax(scores))]


def _mean(values: Any) -> float:
    return round(float(np.mean([min(v, 100.0) for v in values])), 4)


def attack_copies(
    *,
    dataset: str,
    beta: float,
    clean: Sequence[str | os.PathLike[str]],
    copies: Sequence[str | os.PathLike[str]],
    splits: Sequence[str],
    privacy_json: str | os.PathLike[str],
    out_json: str | os.PathLike[str],
    seed: int,
    queries: int,
    quality_images: int,
) -> dict[str, Any]:
    """Snakemake entry point: both attacks on every noisy split of one copy, written to ``out_json``."""
    privacy = read_json(privacy_json)
    result: dict[str, Any] = {
        "dataset": dataset,
        "beta": beta,
        "mechanism": privacy.get("mechanism"),
        "method": __doc__.split("\n\n", 1)[1].strip(),
        "outside_guarantee": "measured against the clean originals, which only the data holder has: for reading the "
        "guarantee, never released with the copy",
        "splits": {},
    }
    for split, clean_path, copy_path in zip(splits, clean, copies, strict=True):
        stream = derive_seed(dataset, privacy.get("mechanism"), beta, seed, split, "ldp-attack")
        clean_arr, stored = np.load(clean_path, mmap_mode="r"), np.load(copy_path, mmap_mode="r")
        try:
            found = attack_copy(clean_arr, stored, seed=stream, queries=queries, quality_images=quality_images)
        except ValueError as exc:
            raise ValueError(f"{copy_path}: {exc}") from None
        result["splits"][split] = found
        reid, rec = found["reidentification"], found["reconstruction"]
        log.info(
            "%s beta=%g %s: re-identified %.1f%% top-1, %.1f%% top-5 of %d noisy images among %d (chance %.2f%%); "
            "denoiser %s: PSNR %.2f -> %.2f dB, SSIM %.3f -> %.3f",
            dataset, beta, split, 100 * reid["top1"], 100 * reid["top5"], reid["queries"], reid["gallery"],
            100 * reid["chance_top1"], found["denoiser"]["description"], rec["psnr_db_noisy"],
            rec["psnr_db_denoised"], rec["ssim_noisy"], rec["ssim_denoised"],
        )  # fmt: skip
    with atomic_outputs(out_json) as (tmp,):
        tmp.write_text(json_text(result))
    return result
