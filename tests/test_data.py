"""Image loading (resilient_tx.images.load_rgb): every mode becomes honest 8-bit RGB."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resilient_tx.errors import InputError
from resilient_tx.images import load_rgb


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 64 * 80).reshape(64, 80).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I;16")  # what Pillow makes of a 16-bit PNG
    out = load_rgb(tmp_path / "g16.png")
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    want = np.round(ramp.astype(np.float64) / 257.0)
    assert np.abs(out[..., 0].astype(np.float64) - want).max() <= 0.5
    assert (out[..., 0] == out[..., 2]).all()
    assert len(np.unique(out)) == 256  # Pillow's convert("RGB") leaves 15 levels


def test_32_bit_and_float_images_with_8_bit_levels_are_taken(tmp_path: Path) -> None:
    levels = np.arange(48 * 40).reshape(48, 40) % 256
    Image.fromarray(levels.astype(np.int32), mode="I").save(tmp_path / "i.tiff")
    Image.fromarray(levels.astype(np.float32), mode="F").save(tmp_path / "f.tiff")
    for name in ("i.tiff", "f.tiff"):
        assert (load_rgb(tmp_path / name)[..., 1] == levels).all()


@pytest.mark.parametrize("values, mode", [
    (np.full((8, 8), 0.5, np.float32), "F"),  # a [0, 1] float image: range unknown
    (np.full((8, 8), np.nan, np.float32), "F"),
    (np.full((8, 8), 4000, np.int32), "I"),
    (np.full((8, 8), -3, np.int32), "I"),
])
def test_out_of_range_deep_images_are_refused(tmp_path: Path, values: np.ndarray,
                                              mode: str) -> None:
    Image.fromarray(values, mode=mode).save(tmp_path / "x.tiff")
    with pytest.raises(InputError, match="not 8-bit levels"):
        load_rgb(tmp_path / "x.tiff")


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGB", "1"])
def test_ordinary_modes_become_rgb(tmp_path: Path, mode: str) -> None:
    Image.new(mode, (21, 13)).save(tmp_path / "x.tiff")
    out = load_rgb(tmp_path / "x.tiff")
    assert out.shape == (13, 21, 3) and out.dtype == np.uint8


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_rgb(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="not a readable image"):
        load_rgb(tmp_path / "empty.png")
