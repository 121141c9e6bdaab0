from __future__ import annotations

import io

import numpy as np
import pytest
from dpmedbench.errors import ImageError
from dpmedbench.imaging import decode_resized, decode_resized_naive
from dpmedbench.synth import chest_image, fundus_image
from PIL import Image


def _encode(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    return chest_image(np.random.default_rng(0), 1400, 1100, pneumonia=True)


@pytest.mark.parametrize("mode", ["center_crop", "squash", "pad"])
@pytest.mark.parametrize("stored_as", ["L", "RGB"])
def test_fast_jpeg_path_matches_the_naive_one(xray, mode, stored_as):
    data = _encode(xray, "JPEG", mode=stored_as, quality=95)
    assert Image.open(io.BytesIO(data)).mode == stored_as
    fast = decode_resized(data, size=256, channels=1, mode=mode)
    naive = decode_resized_naive(data, size=256, channels=1, mode=mode)
    assert fast.shape == naive.shape == (256, 256, 1) and fast.dtype == np.uint8
    assert psnr(fast, naive) > 38, psnr(fast, naive)


def test_draft_decoding_really_happens(xray):
    """The fast path must decode at a reduced DCT scale: check Pillow's draft answer directly."""
    im = Image.open(io.BytesIO(_encode(xray, "JPEG")))
    im.draft("L", (256 * 1400 // 1100 + 1, 256))
    assert im.size[1] < 1100 and im.size[1] >= 256


def test_png_rgb_path_matches_the_naive_one():
    arr = fundus_image(np.random.default_rng(1), 1500, 1000, grade=3)
    data = _encode(arr, "PNG")
    fast = decode_resized(data, size=224, channels=3)
    naive = decode_resized_naive(data, size=224, channels=3)
    assert fast.shape == (224, 224, 3)
    assert psnr(fast, naive) > 35


def test_center_crop_keeps_the_middle_and_pad_keeps_everything():
    arr = np.zeros((100, 300), np.uint8)
    arr[:, :100] = 255  # a white left third
    data = _encode(arr, "PNG")
    crop = decode_resized(data, size=50, channels=1, mode="center_crop")[..., 0]
    assert crop.mean() < 5  # the white third is cropped away
    pad = decode_resized(data, size=60, channels=1, mode="pad")[..., 0]
    assert pad[:15].max() == 0 and pad[-15:].max() == 0  # black bars above and below
    assert pad[30, :15].mean() > 240  # the white third is still there


def test_greyscale_to_rgb_and_rgb_to_greyscale():
    grey = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    rgb = decode_resized(_encode(grey, "PNG"), size=32, channels=3)
    assert rgb.shape == (32, 32, 3) and np.array_equal(rgb[..., 0], rgb[..., 2])
    colour = fundus_image(np.random.default_rng(0), 64, 64, 1)
    assert decode_resized(_encode(colour, "PNG"), size=32, channels=1).shape == (32, 32, 1)


def test_palette_and_alpha_images():
    colour = fundus_image(np.random.default_rng(0), 64, 64, 2)
    for mode in ("P", "RGBA", "LA"):
        out = decode_resized(_encode(colour, "PNG", mode=mode), size=32, channels=3)
        assert out.shape == (32, 32, 3) and out.max() > 100, mode


def test_16_bit_png_is_scaled_not_clipped():
    arr16 = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(arr16).save(buf, format="PNG")
    out = decode_resized(buf.getvalue(), size=64, channels=1, mode="squash")[..., 0]
    assert out.min() <= 2 and out.max() >= 250 and 100 < out.mean() < 155


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage bytes", "truncated-jpeg"],
)
def test_undecodable_bytes_raise_image_error(xray, data):
    if data == "truncated-jpeg":
        full = _encode(xray, "JPEG")
        data = full[: len(full) // 2]
    with pytest.raises(ImageError, match="cannot decode image"):
        decode_resized(data, size=64, channels=1)
