"""Decode and resize one image to a square uint8 array, fast.

JPEGs are decoded at a reduced DCT scale (``Image.draft``) that still leaves every side at least as large as
needed, which cuts decoding time several-fold; other formats use ``reducing_gap`` to shrink by an integer
factor before the LANCZOS filter. Measured with ``python -m dpmedbench.bench.cli resize``; the README's Benchmarks
section has the figures.

Images are shown as a viewer shows them: the EXIF orientation is applied (``ImageOps.exif_transpose``
semantics). 16-bit images are scaled by their declared bit depth, never by their content: the significant
bits of a PNG ``sBIT`` chunk where there is one, else the full 16 bits. What was decided per image can be
counted in a :class:`collections.Counter` (``events``), under the keys of :data:`EVENTS`.

Only JPEG and PNG are read, recognised by their content (both datasets' formats; a file named ``.png`` that
holds a GIF is refused). A damaged file is refused, never decoded around: a JPEG's entropy-coded data is decoded
once more by libjpeg-turbo in strict mode (at 1/8 scale), so a premature end, a bad Huffman code or a corrupt
marker, which Pillow reports nowhere and fills with grey, is an :class:`ImageError`; every chunk of a PNG up to
``IEND`` must be whole and match its CRC-32. What no decoder can see is a JPEG whose scan data were changed into
other valid codes (JPEG has no checksum). Transparency is refused (which background a transparent pixel stands
for cannot be known, and neither dataset has any); an alpha channel that is opaque everywhere is dropped and
counted. An image of more than :data:`MAX_PIXELS` pixels is refused from its header, before it is decoded.
"""

from __future__ import annotations

import io
import math
import warnings
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Literal, NamedTuple

import numpy as np
import simplejpeg
from PIL import ExifTags, Image

from ..core.errors import ImageError

ResizeMode = Literal["center_crop", "squash", "pad"]
_SIMPLE_MODES = {"L", "RGB"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

#: Keys ``decode_resized`` counts in ``events``, at most once each per image.
EVENTS = (
    "exif_orientation_applied",
    "scaled_16bit_by_sbit",
    "scaled_16bit_full_range",
    "opaque_alpha_dropped",
)

#: The formats read, recognised by content: the two datasets' own.
FORMATS = ("JPEG", "PNG")

#: The most pixels an image may have (40 million, about three times the largest fundus photograph of APTOS 2019
#: and five times the largest chest X-ray); a larger one is refused from its header, so decoding one image never
#: needs more than about 40 M x 4 bytes per channel.
MAX_PIXELS = 40_000_000

#: EXIF orientation -> the transposition that shows the image upright (as ``ImageOps.exif_transpose``).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_AXES = {5, 6, 7, 8}


class _Depth(NamedTuple):
    """Declared depth of a 16-bit image: significant bits per colour channel, and whether ``sBIT`` said so."""

    bits: tuple[int, ...]
    from_sbit: bool


_FULL_16 = _Depth((16,), from_sbit=False)


def _count(events: Counter[str] | None, key: str) -> None:
    if events is not None:
        events[key] += 1


def _geometry(w: int, h: int, size: int, mode: ResizeMode) -> tuple[tuple[float, float, float, float], tuple[int, int]]:
    """Source box to read and the output size of the resized box (before any padding)."""
    if mode == "center_crop":
        s = min(w, h)
        return ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2), (size, size)
    if mode == "squash":
        return (0.0, 0.0, float(w), float(h)), (size, size)
    scale = size / max(w, h)
    return (0.0, 0.0, float(w), float(h)), (max(1, round(w * scale)), max(1, round(h * scale)))


def _pad_square(arr: np.ndarray, size: int) -> np.ndarray:
    """Centre ``arr`` on a black ``size`` x ``size`` canvas (a no-op when it already fills it)."""
    if arr.shape[:2] == (size, size):
        return arr
    padded = np.zeros((size, size, arr.shape[2]), dtype=np.uint8)
    top, left = (size - arr.shape[0]) // 2, (size - arr.shape[1]) // 2
    padded[top : top + arr.shape[0], left : left + arr.shape[1]] = arr
    return padded


# ----------------------------------------------------------------------------------------------- orientation
def _orientation(im: Image.Image) -> int:
    """EXIF orientation (1 to 8) read as ``ImageOps.exif_transpose`` reads it (EXIF, else XMP); 1 when the
    tag is missing, invalid or unreadable.

    >>> _orientation(Image.new("L", (4, 2)))
    1
    """
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the image as stored, as a viewer does
        return 1
    return int(value) if isinstance(value, int) and value in _UPRIGHT else 1


def _upright(im: Image.Image, orientation: int, events: Counter[str] | None) -> Image.Image:
    """``im`` transposed as its EXIF ``orientation`` asks (counted in ``events``)."""
    if orientation not in _UPRIGHT:
        return im
    _count(events, "exif_orientation_applied")
    return im.transpose(_UPRIGHT[orientation])


# ----------------------------------------------------------------------------------------------- bit depth
def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(type, payload)`` of the chunks of PNG bytes before the image data (where IHDR and sBIT must be)."""
    pos = len(_PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind in (b"IDAT", b"IEND"):
            return
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


# ----------------------------------------------------------------------------------------------- integrity
def _check_png(data: bytes) -> None:
    """Every chunk whole and matching its CRC-32, up to ``IEND``; else :class:`ImageError`. (Pillow checks the
    CRC of the chunks before the image data only, so a changed byte of the image data decodes as other pixels.)"""
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 12 > len(data):
            raise ImageError(f"cannot decode image: PNG truncated at byte {len(data):,} (no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ImageError(f"cannot decode image: PNG truncated inside its {kind!r} chunk at byte {pos:,}")
        if zlib.crc32(data[pos + 4 : end]) != int.from_bytes(data[end : end + 4], "big"):
            raise ImageError(f"cannot decode image: PNG {kind!r} chunk at byte {pos:,} fails its CRC-32 (damaged)")
        if kind == b"IEND":
            return
        pos = end + 4


def _check_jpeg(data: bytes) -> None:
    """Decode the JPEG's entropy-coded data in strict mode: any libjpeg-turbo warning (premature end, corrupt
    data, extraneous bytes before a marker), which Pillow ignores, is an :class:`ImageError`. None is harmless
    enough to let pass: scan data overwritten in the middle of a file can surface as no more than "extraneous
    bytes before marker 0xd9"."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", min_factor=8, min_height=1, min_width=1, strict=True)
    except ValueError as exc:
        raise ImageError(f"cannot decode image: damaged JPEG ({exc})") from None


def _transparent(im: Image.Image) -> np.ndarray | None:
    """Alpha of ``im`` (0 transparent, 255 opaque) from its alpha band, its palette or its ``tRNS`` colour key;
    None for an image without transparency."""
    if "A" in im.getbands():
        return np.asarray(im.getchannel("A"))
    if "transparency" not in im.info:
        return None
    if im.mode == "P":
        return np.asarray(im.convert("RGBA").getchannel("A"))
    arr = np.asarray(im)
    key = np.asarray(im.info["transparency"])
    hit = (arr == key).all(axis=-1) if arr.ndim == 3 else arr == key
    return np.where(hit, 0, 255).astype(np.uint8)


def _drop_opaque_alpha(im: Image.Image, events: Counter[str] | None) -> Image.Image:
    """``im`` without its alpha channel or transparent colour when they leave every pixel opaque (counted); a
    transparent pixel is an :class:`ImageError`."""
    alpha = _transparent(im)
    if alpha is None:
        return im
    if (low := int(alpha.min(initial=255))) < 255:
        raise ImageError(
            f"cannot decode image: it has transparent pixels (alpha down to {low}); which background they stand "
            f"for cannot be known and no image of either dataset has any: flatten it onto the background you mean"
        )
    _count(events, "opaque_alpha_dropped")
    im.info.pop("transparency", None)
    if im.mode == "P":
        return im.convert("RGB")
    if "A" in im.getbands():
        return im.convert("L" if im.mode in ("LA", "La") else "RGB")
    return im


def _png_depth(data: bytes) -> _Depth | None:
    """Declared depth of a 16-bit PNG: its ``sBIT`` significant bits where present and valid, else 16 bits;
    None for anything but a 16-bit PNG (Pillow does not read ``sBIT``)."""
    if not data.startswith(_PNG_SIGNATURE):
        return None
    chunks = dict(_png_chunks(data))
    ihdr = chunks.get(b"IHDR", b"")
    if len(ihdr) != 13 or ihdr[8] != 16:
        return None
    colours = 3 if ihdr[9] & 2 else 1  # colour types 2 and 6 are RGB(A), 0 and 4 grey (with alpha)
    sbit = chunks.get(b"sBIT", b"")
    if len(sbit) >= colours and all(1 <= bits <= 16 for bits in sbit[:colours]):
        return _Depth(tuple(sbit[:colours]), from_sbit=True)
    return _Depth((16,) * colours, from_sbit=False)


def _grey16_to_l(im: Image.Image, depth: _Depth) -> tuple[Image.Image, _Depth]:
    """8-bit version of a 16-bit greyscale image: ``2**bits - 1`` maps to 255.

    Samples above ``2**bits - 1`` contradict a raw ``bits``-bit reading: such a file follows the PNG
    specification, which has encoders scale samples up to 16 bits, and is read as full-range 16-bit.
    """
    arr = np.asarray(im)
    peak = 2 ** depth.bits[0] - 1
    if depth.from_sbit and arr.max(initial=0) > peak:
        depth, peak = _FULL_16, 65535
    scaled = np.clip(arr * np.float32(255 / peak) + np.float32(0.5), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled), depth


def _stretch_high_bytes(im: Image.Image, depth: _Depth) -> tuple[Image.Image, _Depth]:
    """Stretch the colour channels of a 16-bit colour PNG whose ``sBIT`` declares fewer bits. Pillow decodes
    such a PNG to the high byte of each sample, so the low bits are lost: 12 bits keep 16 levels, 8 or fewer
    none. High bytes above those of ``2**bits - 1`` mean scaled-up samples, read as full range."""
    colour = [band for band in im.getbands() if band != "A"]  # 16-bit grey with alpha decodes to RGBA
    bits = depth.bits * len(colour) if len(depth.bits) == 1 else depth.bits
    tops = [max(1, (2**b - 1) >> 8) for b in bits[: len(colour)]]
    extrema = im.getextrema()
    if any(extrema[band][1] > top for band, top in enumerate(tops)):  # type: ignore[index]
        return im, _FULL_16
    lut = [min(255, round(v * 255 / top)) for top in tops for v in range(256)]
    lut += list(range(256)) * (len(im.getbands()) - len(tops))  # alpha unchanged
    return im.point(lut), depth


def _to_8_bits(im: Image.Image, data: bytes, events: Counter[str] | None) -> Image.Image:
    """A 16-bit image scaled to 8 bits by its declared depth (counted in ``events``); others unchanged."""
    depth = _png_depth(data)  # None for anything but a 16-bit PNG
    if im.mode in _SIXTEEN_BIT_MODES:
        im, depth = _grey16_to_l(im, depth or _FULL_16)
    elif depth is not None and min(depth.bits) < 16:
        im, depth = _stretch_high_bytes(im, depth)
    if depth is not None:
        _count(events, "scaled_16bit_by_sbit" if depth.from_sbit else "scaled_16bit_full_range")
    return im


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    if im.mode == target:
        return im
    if im.mode in _SIXTEEN_BIT_MODES:
        im = _grey16_to_l(im, _FULL_16)[0]
    return im.convert(target)


# ----------------------------------------------------------------------------------------------- decoding
def _draft(
    im: Image.Image, upright: tuple[int, int], swapped: bool, *, size: int, channels: int, mode: ResizeMode
) -> None:
    """Ask the JPEG decoder for the coarsest DCT scale that still leaves the box to resize as large as its
    output; ``upright`` is the size after the EXIF orientation, ``swapped`` whether that swaps the axes."""
    w, h = upright
    box, out = _geometry(w, h, size, mode)
    need = (math.ceil(w * out[0] / (box[2] - box[0])), math.ceil(h * out[1] / (box[3] - box[1])))
    im.draft("L" if channels == 1 else "RGB", (need[1], need[0]) if swapped else need)


def _decoded_scale(original: tuple[int, int], decoded: tuple[int, int]) -> tuple[float, float]:
    """Scale per axis of a reduced-scale decode: exactly ``1 / 2**k`` when ``decoded`` is ``original`` divided
    by ``2**k`` and rounded up, as libjpeg's scaled decode gives; else the ratio of the sizes.

    >>> _decoded_scale((1632, 1225), (408, 307))
    (0.25, 0.25)
    """
    for k in (1, 2, 3):
        if (-(-original[0] // 2**k), -(-original[1] // 2**k)) == decoded:
            return 1 / 2**k, 1 / 2**k
    return decoded[0] / original[0], decoded[1] / original[1]


def _load(im: Image.Image, *, size: int, channels: int, mode: ResizeMode) -> tuple[int, int, tuple[int, int] | None]:
    """Load ``im``, a JPEG at a reduced DCT scale. Returns the EXIF orientation stated before loading, the one
    still to apply after it, and for a JPEG its upright size at full scale (the draft request and the crop box
    are upright)."""
    stated = 1 if im.format == "PNG" else _orientation(im)  # a PNG's eXIf chunk may follow the image data
    upright = None
    if im.format == "JPEG":
        swapped = stated in _SWAPS_AXES
        upright = (im.size[1], im.size[0]) if swapped else im.size
        _draft(im, upright, swapped, size=size, channels=channels, mode=mode)
    im.load()
    return stated, _orientation(im), upright


def decode_resized(
    data: bytes,
    *,
    size: int,
    channels: int,
    mode: ResizeMode = "center_crop",
    events: Counter[str] | None = None,
) -> np.ndarray:
    """``(size, size, channels)`` uint8 array of an encoded image (JPEG, PNG, ...), upright as its EXIF
    orientation says.

    ``events``, when given, counts per image what was decided, under the keys of :data:`EVENTS`: a
    non-identity EXIF orientation applied, a 16-bit image scaled by its ``sBIT`` bits or by the full 16 bits.
    Raises :class:`ImageError` for bytes that are not a complete, decodable image.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a decoder's warning is damage, never decoded around
            warnings.simplefilter("ignore", DeprecationWarning)
            im = Image.open(io.BytesIO(data), formats=FORMATS)
            if im.width * im.height > MAX_PIXELS:
                raise ImageError(
                    f"cannot decode image: {im.width} x {im.height} pixels, more than the {MAX_PIXELS:,} an image "
                    f"may have (no image of either dataset comes near it)"
                )
            if im.format == "PNG":
                _check_png(data)
            else:
                _check_jpeg(data)
            _, orientation, upright = _load(im, size=size, channels=channels, mode=mode)
            im = _upright(_to_8_bits(_drop_opaque_alpha(im, events), data, events), orientation, events)
            return resize_loaded(im, size=size, channels=channels, mode=mode, original_size=upright)
    except Image.UnidentifiedImageError:
        raise ImageError(
            "cannot decode image: not a JPEG or PNG file by its content; both datasets accept these two formats "
            "only: convert it"
        ) from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError, Warning) as exc:
        raise ImageError(f"cannot decode image: {exc}") from exc


def resize_loaded(
    im: Image.Image,
    *,
    size: int,
    channels: int,
    mode: ResizeMode = "center_crop",
    original_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Resize a decoded image; ``original_size`` is its size before a reduced-scale (draft) decode, so the
    crop box is the same whatever scale the decoder chose. A 16-bit image is read as full-range 16-bit."""
    w, h = original_size or im.size
    box, out = _geometry(w, h, size, mode)
    if im.size != (w, h):
        fx, fy = _decoded_scale((w, h), im.size)
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    if im.mode not in _SIMPLE_MODES or (channels == 1 and im.mode == "RGB"):
        im = _to_mode(im, channels)
    im = im.resize(out, Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    im = _to_mode(im, channels)  # L -> RGB after resizing: a third of the work
    arr = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)
    return _pad_square(arr, size)


def decode_resized_naive(data: bytes, *, size: int, channels: int, mode: ResizeMode = "center_crop") -> np.ndarray:
    """The straightforward path, for benchmarks: full decode, convert, EXIF orientation, LANCZOS resize of the
    same box."""
    opened = Image.open(io.BytesIO(data))
    im = _upright(opened.convert("L" if channels == 1 else "RGB"), _orientation(opened), None)
    box, out = _geometry(*im.size, size, mode)
    im = im.resize(out, Image.Resampling.LANCZOS, box=box)
    arr = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)
    return _pad_square(arr, size)
