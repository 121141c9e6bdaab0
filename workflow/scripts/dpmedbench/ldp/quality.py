"""Image similarity: PSNR and SSIM (Wang et al., 2004) on [0, 1] images of shape (H, W, C), and which images of a
split are measured (:func:`quality_indices`)."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def psnr(clean: np.ndarray, noisy: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    mse = float(np.mean((clean.astype(np.float64) - noisy.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(data_range**2 / mse)


def ssim(clean: np.ndarray, noisy: np.ndarray, data_range: float = 1.0, sigma: float = 1.5) -> float:
    """Mean structural similarity over pixels and channels, Gaussian window (sigma 1.5, truncated at 3.5
    sigma, i.e. 11x11) and the constants K1 = 0.01, K2 = 0.03, as in Wang et al. 2004 and scikit-image's
    ``structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)``."""
    x = clean.astype(np.float64)
    y = noisy.astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for ch in range(x.shape[-1]):
        a, b = x[..., ch], y[..., ch]

        def blur(img: np.ndarray) -> np.ndarray:
            return gaussian_filter(img, sigma=sigma, truncate=3.5, mode="reflect")

        mu_a, mu_b = blur(a), blur(b)
        var_a = blur(a * a) - mu_a**2
        var_b = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        pad = int(3.5 * sigma + 0.5)  # skimage crops the border where the window leaves the image
        values.append(s[pad:-pad, pad:-pad].mean() if min(a.shape) > 2 * pad else s.mean())
    return float(np.mean(values))


def quality_indices(n: int, sample: int) -> np.ndarray:
    """``sample`` evenly spaced indices of ``range(n)`` (all of them when ``sample`` is 0 or >= n)."""
    if sample <= 0 or sample >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, sample).round().astype(int))
