"""Classical image codecs in memory -- AVIF, WebP and JPEG through Pillow -- and their
quality sweeps, the anchors the learned codec's rate-distortion curves are compared with.

Settings, fixed so every reported number means the same thing:

* AVIF: Pillow's AVIF plugin (libavif; the encoder is whichever libavif picks, libaom in
  Pillow's wheels), ``speed=6`` (Pillow's default, the middle of libavif's 0 = slowest
  .. 10 = fastest), 4:2:0 chroma subsampling, full range, one encoder thread (so the
  bytes do not depend on the machine). Quality 0..100 maps onto the AV1 quantizer.
* WebP and JPEG: exactly :func:`resilient_tx.eval.metrics.pillow_encode` (lossy WebP
  ``method=6``; JPEG 4:2:0 with optimised Huffman tables), so a sweep and the per-image
  bpp matching in :mod:`~resilient_tx.eval.metrics` can share encodes.

Decoding is Pillow's (dav1d for AVIF in Pillow's wheels), to 8-bit RGB; distortion and
bpp come from :mod:`~resilient_tx.eval.metrics`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, features

from resilient_tx.errors import InputError
from resilient_tx.eval import metrics

CODECS = ("AVIF", "WEBP", "JPEG")
QUALITY_RANGE = {"AVIF": (0, 100), "WEBP": (metrics.MIN_QUALITY["WEBP"], metrics.MAX_QUALITY),
                 "JPEG": (metrics.MIN_QUALITY["JPEG"], metrics.MAX_QUALITY)}
#: Sweep qualities: each codec's lowest quality up to about 1 bpp on Kodak-like photos,
#: dense at the low end where the learned codec's rate points are. AVIF 2 is left out (it
#: codes byte for byte as AVIF 0 on Kodak), and so is JPEG 2 (nearly JPEG 1: libjpeg's
#: quantiser tables clamp at 255 at both).
DEFAULT_QUALITIES: dict[str, tuple[int, ...]] = {
    "AVIF": (0, 4, 6, 8, 10, 13, 16, 20, 25, 30, 35, 40, 50, 60, 65),
    "WEBP": (0, 1, 2, 3, 5, 8, 12, 20, 30, 45, 60, 75),
    "JPEG": (1, 3, 4, 5, 7, 10, 15, 20, 30, 40, 50, 60),
}
AVIF_HELP = ("Pillow has no AVIF support here (PIL.features.check('avif') is False): install "
             "a Pillow wheel built with libavif (PyPI wheels bundle it since Pillow 11.3), "
             "or leave AVIF out")


class CodecUnavailableError(InputError):
    """The Pillow build lacks a codec (AVIF needs Pillow built with libavif)."""


@dataclass(frozen=True)
class AvifSettings:
    """libavif encoder settings; the defaults are the ones every report uses."""

    speed: int = 6
    subsampling: str = "4:2:0"
    max_threads: int = 1


DEFAULT_AVIF = AvifSettings()


@dataclass(frozen=True)
class Coded:
    """One image through one codec at one quality: the bytes and what they decode to."""

    codec: str
    quality: int
    data: bytes = field(repr=False)
    decoded: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class SweepPoint:
    """Means over a set of images of one codec at one quality."""

    codec: str
    quality: int
    images: int
    bpp: float
    psnr: float
    ms_ssim: float  # nan if any image is too small for MS-SSIM
    bpp_min: float
    bpp_max: float


def avif_available() -> bool:
    return bool(features.check("avif"))


def check_codec(codec: str) -> str:
    """The canonical upper-case codec name; raises if unknown or unavailable."""
    c = codec.upper()
    if c not in CODECS:
        raise InputError(f"unknown codec {codec!r} (one of {', '.join(CODECS)})")
    if c == "AVIF" and not avif_available():
        raise CodecUnavailableError(AVIF_HELP)
    return c


def _check_quality(codec: str, quality: int) -> None:
    lo, hi = QUALITY_RANGE[codec]
    if not lo <= quality <= hi:
        raise InputError(f"{codec} quality must be in [{lo}, {hi}], got {quality}")


def _check_image(img: np.ndarray) -> None:
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise InputError("expected an (H, W, 3) uint8 RGB image")


def _encode_avif(img: np.ndarray, quality: int, avif: AvifSettings) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img)).save(
        buf, "AVIF", quality=quality, speed=avif.speed, subsampling=avif.subsampling,
        max_threads=avif.max_threads, range="full")
    return buf.getvalue()


def encode(img: np.ndarray, codec: str, quality: int,
           avif: AvifSettings = DEFAULT_AVIF) -> bytes:
    """Encode an (H, W, 3) uint8 RGB image; ``avif`` applies to AVIF only."""
    c = check_codec(codec)
    _check_image(img)
    _check_quality(c, quality)
    if c == "AVIF":
        return _encode_avif(img, quality, avif)
    return metrics.pillow_encode(img, c, quality)


def decode(data: bytes) -> np.ndarray:
    """Decode AVIF, WebP or JPEG bytes to (H, W, 3) uint8 RGB."""
    try:
        return metrics.pillow_decode(data)
    except (OSError, ValueError) as exc:
        raise InputError(f"undecodable image bytes ({exc.__class__.__name__})") from exc


def roundtrip(img: np.ndarray, codec: str, quality: int,
              avif: AvifSettings = DEFAULT_AVIF,
              cache: metrics.EncodeCache | None = None) -> Coded:
    """Encode then decode. ``cache`` (quality -> bytes, for this image, codec and
    settings) is read and filled, so repeated sweeps and bpp matching share encodes."""
    c = check_codec(codec)
    if cache is not None and quality in cache:
        data = cache[quality]
    else:
        data = encode(img, c, quality, avif)
        if cache is not None:
            cache[quality] = data
    return Coded(codec=c, quality=quality, data=data, decoded=decode(data))


def evaluate(img: np.ndarray, codec: str, quality: int,
             avif: AvifSettings = DEFAULT_AVIF,
             cache: metrics.EncodeCache | None = None) -> metrics.BaselineResult:
    """Size and distortion of ``img`` through ``codec`` at ``quality``."""
    coded = roundtrip(img, codec, quality, avif, cache)
    h, w = img.shape[:2]
    return metrics.BaselineResult(
        fmt=coded.codec, quality=quality, bytes=len(coded.data),
        bpp=metrics.bpp(len(coded.data), w, h), psnr=metrics.psnr(img, coded.decoded),
        ms_ssim=metrics.ms_ssim(img, coded.decoded), reached=True)


def _mean(xs: Sequence[float]) -> float:
    # nan propagates on purpose: a mean over fewer images would not be comparable.
    return float(np.mean(xs)) if xs else math.nan


def sweep_point(images: Mapping[str, np.ndarray], codec: str, quality: int,
                avif: AvifSettings = DEFAULT_AVIF,
                caches: Mapping[str, metrics.EncodeCache] | None = None) -> SweepPoint:
    """Mean bpp, PSNR and MS-SSIM of ``codec`` at ``quality`` over ``images``.

    Means are per image (every image weighs the same), like the learned codec's. ``caches``
    maps image name -> that image's cache for this codec.
    """
    c = check_codec(codec)
    if not images:
        raise InputError("no images to sweep")
    res = [evaluate(img, c, quality, avif, None if caches is None else caches[name])
           for name, img in images.items()]
    bpps = [r.bpp for r in res]
    return SweepPoint(codec=c, quality=quality, images=len(res), bpp=_mean(bpps),
                      psnr=_mean([r.psnr for r in res]), ms_ssim=_mean([r.ms_ssim for r in res]),
                      bpp_min=min(bpps), bpp_max=max(bpps))
