from __future__ import annotations

import json
import tracemalloc
from fractions import Fraction

import numpy as np
import pytest
from dpmedbench.core.names import LDP_MECHANISMS, beta_label
from dpmedbench.core.noisekey import NoiseKeyError, key_id
from dpmedbench.data.synth import fundus_image
from dpmedbench.ldp.copies import materialise_copy
from dpmedbench.ldp.discrete import discrete_laplace
from dpmedbench.ldp.figure2 import figure2, representative_index
from dpmedbench.ldp.mechanisms import (
    MECHANISMS,
    LdpParams,
    decode_stored,
    dp_pix_scale,
    dp_pix_sum_scale,
    noisy_batch,
    random_words,
    storage_of,
)
from dpmedbench.ldp.noise import image_generators, laplace_from_bits
from dpmedbench.ldp.quality import psnr, quality_indices, ssim
from scipy import stats

from ..support.cells import TEST_KEY

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
    """The noise in grey levels (integers) that the per-pixel mechanism adds to ``clean``."""
    args = {"mechanism": "laplace_pixel", "seed": 42, "dataset": "aptos", "split": "train", "start": 0}
    return noisy_batch(clean, beta=beta, **{**args, **kw}) - clean.astype(np.int32)


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
    tmp_path,
    clean,
    *,
    name="copy",
    beta=1.0,
    mechanism="laplace_pixel",
    clip=False,
    noise_source="keyed",
    chunk=7,
    key=TEST_KEY,
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
        key=key,
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


def test_keyed_noise_is_the_keys_and_a_seeded_copy_claims_no_guarantee(tmp_path, clean):
    """The default: noise from the secret key. The same key rebuilds identical bytes, another key gives other noise;
    the record names the key's id, never the key, and no seed. With the published seed instead, the copy is the
    same mechanism but its epsilon only holds if the seed were secret: no formal guarantee, every epsilon null and
    kept as ..._if_seed_secret."""
    a, pa = _materialise(tmp_path, clean, name="a")
    b, _ = _materialise(tmp_path, clean, name="b")
    c, pc = _materialise(tmp_path, clean, name="c", key=bytes(reversed(TEST_KEY)))
    assert (a / "train.npy").read_bytes() == (b / "train.npy").read_bytes() != (c / "train.npy").read_bytes()
    assert pa["noise_source"] == "keyed" and pa["key_id"] == key_id(TEST_KEY) != pc["key_id"] and pa["seed"] is None
    assert pa["formal_guarantee"] and pa["epsilon"] == 1.0 and "HMAC-SHA256" in pa["randomness"]
    assert TEST_KEY.hex() not in (a / "privacy.json").read_text()
    _, ps = _materialise(tmp_path, clean, name="s", noise_source="seeded")
    assert ps["formal_guarantee"] is False and ps["epsilon"] is None and "published seed" in ps["epsilon_reason"]
    assert ps["epsilon_if_seed_secret"] == 1.0 and ps["epsilon_per_image"] is None and ps["epsilon_m_pixels"] is None
    assert ps["epsilon_per_image_if_seed_secret"] == 32 * 32 * 3 and ps["seed"] == 42
    with pytest.raises(NoiseKeyError, match="needs the noise key"):
        _materialise(tmp_path, clean, name="nokey", key=None)
    assert not (tmp_path / "nokey").exists() or not list((tmp_path / "nokey").iterdir())


def test_os_entropy_is_not_reproducible(tmp_path, clean):
    a, pa = _materialise(tmp_path, clean, name="a", noise_source="os")
    b, _ = _materialise(tmp_path, clean, name="b", noise_source="os")
    assert (a / "train.npy").read_bytes() != (b / "train.npy").read_bytes()
    assert pa["seed"] is None and pa["seed_policy"].startswith("os:")


def test_pixel_copy_and_its_privacy_record(tmp_path, clean):
    out, privacy = _materialise(tmp_path, clean, beta=2.0)
    train = np.load(out / "train.npy")
    assert train.dtype == np.int16 and train.shape == clean.shape
    assert np.load(out / "val.npy").shape == (5, 32, 32, 3)
    expected = noisy_batch(clean, mechanism="laplace_pixel", beta=2.0, seed=42, dataset="aptos", split="train", start=0,
                           noise_source="keyed", key=TEST_KEY)  # fmt: skip
    assert np.array_equal(train, expected)  # integer grey levels, nothing rounded or clamped
    # the noise is the exact sampler's, image by image from its own generator, at scale 255 beta
    gens = image_generators(seed=42, dataset="aptos", mechanism="laplace_pixel", beta=2.0, split="train", start=0,
                            count=len(clean), noise_source="keyed", key=TEST_KEY)  # fmt: skip
    sampler = discrete_laplace(Fraction(510))
    for image, gen, noisy in zip(clean, gens, train, strict=True):
        assert np.array_equal(noisy, image + sampler.sample(gen, image.size).reshape(image.shape))
    assert json.loads((out / "privacy.json").read_text()) == privacy
    assert privacy["epsilon_per_value"] == 0.5 and privacy["epsilon_per_image"] == 32 * 32 * 3 / 2.0
    assert privacy["delta"] == 0 and "discrete Laplace mechanism" in privacy["accountant"]
    assert privacy["noise_scale_grey_levels"] == 510 and "exact discrete Laplace" in privacy["sampler"]
    assert (
        privacy["storage"] == "int16"
        and privacy["clipped"] is False
        and privacy["splits"]["train"]["clamped_int16"] == 0
    )
    assert privacy["clean_splits"] == ["test"] and privacy["noised_splits"] == ["train", "val"]
    assert privacy["splits"]["train"]["images"] == 40
    assert 0.5 < privacy["splits"]["train"]["saturated_fraction"] < 0.95


def test_clipped_copy_is_uint8_post_processing(tmp_path, clean):
    out, privacy = _materialise(tmp_path, clean, clip=True)
    train = np.load(out / "train.npy")
    noisy = noisy_batch(clean, mechanism="laplace_pixel", beta=1.0, seed=42, dataset="aptos", split="train", start=0,
                        noise_source="keyed", key=TEST_KEY)  # fmt: skip
    assert train.dtype == np.uint8 and np.array_equal(train, np.clip(noisy, 0, 255).astype(np.uint8))
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
            noise_source="keyed",
            key=TEST_KEY,
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
            noise_source="keyed",
            key=TEST_KEY,
            inputs={"train": tmp_path / "train.npy", "val": tmp_path / "val.npy"},
            outputs={"train": tmp_path / "o" / "train.npy", "val": tmp_path / "o" / "val.npy"},
            privacy_json=tmp_path / "o" / "privacy.json",
        )
    assert list((tmp_path / "o").iterdir()) == []


def test_quality_sample():
    assert list(quality_indices(5, 0)) == [0, 1, 2, 3, 4] and list(quality_indices(5, 9)) == [0, 1, 2, 3, 4]
    assert list(quality_indices(101, 5)) == [0, 25, 50, 75, 100]


def test_registry_and_labels():
    assert set(MECHANISMS) == {"laplace_pixel", "laplace_image_shift", "dp_pix"} == set(LDP_MECHANISMS)
    assert storage_of("laplace_pixel", False) == "int16" and storage_of("laplace_image_shift", False) == "uint8"
    assert storage_of("dp_pix", False) == "int16" and storage_of("dp_pix", True) == "uint8"
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


def test_figure2_shows_every_mechanism_and_a_representative_image(tmp_path, clean, monkeypatch):
    import dpmedbench.ldp.figure2 as fig2

    drawn = {}
    monkeypatch.setattr(fig2, "save_figure", lambda fig, outputs, dpi: drawn.update(fig=fig))
    copies, records = [], []
    for mechanism in ("laplace_image_shift", "laplace_pixel"):  # any order: rows follow the registry
        for beta in (1.0, 2.0):
            out, _ = _materialise(tmp_path, clean, name=f"{mechanism}{beta:g}", beta=beta, mechanism=mechanism)
            copies.append(out / "train.npy")
            records.append(out / "privacy.json")
    common = {"dataset": "aptos", "clean_npy": tmp_path / "clean" / "train.npy", "copies": copies,
              "privacy_jsons": records, "outputs": []}  # fmt: skip
    assert figure2(index=3, **common) == 3
    axes = drawn["fig"].axes
    assert len(axes) == 2 * 3  # two mechanisms x (clean + 2 betas)
    assert [axes[0].get_ylabel(), axes[3].get_ylabel()] == ["Local-DP, per-pixel Laplace", "Local-DP, image shift"]
    assert "PSNR" in axes[1].get_title() and "per 16 pixels" in axes[1].get_title()
    assert "no ε" in axes[4].get_title()
    arrays = [np.load(c, mmap_mode="r") for c in copies]
    chosen = figure2(index=None, **common)
    assert chosen == representative_index(arrays)
    assert "most typical" in drawn["fig"]._suptitle.get_text()
    # The shift's copy of the chosen image is not saturated to one flat colour at beta = 1.
    shift = np.clip(decode_stored(np.asarray(arrays[0][chosen])), 0, 1)
    assert 0 < shift.mean() < 1 and shift.std() > 0
    with pytest.raises(ValueError, match="ldp.figure_index 99 is outside the 40 training images"):
        figure2(index=99, **common)
    # The clean panel is labelled as outside the guarantee; for a release it and the PSNR/SSIM figures go.
    figure2(index=3, **common)
    assert "outside the guarantee" in drawn["fig"].axes[0].get_title()
    figure2(index=3, show_clean=False, **common)
    axes = drawn["fig"].axes
    assert len(axes) == 2 * 2 and not any("clean" in a.get_title() or "PSNR" in a.get_title() for a in axes)
    assert "clean and" not in drawn["fig"]._suptitle.get_text()


def test_representative_index_takes_the_median_copy():
    share = [0.9, 0.0, 0.3, 0.1, 0.5, 1.0, 0.2]  # values pushed to 0 or 1: the median copy wipes out 30 %
    mask = np.random.default_rng(1).random((4, 4, 1))
    copy = np.stack([np.where(mask < s, 255, 102) for s in share]).astype(np.int16)
    assert representative_index([copy]) == 2
    flat = copy.copy()
    flat[2] = 0  # image 2 wiped out in a second copy: no longer typical there
    assert representative_index([copy, flat]) != 2


# ------------------------------------------------------------------------------------------------------ DP-Pix
def _pix(clean, beta, block=8, m=4, **kw):
    args = {"mechanism": "dp_pix", "seed": 42, "dataset": "aptos", "split": "train", "start": 0}
    return noisy_batch(clean, beta=beta, params=LdpParams(block=block, neighbourhood=m), **{**args, **kw})


@pytest.mark.parametrize("channels", [1, 3])
def test_dp_pix_cells_are_constant_and_hold_the_mean_of_an_exactly_noised_cell_sum(channels):
    """Every b x b cell is constant per channel and equals the rounded mean of its integer sum plus the exact
    sampler's discrete Laplace noise of scale 255 C m beta, drawn from the image's own generator; in grey levels
    on the mean that noise has mean absolute value 255 C m beta / b^2."""
    rng = np.random.default_rng(5)
    clean = rng.integers(0, 256, (300, 32, 32, channels), dtype=np.uint8)
    block, m = 8, 4
    for beta in (1.0, 4.0):
        noisy = _pix(clean, beta, block, m)
        cells = noisy.reshape(300, 4, block, 4, block, channels)
        assert np.all(cells == cells[:, :, :1, :, :1, :]), "a cell is not constant"
        sums = clean.astype(np.int64).reshape(300, 4, block, 4, block, channels).sum(axis=(2, 4))
        scale = dp_pix_sum_scale(beta, m, channels)
        assert scale == 255 * channels * m * Fraction(beta)
        gens = image_generators(seed=42, dataset="aptos", mechanism="dp_pix", beta=beta, split="train", start=0,
                                count=300, noise_source="seeded")  # fmt: skip
        sampler = discrete_laplace(scale)
        for i, gen in enumerate(gens):
            noised = sums[i] + sampler.sample(gen, sums[i].size).reshape(sums[i].shape)
            assert np.array_equal(cells[i, :, 0, :, 0, :], (2 * noised + block**2) // (2 * block**2))
        residual = cells[:, :, 0, :, 0, :] - sums / block**2  # grey levels on the cell mean
        grey = float(scale) / block**2
        assert dp_pix_scale(beta, block, m, channels) * 255 == pytest.approx(grey)
        assert abs(residual.mean()) < 5 * grey * np.sqrt(2 / residual.size)
        assert np.abs(residual).mean() == pytest.approx(grey, rel=0.05)


def test_dp_pix_noise_is_independent_across_cells_images_betas_and_mechanisms():
    rng = np.random.default_rng(6)
    clean = rng.integers(0, 256, (200, 16, 16, 1), dtype=np.uint8)
    means = clean.astype(np.float64).reshape(200, 2, 8, 2, 8, 1).mean(axis=(2, 4))
    r1 = (_pix(clean, 1.0)[:, ::8, ::8] - means).reshape(200, -1)
    r2 = (_pix(clean, 2.0)[:, ::8, ::8] - means).reshape(200, -1)
    limit = 5 / np.sqrt(r1.size)
    assert abs(np.corrcoef(r1.ravel(), r2.ravel())[0, 1]) < limit  # two betas never share a draw
    assert abs(np.corrcoef(r1[:, 0], r1[:, 1])[0, 1]) < 5 / np.sqrt(200)  # neighbouring cells
    assert abs(np.corrcoef(r1[:-1].ravel(), r1[1:].ravel())[0, 1]) < limit  # consecutive images
    pixel = noisy_batch(clean, beta=1.0, mechanism="laplace_pixel", seed=42, dataset="aptos", split="train", start=0)
    first = (pixel[:, ::8, ::8] - clean[:, ::8, ::8].astype(np.int32)).reshape(200, -1)
    assert abs(np.corrcoef(r1.ravel(), first.ravel())[0, 1]) < limit  # nor do two mechanisms
    assert np.array_equal(_pix(clean, 1.0), _pix(clean, 1.0))  # reproducible with the seed
    assert not np.array_equal(_pix(clean, 1.0), _pix(clean, 1.0, seed=43))
    assert np.array_equal(_pix(clean[5:9], 1.0, start=5), _pix(clean, 1.0)[5:9])  # chunks read the same draws


def test_dp_pix_privacy_record_and_the_common_neighbourhood(tmp_path):
    rng = np.random.default_rng(7)
    for split in ("train", "val"):
        np.save(tmp_path / f"{split}.npy", rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8))
    records = {}
    for mechanism in ("dp_pix", "laplace_pixel", "laplace_image_shift"):
        out = tmp_path / mechanism
        out.mkdir()
        records[mechanism] = materialise_copy(
            dataset="aptos",
            beta=2.0,
            mechanism=mechanism,
            clip=False,
            seed=1,
            noise_source="keyed",
            key=TEST_KEY,
            inputs={s: tmp_path / f"{s}.npy" for s in ("train", "val")},
            outputs={s: out / f"{s}.npy" for s in ("train", "val")},
            privacy_json=out / "privacy.json",
            block=8,
            neighbourhood=4,
        )
    pix = records["dp_pix"]
    assert pix["epsilon"] == 0.5 and pix["delta"] == 0 and pix["formal_guarantee"]
    assert pix["epsilon_m_pixels"] == 0.5 and pix["neighbourhood_pixels"] == 4 and pix["block"] == 8
    assert pix["noise_scale"] == pytest.approx(3 * 4 * 2.0 / 64)
    assert pix["epsilon_per_image"] == pytest.approx(32 * 32 / (4 * 2.0))
    assert "up to 4 pixels" in pix["unit"]
    assert records["laplace_pixel"]["epsilon_m_pixels"] == pytest.approx(4 * 3 / 2.0)  # m C / beta
    assert records["laplace_image_shift"]["epsilon_m_pixels"] is None
    assert json.loads((tmp_path / "dp_pix" / "privacy.json").read_text())["epsilon_m_pixels"] == 0.5
    assert LdpParams.from_record(pix) == LdpParams(clip=False, block=8, neighbourhood=4)


def test_dp_pix_refuses_a_block_that_does_not_divide_the_image(tmp_path):
    clean = np.zeros((2, 30, 30, 1), np.uint8)
    with pytest.raises(ValueError, match="b = 8 must divide the image's 30 x 30"):
        _pix(clean, 1.0)
    np.save(tmp_path / "t.npy", clean)
    with pytest.raises(ValueError, match="neighbourhood m must be at least 1"):
        materialise_copy(dataset="aptos", beta=1.0, mechanism="dp_pix", clip=False, seed=1, noise_source="keyed",
                         inputs={"train": tmp_path / "t.npy"}, outputs={"train": tmp_path / "o.npy"},
                         privacy_json=tmp_path / "p.json", block=10, neighbourhood=0)  # fmt: skip
    assert not (tmp_path / "o.npy").exists() and not (tmp_path / "p.json").exists()
