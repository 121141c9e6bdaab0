from __future__ import annotations

import io
import zlib
from collections import Counter

import numpy as np
import pytest
from dpmedbench.core.errors import ImageError
from dpmedbench.data import imaging
from dpmedbench.data.imaging import decode_resized, decode_resized_naive
from dpmedbench.data.synth import chest_image, fundus_image
from PIL import Image, ImageOps


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


# ----------------------------------------------------------------------------------------------- bit depth
def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")


def _with_sbit(png: bytes, bits: bytes) -> bytes:
    """``png`` with an sBIT chunk right after IHDR (8-byte signature + 25-byte IHDR chunk)."""
    return png[:33] + _png_chunk(b"sBIT", bits) + png[33:]


def _png16_grey(arr: np.ndarray, sbit: int | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr.astype(np.uint16)).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    return buf.getvalue() if sbit is None else _with_sbit(buf.getvalue(), bytes([sbit]))


def _png16_rgb(arr: np.ndarray, sbit: int | None = None) -> bytes:
    """A 16-bit RGB PNG written by hand (Pillow cannot write one)."""
    h, w, _ = arr.shape
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    chunks = [_png_chunk(b"IHDR", w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([16, 2, 0, 0, 0]))]
    if sbit is not None:
        chunks.append(_png_chunk(b"sBIT", bytes([sbit] * 3)))
    chunks += [_png_chunk(b"IDAT", zlib.compress(rows)), _png_chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


@pytest.mark.parametrize(("value", "expected"), [(200, 1), (256, 1), (32768, 128), (65535, 255)])
def test_constant_16_bit_png_is_scaled_by_its_bit_depth_not_its_content(value, expected):
    data = _png16_grey(np.full((32, 48), value))
    out = decode_resized(data, size=16, channels=1)
    assert np.all(out == expected), (value, np.unique(out))


def test_full_range_16_bit_png_maps_exactly():
    arr = np.arange(0, 65536, 16).reshape(64, 64)
    out = decode_resized(_png16_grey(arr), size=64, channels=1)[..., 0]  # same size: no resampling
    assert np.array_equal(out, np.round(arr / 65535 * 255).astype(np.uint8))


def test_12_bit_png_with_sbit_is_scaled_by_its_significant_bits():
    arr = np.arange(4096).reshape(64, 64)
    out = decode_resized(_png16_grey(arr, sbit=12), size=64, channels=1)[..., 0]
    assert np.array_equal(out, np.round(arr / 4095 * 255).astype(np.uint8))


def test_sbit_png_whose_samples_are_scaled_up_as_the_png_spec_says_is_not_saturated():
    """A spec-following encoder (libpng, pypng) stores 12-bit samples left-shifted to 16 bits: samples above
    4095 contradict a raw 12-bit reading, so the image is read as full-range 16-bit."""
    v = np.arange(4096).reshape(64, 64)
    out = decode_resized(_png16_grey((v << 4) | (v >> 8), sbit=12), size=64, channels=1)[..., 0]
    assert np.abs(out.astype(int) - np.round(v / 4095 * 255)).max() <= 1


def test_16_bit_rgb_png_with_sbit_is_scaled_by_its_significant_bits():
    v = np.arange(4096).reshape(64, 64)
    arr = np.stack([v, v[::-1], 4095 - v], axis=-1)
    out = decode_resized(_png16_rgb(arr, sbit=12), size=64, channels=3)
    # Pillow keeps the high byte of 16-bit colour samples: 16 levels remain of 12 bits
    assert np.abs(out.astype(int) - arr / 4095 * 255).max() <= 17
    assert out.max() == 255
    full = decode_resized(_png16_rgb(arr << 4), size=64, channels=3)
    assert np.abs(full.astype(int) - arr / 4095 * 255).max() <= 2


# ----------------------------------------------------------------------------------------------- EXIF orientation
def _asymmetric(w: int, h: int) -> np.ndarray:
    """Smooth greyscale picture that no rotation or flip maps onto itself."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 40 + 120 * x / w + 60 * (y / h) ** 2 + 20 * np.sin(x / 37.0) * np.cos(y / 23.0)
    img[h // 8 : h // 3, w // 10 : w // 4] = 240  # a bright block near the top-left corner
    return np.clip(img, 0, 255).astype(np.uint8)


def _with_orientation(arr: np.ndarray, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(arr, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


_ROT90 = {3: 2, 6: -1, 8: 1}  # EXIF orientation -> np.rot90 turns that show the picture upright


@pytest.mark.parametrize("mode", ["center_crop", "squash", "pad"])
@pytest.mark.parametrize("orientation", [3, 6, 8])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_is_applied(fmt, orientation, mode):
    data = _with_orientation(_asymmetric(900, 500), fmt, orientation)
    stored = np.asarray(Image.open(io.BytesIO(data)).convert("L"))  # the decoded pixels, not yet rotated
    upright = np.ascontiguousarray(np.rot90(stored, _ROT90[orientation]))
    expected = decode_resized_naive(_encode(upright, "PNG"), size=128, channels=1, mode=mode)
    out = decode_resized(data, size=128, channels=1, mode=mode)
    assert psnr(out, expected) > 40, psnr(out, expected)
    colour = decode_resized(data, size=128, channels=3, mode=mode)
    assert psnr(colour[..., :1], expected) > 40


# ----------------------------------------------------------------------------------------------- draft scale
def _smooth(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.full((h, w), 128.0)
    for _ in range(6):
        px, py = rng.uniform(40, 120, 2)
        phase_x, phase_y = rng.uniform(0, 2 * np.pi, 2)
        img += 18 * np.sin(2 * np.pi * x / px + phase_x) * np.cos(2 * np.pi * y / py + phase_y)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(("w", "h"), [(1632, 1225), (1225, 1632), (1001, 773), (999, 1999)])
def test_reduced_scale_jpeg_decode_uses_the_exact_decoder_scale(w, h):
    """Sides that are not multiples of 8: the reduced decode rounds its size up, its scale is still 1/2**k."""
    data = _encode(_smooth(w, h, seed=w), "JPEG", quality=95)
    fast = decode_resized(data, size=256, channels=1)
    reference = decode_resized_naive(data, size=256, channels=1)  # full decode, LANCZOS of the same box
    assert psnr(fast, reference) >= 45, psnr(fast, reference)


# ----------------------------------------------------------------------------------------------- events
def test_events_count_what_was_decided_per_image():
    events: Counter[str] = Counter()
    decode_resized(_with_orientation(_asymmetric(90, 50), "JPEG", 6), size=16, channels=1, events=events)
    decode_resized(_with_orientation(_asymmetric(90, 50), "JPEG", 1), size=16, channels=1, events=events)
    decode_resized(_with_orientation(_asymmetric(90, 50), "PNG", 8), size=16, channels=1, events=events)
    decode_resized(_png16_grey(np.full((8, 8), 200)), size=8, channels=1, events=events)
    decode_resized(_png16_grey(np.full((8, 8), 200)), size=8, channels=3, events=events)
    decode_resized(_png16_grey(np.full((8, 8), 200), sbit=12), size=8, channels=1, events=events)
    decode_resized(_png16_rgb(np.full((8, 8, 3), 200), sbit=10), size=8, channels=3, events=events)
    decode_resized(_encode(_asymmetric(20, 20), "PNG"), size=8, channels=1, events=events)
    assert events == Counter({"exif_orientation_applied": 2, "scaled_16bit_full_range": 2, "scaled_16bit_by_sbit": 2})
    decode_resized(_encode(_asymmetric(20, 20), "PNG"), size=8, channels=1)  # events is optional


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_imageops_exif_transpose(orientation):
    arr = _asymmetric(300, 180)
    data = _with_orientation(np.stack([arr, arr[::-1], 255 - arr], axis=-1), "JPEG", orientation)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    expected = decode_resized_naive(_encode(upright, "PNG"), size=64, channels=3, mode="pad")
    out = decode_resized(data, size=64, channels=3, mode="pad")
    assert psnr(out, expected) > 40, psnr(out, expected)


def test_rotated_jpeg_gets_the_same_reduced_scale_decode_as_an_upright_one():
    """The draft request is made in the stored orientation: asking for the upright one would decode 1600x400
    at full scale."""
    stored = _encode(_asymmetric(1600, 400), "JPEG")
    rotated = _with_orientation(_asymmetric(1600, 400), "JPEG", 6)
    for data, upright_size in ((stored, (1600, 400)), (rotated, (400, 1600))):
        im = Image.open(io.BytesIO(data))
        *_, upright = imaging._load(im, size=100, channels=1, mode="center_crop")
        assert upright == upright_size and im.size == (400, 100)


@pytest.mark.parametrize("fmt", ["TIFF", "GIF", "WEBP", "BMP"])
def test_only_jpeg_and_png_are_read_by_their_content(fmt):
    data = _encode(_asymmetric(90, 50), fmt)
    with pytest.raises(ImageError, match="not a JPEG or PNG file by its content"):
        decode_resized(data, size=32, channels=1)


def test_damaged_exif_leaves_the_image_as_stored():
    data = _with_orientation(_asymmetric(90, 50), "JPEG", 6)
    at = data.index(b"Exif\0\0") + 6
    damaged = data[:at] + b"XX" + data[at + 2 :]  # not a TIFF header
    events: Counter[str] = Counter()
    out = decode_resized(damaged, size=16, channels=1, mode="pad", events=events)[..., 0]
    assert out[:3].max() == 0 and out[3:12, 0].min() > 0  # still landscape: black bars above and below
    assert not events


def test_16_bit_grey_and_alpha_png_with_sbit_is_scaled_by_its_significant_bits():
    """Pillow decodes 16-bit grey+alpha to RGBA (high bytes): every colour band must be stretched."""
    v = np.arange(4096).reshape(64, 64)
    rows = b"".join(b"\0" + np.stack([v[y], np.full(64, 65535)], -1).astype(">u2").tobytes() for y in range(64))
    header = (64).to_bytes(4, "big") * 2 + bytes([16, 4, 0, 0, 0])
    chunks = [(b"IHDR", header), (b"sBIT", bytes([12, 16])), (b"IDAT", zlib.compress(rows)), (b"IEND", b"")]
    data = b"\x89PNG\r\n\x1a\n" + b"".join(_png_chunk(kind, payload) for kind, payload in chunks)
    for channels in (1, 3):
        out = decode_resized(data, size=64, channels=channels)
        assert np.abs(out.astype(int) - (v / 4095 * 255)[..., None]).max() <= 17 and out.max() == 255


# ----------------------------------------------------------------------------------------------- damage
def _grey_at_bottom(out: np.ndarray) -> bool:
    return bool((out[-8:] == 128).all())


def test_a_truncated_jpeg_with_an_end_marker_is_refused(xray):
    """Pillow decodes it with the lower part flat grey 128; libjpeg-turbo's strict mode calls it damaged."""
    full = _encode(xray, "JPEG", quality=90)
    cut = full[: int(len(full) * 0.4)] + b"\xff\xd9"
    with pytest.raises(ImageError, match=r"damaged JPEG \(Corrupt JPEG data: premature end of data segment\)"):
        decode_resized(cut, size=64, channels=1)
    im = Image.open(io.BytesIO(cut))
    im.load()  # what Pillow alone makes of it, silently
    assert _grey_at_bottom(np.asarray(im))


def test_overwritten_jpeg_scan_data_is_refused(xray):
    """Here the damage surfaces only as "extraneous bytes before marker 0xd9": no warning may pass."""
    full = bytearray(_encode(xray, "JPEG", quality=90))
    at = len(full) // 2
    full[at : at + 200] = np.random.default_rng(3).integers(0, 255, 200, dtype=np.uint8).tobytes()
    with pytest.raises(ImageError, match=r"damaged JPEG \(Corrupt JPEG data: 7 extraneous bytes before marker 0xd9"):
        decode_resized(bytes(full), size=64, channels=1)


def test_bytes_after_the_end_marker_are_not_read(xray):
    full = _encode(xray, "JPEG", quality=90)
    assert np.array_equal(
        decode_resized(full + b"trailing", size=64, channels=1), decode_resized(full, size=64, channels=1)
    )


@pytest.mark.parametrize("where", ["idat", "cut", "no-iend"])
def test_damaged_png_is_refused(where):
    data = bytearray(_encode(fundus_image(np.random.default_rng(1), 300, 200, grade=2), "PNG"))
    idat = data.index(b"IDAT")
    if where == "idat":
        data[idat + 200] ^= 0x55
        match = r"PNG b'IDAT' chunk at byte .* fails its CRC-32"
    elif where == "cut":
        data = data[: idat + 500]
        match = r"PNG truncated inside its b'IDAT' chunk"
    else:
        data = data[:-12]
        match = r"PNG truncated at byte .* \(no IEND chunk\)"
    with pytest.raises(ImageError, match=match):
        decode_resized(bytes(data), size=32, channels=3)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_refused_and_opaque_alpha_dropped(mode):
    colour = fundus_image(np.random.default_rng(0), 64, 64, 2)
    im = Image.fromarray(colour).convert(mode)
    if mode == "P":
        buf = io.BytesIO()
        im.save(buf, format="PNG", transparency=int(np.asarray(im)[0, 0]))
        transparent = buf.getvalue()
    else:
        arr = np.asarray(im).copy()
        arr[..., -1] = 0  # fully transparent: the colour values are hidden, not meant
        transparent = _encode(arr, "PNG")
    with pytest.raises(ImageError, match=r"transparent pixels \(alpha down to 0\)"):
        decode_resized(transparent, size=32, channels=3)
    events: Counter[str] = Counter()
    if mode == "P":  # a transparent palette entry that no pixel uses
        unused = min(set(range(256)) - set(np.unique(np.asarray(im)).tolist()))
        opaque = decode_resized(
            _encode(colour, "PNG", mode=mode, transparency=unused), size=32, channels=3, events=events
        )
    else:
        opaque = decode_resized(_encode(colour, "PNG", mode=mode), size=32, channels=3, events=events)
    assert opaque.shape == (32, 32, 3) and events == Counter({"opaque_alpha_dropped": 1})


def test_transparent_colour_key_of_a_grey_png_is_refused():
    grey = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).save(buf, format="PNG", transparency=7)
    with pytest.raises(ImageError, match="transparent pixels"):
        decode_resized(buf.getvalue(), size=32, channels=1)


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(monkeypatch):
    import tracemalloc

    side = 8000  # 64 Mpx of flat grey: about 60 kB as a PNG, 64 MB decoded
    buf = io.BytesIO()
    Image.new("L", (side, side), 100).save(buf, format="PNG")
    tracemalloc.start()
    with pytest.raises(ImageError, match=r"8000 x 8000 pixels, more than the 40,000,000"):
        decode_resized(buf.getvalue(), size=32, channels=1)
    assert tracemalloc.get_traced_memory()[1] < 8 << 20
    tracemalloc.stop()


def test_a_decoder_warning_is_an_error(monkeypatch):
    import warnings

    data = _encode(fundus_image(np.random.default_rng(0), 64, 64, 2), "PNG")
    original = Image.Image.load

    def warn_then_load(self):
        warnings.warn("Truncated File Read", UserWarning, stacklevel=1)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", warn_then_load)
    with pytest.raises(ImageError, match="cannot decode image: Truncated File Read"):
        decode_resized(data, size=32, channels=3)
