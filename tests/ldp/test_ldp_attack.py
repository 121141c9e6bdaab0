"""What an attacker recovers from a Local-DP copy: re-identification and reconstruction on synthetic images
where the answer is known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dpmedbench.ldp.attacks import (
    Denoiser,
    attack_copies,
    attack_copy,
    reidentification,
    standardise,
    true_match_ranks,
    tune_denoiser,
)
from dpmedbench.ldp.copies import materialise_copy
from dpmedbench.ldp.mechanisms import noisy_batch, storage_of, store
from scipy import stats
from scipy.ndimage import zoom


def _images(n: int = 160, side: int = 48, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Smooth random images: 6x6 random fields, upsampled (distinct from one another, like real scans)."""
    base = np.random.default_rng(seed).random((n, 6, 6, channels))
    return (np.clip(zoom(base, (1, side / 6, side / 6, 1), order=1), 0, 1) * 255).astype(np.uint8)


def _copy(clean: np.ndarray, mechanism: str, beta: float) -> np.ndarray:
    values = noisy_batch(clean, mechanism=mechanism, beta=beta, seed=1, dataset="t", split="train", start=0)
    stored = np.empty(clean.shape, dtype=storage_of(mechanism, False))
    store(values, stored)
    return stored


def test_no_noise_reidentifies_every_image():
    clean = _images()
    found = attack_copy(clean, clean.copy(), seed=0, queries=0)
    assert found["reidentification"]["top1"] == 1.0
    assert found["reidentification"]["queries"] == len(clean) - found["tuning_images"]  # tuning never evaluated
    assert found["reconstruction"]["psnr_db_noisy"] == 100.0  # identical (capped)


def test_pure_noise_is_at_chance():
    """A 'copy' that is independent noise: the top-1 and top-5 rates are binomial at chance 1/N and 5/N."""
    clean = _images(n=200)
    noise = np.random.default_rng(5).integers(0, 256, clean.shape).astype(np.int16)
    found = attack_copy(clean, noise, seed=0, queries=0)
    reid = found["reidentification"]
    q = reid["queries"]
    for key, chance in (("top1", 1 / 200), ("top5", 5 / 200)):
        assert reid[f"chance_{key}"] == pytest.approx(chance)
        hits = round(reid[key] * q)
        assert stats.binomtest(hits, q, chance).pvalue > 1e-3, (key, hits, q)


def test_ties_count_against_the_attacker():
    """Constant images correlate with nothing: their originals are never 'found' by a tie."""
    gallery = standardise(np.ones((5, 16), np.float32))
    assert not gallery.any()
    ranks = true_match_ranks(gallery[:2], np.array([0, 1]), iter([(0, gallery)]))
    assert ranks.tolist() == [4, 4]
    assert reidentification(ranks, 5)["top1"] == 0.0


def test_gallery_chunks_in_any_order_give_the_same_ranks():
    rows = standardise(np.random.default_rng(0).random((9, 30)))
    whole = true_match_ranks(rows[:4] + 0.1, np.arange(4), iter([(0, rows)]))
    chunked = true_match_ranks(rows[:4] + 0.1, np.arange(4), iter([(5, rows[5:]), (0, rows[:5])]))
    assert whole.tolist() == chunked.tolist() == [0, 0, 0, 0]


def test_denoiser_recovers_structure_from_per_pixel_noise():
    """Per-value Laplace noise averages out under a box filter: the tuned denoiser beats the noisy copy by
    several dB, and the paper's beta = 1 copy is still re-identified far above chance."""
    clean = _images()
    stored = _copy(clean, "laplace_pixel", 1.0)
    found = attack_copy(clean, stored, seed=0, queries=0)
    rec = found["reconstruction"]
    assert found["denoiser"]["box"] > 1
    assert rec["psnr_db_denoised"] > rec["psnr_db_noisy"] + 5
    assert rec["ssim_denoised"] > rec["ssim_noisy"]
    assert found["reidentification"]["top1"] > 20 * found["reidentification"]["chance_top1"]


def test_recentring_undoes_a_brightness_shift():
    """The authors' shift moves every pixel by one draw: the tuned denoiser recentres."""
    clean = _images(channels=3)
    stored = _copy(clean, "laplace_image_shift", 0.1)
    denoiser, _ = tune_denoiser(clean[:32] / 255.0, stored[:32] / 255.0, float(stored.mean() / 255.0))
    assert denoiser.recentre
    shifted = Denoiser(1, True).apply(np.full((1, 4, 4, 1), 0.9, np.float32), 0.4)
    assert np.allclose(shifted, 0.4)


def test_refuses_mismatched_or_tiny_inputs():
    clean = _images(n=8)
    with pytest.raises(ValueError, match="differ in shape"):
        attack_copy(clean, clean[:, :40], seed=0)
    with pytest.raises(ValueError, match="at least 4"):
        attack_copy(clean[:3], clean[:3], seed=0)


def test_attack_copies_writes_every_split(tmp_path):
    """The Snakemake entry point on a real materialised copy: one record per noised split, reproducible."""
    clean = _images(n=40)
    inputs, outputs = {}, {}
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}.npy", clean)
        inputs[split], outputs[split] = tmp_path / f"{split}.npy", tmp_path / f"noisy_{split}.npy"
    privacy = tmp_path / "privacy.json"
    materialise_copy(
        dataset="t", beta=2.0, mechanism="laplace_pixel", clip=False, seed=0, noise_source="keyed", key=bytes(32),
        inputs=inputs, outputs=outputs, privacy_json=privacy,
    )  # fmt: skip
    kwargs = dict(
        dataset="t", beta=2.0, clean=[inputs["train"], inputs["val"]], copies=[outputs["train"], outputs["val"]],
        splits=["train", "val"], privacy_json=privacy, seed=0, queries=0, quality_images=8,
    )  # fmt: skip
    first = attack_copies(out_json=tmp_path / "a.json", **kwargs)
    attack_copies(out_json=tmp_path / "b.json", **kwargs)
    assert set(first["splits"]) == {"train", "val"}
    assert first["mechanism"] == "laplace_pixel"
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads((tmp_path / "b.json").read_text())
