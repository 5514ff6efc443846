"""Image I/O: every mode becomes honest 8-bit RGB, and bad files are one-line errors."""

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


def _rgb(h: int = 24, w: int = 32) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".bmp", ".tiff", ".avif"])
def test_common_formats_load_as_rgb(tmp_path: Path, suffix: str) -> None:
    from PIL import features

    if suffix == ".avif" and not features.check("avif"):
        pytest.skip("this Pillow has no AVIF plugin")
    path = tmp_path / f"x{suffix}"
    Image.fromarray(_rgb()).save(path)
    out = load_rgb(path)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8


@pytest.mark.parametrize("mode", ["L", "P", "1", "LA", "RGBA"])
def test_every_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "m.png"
    Image.fromarray(_rgb()).convert(mode).save(path)
    assert load_rgb(path).shape == (24, 32, 3)


@pytest.mark.parametrize("hw", [(1, 1), (1, 300), (300, 1)])
def test_tiny_and_thin_images(tmp_path: Path, hw: tuple[int, int]) -> None:
    path = tmp_path / "t.png"
    Image.fromarray(_rgb(*hw)).save(path)
    assert load_rgb(path).shape == (*hw, 3)


def test_transparency_and_animation_are_warned_about(tmp_path: Path, caplog) -> None:
    rgba = tmp_path / "a.png"
    Image.fromarray(_rgb()).convert("RGBA").save(rgba)
    frames = [Image.fromarray(_rgb()), Image.fromarray(255 - _rgb())]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    with caplog.at_level("WARNING", logger="resilient_tx.images"):
        load_rgb(rgba)
        first = load_rgb(gif)
    assert "transparency dropped" in caplog.text and "first frame" in caplog.text
    with Image.open(gif) as im:
        assert np.array_equal(first, np.asarray(im.convert("RGB")))  # frame 0


def test_folders_and_oversized_images_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is a folder"):
        load_rgb(tmp_path)
    path = tmp_path / "big.png"
    Image.new("RGB", (400, 300)).save(path)
    with pytest.raises(InputError, match="over the cap") as info:
        load_rgb(path, max_pixels=100_000)
    assert "\n" not in str(info.value)
    assert load_rgb(path, max_pixels=120_000).shape == (300, 400, 3)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (5000, 5000)).save(bomb)  # 25 MP on a few kB of disk
    with pytest.raises(InputError, match="max-pixels"):
        load_rgb(bomb)
