"""Image-quality metrics and classic-codec baselines (JPEG, WebP via Pillow).

Conventions, so every number in a report means the same thing:

* images are (H, W, 3) uint8 RGB arrays;
* PSNR uses peak 255 and the MSE over all pixels and channels; identical images give
  ``inf`` (the MSE is exactly zero, so any finite value would be made up);
* MS-SSIM is :func:`pytorch_msssim.ms_ssim` with ``data_range=255`` and its default five
  scales. That library refuses images whose short side is <= 160 px (four 2x downsamplings
  of an 11-px window), and a different number of scales would give a different metric, so
  for such images :func:`ms_ssim` returns ``nan`` rather than a silently incomparable value;
* bpp counts every byte handed to it, per pixel of the original image.
"""

from __future__ import annotations

import io
import math
from collections.abc import MutableMapping
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _pt_ms_ssim

from resilient_tx.errors import InputError

#: Smallest short side (px) for which :func:`ms_ssim` is defined; see the module docstring.
MS_SSIM_MIN_SIDE = 161
FORMATS = ("JPEG", "WEBP")
#: Lowest quality Pillow accepts per format (Pillow clamps JPEG 0 to 1 anyway).
MIN_QUALITY = {"JPEG": 1, "WEBP": 0}
MAX_QUALITY = 100

#: quality -> encoded bytes, for one image and one format. Lets a quality sweep and
#: :func:`match_bpp` share encodes instead of repeating them.
EncodeCache = MutableMapping[int, bytes]


@dataclass(frozen=True)
class BaselineResult:
    """One classic-codec operating point on one image."""

    fmt: str
    quality: int
    bytes: int
    bpp: float
    psnr: float
    ms_ssim: float
    reached: bool  # False: even the lowest quality is above the requested bpp


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    for x in (a, b):
        if x.ndim != 3 or x.shape[2] != 3 or x.dtype != np.uint8:
            raise InputError("expected (H, W, 3) uint8 RGB images")
    if a.shape != b.shape:
        raise InputError(f"image shapes differ: {a.shape} vs {b.shape}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB with peak 255 over all pixels and channels; ``inf`` if identical."""
    _check_pair(a, b)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(255.0**2 / mse)


def _to_nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None].to(torch.float64)


def ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """5-scale MS-SSIM (data range 255); ``nan`` if the short side is < MS_SSIM_MIN_SIDE."""
    _check_pair(a, b)
    if min(a.shape[:2]) < MS_SSIM_MIN_SIDE:
        return math.nan
    # float64: with float32 identical images can come out as 0.9999999, not 1.
    with torch.no_grad():
        return float(_pt_ms_ssim(_to_nchw(a), _to_nchw(b), data_range=255, size_average=True))


def bpp(num_bytes: int, width: int, height: int) -> float:
    """Bits per pixel of ``num_bytes`` bytes for a ``width`` x ``height`` image."""
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    return 8.0 * num_bytes / (width * height)


def _check_fmt(fmt: str) -> str:
    f = fmt.upper()
    if f not in FORMATS:
        raise InputError(f"unknown baseline format {fmt!r} (one of {', '.join(FORMATS)})")
    return f


def pillow_encode(img: np.ndarray, fmt: str, quality: int) -> bytes:
    """Encode with Pillow: JPEG 4:2:0 with optimised Huffman tables; lossy WebP.

    WebP uses ``method=6`` (libwebp's slowest, best-compressing mode) so the baseline is
    as strong as Pillow can make it.
    """
    f = _check_fmt(fmt)
    if not MIN_QUALITY[f] <= quality <= MAX_QUALITY:
        raise InputError(f"{f} quality must be in [{MIN_QUALITY[f]}, {MAX_QUALITY}]")
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(img))
    if f == "JPEG":
        pil.save(buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=True)
    else:
        pil.save(buf, "WEBP", quality=quality, lossless=False, method=6)
    return buf.getvalue()


def pillow_decode(data: bytes) -> np.ndarray:
    """Decode any Pillow-readable bytes to (H, W, 3) uint8 RGB."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def _encoded(img: np.ndarray, fmt: str, quality: int, cache: EncodeCache | None) -> bytes:
    if cache is None:
        return pillow_encode(img, fmt, quality)
    if quality not in cache:
        cache[quality] = pillow_encode(img, fmt, quality)
    return cache[quality]


def _bpp_at(img: np.ndarray, fmt: str, quality: int, cache: EncodeCache | None) -> float:
    return bpp(len(_encoded(img, fmt, quality, cache)), img.shape[1], img.shape[0])


def evaluate_quality(img: np.ndarray, fmt: str, quality: int,
                     cache: EncodeCache | None = None, reached: bool = True) -> BaselineResult:
    """Encode ``img`` at ``quality``, decode it, and measure size and distortion."""
    f = _check_fmt(fmt)
    data = _encoded(img, f, quality, cache)
    rec = pillow_decode(data)
    return BaselineResult(fmt=f, quality=quality, bytes=len(data),
                          bpp=bpp(len(data), img.shape[1], img.shape[0]),
                          psnr=psnr(img, rec), ms_ssim=ms_ssim(img, rec), reached=reached)


def _search_quality(img: np.ndarray, fmt: str, target_bpp: float, cache: EncodeCache) -> int:
    """Largest quality with bpp <= target, by bisection (bpp rises with quality).

    Caller guarantees the lowest quality is at or under the target.
    """
    lo, hi = MIN_QUALITY[fmt], MAX_QUALITY
    if _bpp_at(img, fmt, hi, cache) <= target_bpp:
        return hi
    while hi - lo > 1:  # invariant: bpp(lo) <= target < bpp(hi)
        mid = (lo + hi) // 2
        if _bpp_at(img, fmt, mid, cache) <= target_bpp:
            lo = mid
        else:
            hi = mid
    return lo


def _closest_under(img: np.ndarray, target_bpp: float, cache: EncodeCache) -> int:
    """Among qualities tried so far, the one with the largest bpp not above the target.

    Guards against bpp(quality) being not quite monotonic (it happens, by a few bytes).
    """
    w, h = img.shape[1], img.shape[0]
    under = [(bpp(len(d), w, h), q) for q, d in cache.items() if bpp(len(d), w, h) <= target_bpp]
    return max(under)[1]


def match_bpp(img: np.ndarray, fmt: str, target_bpp: float,
              cache: EncodeCache | None = None) -> BaselineResult:
    """The quality whose bpp is closest to ``target_bpp`` without exceeding it.

    If even the lowest quality is above the target, that lowest point is returned with
    ``reached=False``. ``cache`` (quality -> bytes for this image and format) is read and
    filled, so a sweep done beforehand saves encodes.
    """
    f = _check_fmt(fmt)
    cache = {} if cache is None else cache
    q_min = MIN_QUALITY[f]
    if _bpp_at(img, f, q_min, cache) > target_bpp:
        return evaluate_quality(img, f, q_min, cache, reached=False)
    _search_quality(img, f, target_bpp, cache)
    return evaluate_quality(img, f, _closest_under(img, target_bpp, cache), cache)
