"""Classical codecs in memory (resilient_tx.eval.classical): AVIF, WebP, JPEG."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.errors import InputError
from resilient_tx.eval import classical, metrics
from resilient_tx.images import load_rgb

needs_avif = pytest.mark.skipif(not classical.avif_available(), reason="Pillow lacks AVIF")


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_rgb(sample_path())[:176, :192]


@needs_avif
def test_avif_round_trip_is_an_avif_file_of_the_same_size(crop: np.ndarray) -> None:
    coded = classical.roundtrip(crop, "avif", 60)
    assert coded.codec == "AVIF" and coded.data[4:12] in (b"ftypavif", b"ftypavis")
    assert coded.decoded.shape == crop.shape and coded.decoded.dtype == np.uint8
    assert metrics.psnr(crop, coded.decoded) > 25.0


@needs_avif
def test_avif_rate_and_quality_rise_with_the_quality_setting(crop: np.ndarray) -> None:
    lo, hi = (classical.evaluate(crop, "AVIF", q) for q in (0, 60))
    assert lo.bpp < hi.bpp and lo.psnr < hi.psnr
    assert math.isnan(lo.ms_ssim) == (min(crop.shape[:2]) < metrics.MS_SSIM_MIN_SIDE)


@needs_avif
def test_avif_settings_reach_the_encoder(crop: np.ndarray) -> None:
    default = classical.encode(crop, "AVIF", 40)
    full_chroma = classical.encode(crop, "AVIF", 40, classical.AvifSettings(subsampling="4:4:4"))
    assert default != full_chroma
    assert classical.encode(crop, "AVIF", 40) == default  # deterministic


@pytest.mark.parametrize("codec,quality", [("WEBP", 0), ("WEBP", 50), ("JPEG", 1), ("JPEG", 50)])
def test_webp_and_jpeg_are_the_bpp_matching_encoder(crop: np.ndarray, codec: str,
                                                    quality: int) -> None:
    data = classical.encode(crop, codec, quality)
    assert data == metrics.pillow_encode(crop, codec, quality)
    assert classical.decode(data).shape == crop.shape


def test_missing_avif_plugin_is_a_clear_error(monkeypatch: pytest.MonkeyPatch,
                                              crop: np.ndarray) -> None:
    monkeypatch.setattr(classical.features, "check", lambda name: False)
    with pytest.raises(classical.CodecUnavailableError, match="AVIF"):
        classical.encode(crop, "AVIF", 50)


def test_bad_arguments_are_refused(crop: np.ndarray) -> None:
    with pytest.raises(InputError, match="unknown codec"):
        classical.encode(crop, "HEIC", 50)
    with pytest.raises(InputError, match="quality"):
        classical.encode(crop, "JPEG", 0)
    with pytest.raises(InputError, match="RGB"):
        classical.encode(crop[..., 0], "JPEG", 50)
    with pytest.raises(InputError):
        classical.decode(b"not an image")


def test_the_cache_saves_encodes(monkeypatch: pytest.MonkeyPatch, crop: np.ndarray) -> None:
    cache: dict[int, bytes] = {}
    first = classical.roundtrip(crop, "JPEG", 20, cache=cache)
    assert cache == {20: first.data}

    def refuse(*args: object) -> bytes:
        raise AssertionError("encoded again")

    monkeypatch.setattr(classical, "encode", refuse)
    assert classical.roundtrip(crop, "JPEG", 20, cache=cache).data == first.data


def test_sweep_point_means_over_images(crop: np.ndarray) -> None:
    images = {"a": crop, "b": np.ascontiguousarray(crop[::-1])}
    pt = classical.sweep_point(images, "jpeg", 30)
    each = [classical.evaluate(img, "JPEG", 30) for img in images.values()]
    assert pt.codec == "JPEG" and pt.images == 2
    assert pt.bpp == pytest.approx(np.mean([r.bpp for r in each]))
    assert pt.psnr == pytest.approx(np.mean([r.psnr for r in each]))
    assert pt.bpp_min <= pt.bpp <= pt.bpp_max


def test_default_qualities_are_valid_and_rising() -> None:
    for codec, qualities in classical.DEFAULT_QUALITIES.items():
        lo, hi = classical.QUALITY_RANGE[codec]
        assert list(qualities) == sorted(set(qualities))
        assert lo <= qualities[0] and qualities[-1] <= hi
