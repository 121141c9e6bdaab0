"""Decode and resize one image to a square uint8 array, fast.

JPEGs are decoded at a reduced DCT scale (``Image.draft``) that still leaves every side at least as large as
needed, which cuts decoding time several-fold; other formats use ``reducing_gap`` to shrink by an integer
factor before the LANCZOS filter. DESIGN.md §4 has the measurements (``python -m dpmedbench.bench``).
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
from PIL import Image

from .errors import ImageError

ResizeMode = Literal["center_crop", "squash", "pad"]
_SIMPLE_MODES = {"L", "RGB"}


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


def _to_mode(im: Image.Image, channels: int) -> Image.Image:
    target = "L" if channels == 1 else "RGB"
    if im.mode == target:
        return im
    if im.mode in {"I;16", "I;16B", "I;16L", "I"}:
        arr = np.asarray(im, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return im.convert(target)


def decode_resized(data: bytes, *, size: int, channels: int, mode: ResizeMode = "center_crop") -> np.ndarray:
    """``(size, size, channels)`` uint8 array of an encoded image (JPEG, PNG, ...).

    Raises :class:`ImageError` for bytes that are not a complete, decodable image.
    """
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        box, out = _geometry(w, h, size, mode)
        if im.format == "JPEG":
            scale_x, scale_y = out[0] / (box[2] - box[0]), out[1] / (box[3] - box[1])
            im.draft("L" if channels == 1 else "RGB", (math.ceil(w * scale_x), math.ceil(h * scale_y)))
        im.load()
        return resize_loaded(im, size=size, channels=channels, mode=mode, original_size=(w, h))
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
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
    crop box is the same whatever scale the decoder chose."""
    w, h = original_size or im.size
    box, out = _geometry(w, h, size, mode)
    if im.size != (w, h):
        fx, fy = im.size[0] / w, im.size[1] / h
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
    if im.mode not in _SIMPLE_MODES or (channels == 1 and im.mode == "RGB"):
        im = _to_mode(im, channels)
    im = im.resize(out, Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    im = _to_mode(im, channels)  # L -> RGB after resizing: a third of the work
    arr = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)
    return _pad_square(arr, size)


def decode_resized_naive(data: bytes, *, size: int, channels: int, mode: ResizeMode = "center_crop") -> np.ndarray:
    """The straightforward path, for benchmarks: full decode, convert, LANCZOS resize of the same box."""
    im = Image.open(io.BytesIO(data)).convert("L" if channels == 1 else "RGB")
    box, out = _geometry(*im.size, size, mode)
    im = im.resize(out, Image.Resampling.LANCZOS, box=box)
    arr = np.asarray(im, dtype=np.uint8).reshape(im.size[1], im.size[0], channels)
    return _pad_square(arr, size)
