from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from dpmedbench.figure2 import figure2
from dpmedbench.ldp import (
    MECHANISMS,
    beta_label,
    decode_stored,
    laplace_from_bits,
    materialise_copy,
    noisy_batch,
    quality_indices,
    random_words,
    storage_of,
)
from dpmedbench.quality import psnr, ssim
from dpmedbench.synth import fundus_image
from scipy import stats

N = 2_000_000


def _bits(n: int, seed: int = 0) -> np.ndarray:
    return random_words(np.random.Generator(np.random.PCG64(seed)), n)


@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_laplace_moments(beta):
    x = laplace_from_bits(_bits(N, seed=int(beta * 10)), beta).astype(np.float64)
    sd = np.sqrt(2) * beta
    assert abs(x.mean()) < 5 * sd / np.sqrt(N)  # zero mean
    assert abs(np.abs(x).mean() - beta) < 5 * beta / np.sqrt(N)  # E|X| = beta
    var_se = np.sqrt((24 - 4) * beta**4 / N)  # Var of X^2: E X^4 - (E X^2)^2 = 24b^4 - 4b^4
    assert abs(x.var() - 2 * beta**2) < 5 * var_se  # Var X = 2 beta^2


def test_laplace_distribution_matches_scipy():
    x = laplace_from_bits(_bits(200_000, seed=9), 2.0)
    assert stats.kstest(x, stats.laplace(scale=2.0).cdf).pvalue > 1e-3


def test_no_input_word_gives_inf_or_nan():
    """Exhaustive over the 2**23 values of the bits the sampler uses, both signs, including u's extremes."""
    k = np.arange(2**23, dtype=np.uint32) << np.uint32(9)
    for sign in (np.uint32(0), np.uint32(1)):
        x = laplace_from_bits(k | sign, 1.0)
        assert np.isfinite(x).all()
        assert np.abs(x).max() == pytest.approx(24 * np.log(2), rel=1e-6)
    extremes = np.array([0, 1, 2**32 - 1, 2**32 - 2, 2**9 - 1, 2**9], dtype=np.uint32)
    assert np.isfinite(laplace_from_bits(extremes, 4.0)).all()


def test_the_naive_inverse_cdf_would_return_minus_inf_at_zero():
    """Why the guard exists: the textbook formula with u = 0 exactly."""
    u = np.float32(0.0) - np.float32(0.5)
    with np.errstate(divide="ignore"):
        assert np.isinf(-np.sign(u) * np.log(np.float32(1) - 2 * np.abs(u)))


@pytest.fixture(scope="module")
def clean() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([fundus_image(rng, 32, 32, g % 5) for g in range(40)])


def _noise(clean, beta, **kw):
    args = {"mechanism": "laplace_pixel", "seed": 42, "dataset": "aptos", "split": "train", "start": 0}
    return noisy_batch(clean, beta=beta, **{**args, **kw}) - clean.astype(np.float32) / 255


def test_copies_at_different_betas_and_images_are_uncorrelated(clean):
    n1, n2 = _noise(clean, 1.0), _noise(clean, 2.0) / 2
    limit = 5 / np.sqrt(n1.size)
    assert abs(np.corrcoef(n1.ravel(), n2.ravel())[0, 1]) < limit
    a, b = n1[0].ravel(), n1[1].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(a.size)
    assert abs(np.corrcoef(n1.ravel(), _noise(clean, 1.0, split="val").ravel())[0, 1]) < limit
    assert abs(np.corrcoef(n1.ravel(), _noise(clean, 1.0, dataset="chest_xray").ravel())[0, 1]) < limit


def test_an_image_noise_does_not_depend_on_its_batch(clean):
    whole = _noise(clean, 2.0)
    assert np.array_equal(whole[10:20], _noise(clean[10:20], 2.0, start=10))


def _materialise(
    tmp_path, clean, *, name="copy", beta=1.0, mechanism="laplace_pixel", clip=False, noise_source="seeded", chunk=7
):
    src = tmp_path / "clean"
    src.mkdir(exist_ok=True)
    np.save(src / "train.npy", clean)
    np.save(src / "val.npy", clean[:5])
    out = tmp_path / name
    privacy = materialise_copy(
        dataset="aptos",
        beta=beta,
        mechanism=mechanism,
        clip=clip,
        seed=42,
        noise_source=noise_source,
        inputs={"train": src / "train.npy", "val": src / "val.npy"},
        outputs={"train": out / "train.npy", "val": out / "val.npy"},
        privacy_json=out / "privacy.json",
        chunk_images=chunk,
    )
    return out, privacy


def test_same_seed_gives_identical_bytes_whatever_the_chunk(tmp_path, clean):
    a, _ = _materialise(tmp_path, clean, name="a", chunk=7)
    b, _ = _materialise(tmp_path, clean, name="b", chunk=40)
    for f in ("train.npy", "val.npy"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    c, _ = _materialise(tmp_path, clean, name="c", beta=2.0)
    assert (a / "train.npy").read_bytes() != (c / "train.npy").read_bytes()


def test_os_entropy_is_not_reproducible(tmp_path, clean):
    a, pa = _materialise(tmp_path, clean, name="a", noise_source="os")
    b, _ = _materialise(tmp_path, clean, name="b", noise_source="os")
    assert (a / "train.npy").read_bytes() != (b / "train.npy").read_bytes()
    assert pa["seed"] is None and pa["seed_policy"].startswith("os:")


def test_pixel_copy_and_its_privacy_record(tmp_path, clean):
    out, privacy = _materialise(tmp_path, clean, beta=2.0)
    train = np.load(out / "train.npy")
    assert train.dtype == np.float16 and train.shape == clean.shape
    assert np.load(out / "val.npy").shape == (5, 32, 32, 3)
    expected = noisy_batch(clean, mechanism="laplace_pixel", beta=2.0, seed=42, dataset="aptos", split="train", start=0)
    assert np.array_equal(train, expected.astype(np.float16))
    assert json.loads((out / "privacy.json").read_text()) == privacy
    assert privacy["epsilon_per_value"] == 0.5 and privacy["epsilon_per_image"] == 32 * 32 * 3 / 2.0
    assert privacy["delta"] == 0 and "Laplace mechanism" in privacy["accountant"]
    assert privacy["storage"] == "float16" and privacy["clipped"] is False
    assert privacy["clean_splits"] == ["test"] and privacy["noised_splits"] == ["train", "val"]
    assert privacy["splits"]["train"]["images"] == 40
    assert 0.5 < privacy["splits"]["train"]["saturated_fraction"] < 0.95


def test_clipped_copy_is_uint8_post_processing(tmp_path, clean):
    out, privacy = _materialise(tmp_path, clean, clip=True)
    train = np.load(out / "train.npy")
    noisy = noisy_batch(clean, mechanism="laplace_pixel", beta=1.0, seed=42, dataset="aptos", split="train", start=0)
    assert train.dtype == np.uint8 and np.array_equal(train, np.rint(np.clip(noisy, 0, 1) * 255).astype(np.uint8))
    assert privacy["epsilon_per_value"] == 1.0 and privacy["clipped"] is True


def test_image_shift_is_one_draw_per_image_and_claims_no_epsilon(tmp_path, clean):
    out, privacy = _materialise(tmp_path, clean, mechanism="laplace_image_shift", beta=0.05)
    train = decode_stored(np.load(out / "train.npy"))
    assert np.load(out / "train.npy").dtype == np.uint8
    diff = train - clean.astype(np.float32) / 255
    inside = (train > 0.01) & (train < 0.99)
    for i in range(len(clean)):
        d = diff[i][inside[i]]
        assert d.size and d.max() - d.min() < 2.5 / 255, i  # one shift per image (up to rounding)
    assert len({round(float(np.median(diff[i][inside[i]])), 3) for i in range(len(clean))}) > 20
    assert privacy["formal_guarantee"] is False
    assert privacy["epsilon_per_value"] is None and privacy["epsilon_per_image"] is None
    assert "no finite epsilon" in privacy["epsilon_reason"]


def test_visual_privacy_falls_with_beta(tmp_path, clean):
    ssims = [
        _materialise(tmp_path, clean, name=f"b{b}", beta=b)[1]["splits"]["train"]["ssim_mean"] for b in (0.05, 0.2, 1.0)
    ]
    assert ssims[0] > ssims[1] > ssims[2]


def test_memory_stays_bounded_by_the_chunk(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (1500, 32, 32, 3), dtype=np.uint8)
    np.save(tmp_path / "train.npy", big)
    np.save(tmp_path / "val.npy", big[:10])
    dataset_float32 = big.size * 4
    tracemalloc.start()
    try:
        materialise_copy(
            dataset="aptos",
            beta=1.0,
            mechanism="laplace_pixel",
            clip=False,
            seed=0,
            noise_source="seeded",
            inputs={"train": tmp_path / "train.npy", "val": tmp_path / "val.npy"},
            outputs={"train": tmp_path / "o" / "train.npy", "val": tmp_path / "o" / "val.npy"},
            privacy_json=tmp_path / "o" / "privacy.json",
            chunk_images=32,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dataset_float32 / 8, f"peak {peak / 1e6:.1f} MB for a {dataset_float32 / 1e6:.1f} MB dataset"


def test_failure_leaves_no_output(tmp_path, clean):
    np.save(tmp_path / "train.npy", clean)
    np.save(tmp_path / "val.npy", clean.astype(np.float32))  # wrong dtype: fails after train was written
    with pytest.raises(ValueError, match="val.npy: expected a uint8"):
        materialise_copy(
            dataset="aptos",
            beta=1.0,
            mechanism="laplace_pixel",
            clip=False,
            seed=0,
            noise_source="seeded",
            inputs={"train": tmp_path / "train.npy", "val": tmp_path / "val.npy"},
            outputs={"train": tmp_path / "o" / "train.npy", "val": tmp_path / "o" / "val.npy"},
            privacy_json=tmp_path / "o" / "privacy.json",
        )
    assert list((tmp_path / "o").iterdir()) == []


def test_quality_sample():
    assert list(quality_indices(5, 0)) == [0, 1, 2, 3, 4] and list(quality_indices(5, 9)) == [0, 1, 2, 3, 4]
    assert list(quality_indices(101, 5)) == [0, 25, 50, 75, 100]


def test_registry_and_labels():
    assert set(MECHANISMS) == {"laplace_pixel", "laplace_image_shift"}
    assert storage_of("laplace_pixel", False) == "float16" and storage_of("laplace_image_shift", False) == "uint8"
    assert [beta_label(b) for b in (1, 2.0, 0.5, 4)] == ["1", "2", "0.5", "4"]


def test_quality_against_scikit_image(clean):
    skimage_metrics = pytest.importorskip("skimage.metrics")
    a = clean[0].astype(np.float32) / 255
    for beta in (0.02, 0.3):
        b = np.clip(a + np.random.default_rng(3).laplace(0, beta, a.shape), 0, 1).astype(np.float32)
        ref = skimage_metrics.structural_similarity(
            a, b, data_range=1, channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
        )
        assert ssim(a, b) == pytest.approx(ref, abs=1e-6)
        assert psnr(a, b) == pytest.approx(skimage_metrics.peak_signal_noise_ratio(a, b, data_range=1), abs=1e-4)
    assert ssim(a, a) == pytest.approx(1.0) and psnr(a, a) == float("inf")


def test_figure2_shows_the_materialised_copies(tmp_path, clean):
    copies, records = [], []
    for beta in (1.0, 2.0):
        out, _ = _materialise(tmp_path, clean, name=f"beta{beta:g}", beta=beta)
        copies.append(out / "train.npy")
        records.append(out / "privacy.json")
    outputs = [tmp_path / "fig" / "figure2.png", tmp_path / "fig" / "figure2.pdf"]
    figure2(
        dataset="aptos",
        clean_npy=tmp_path / "clean" / "train.npy",
        copies=copies,
        privacy_jsons=records,
        index=3,
        seed=42,
        outputs=outputs,
    )
    assert outputs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and outputs[1].read_bytes()[:5] == b"%PDF-"
    with pytest.raises(ValueError, match="ldp.figure_index 99 is outside the 40 training images"):
        figure2(
            dataset="aptos",
            clean_npy=tmp_path / "clean" / "train.npy",
            copies=copies,
            privacy_jsons=records,
            index=99,
            seed=42,
            outputs=outputs,
        )
