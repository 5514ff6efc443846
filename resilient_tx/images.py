"""Image loading and training crops. I/O lives here so the rest stays pure."""

from __future__ import annotations

import io
import logging
import os
import secrets
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from resilient_tx.config import DEFAULT_MAX_PIXELS
from resilient_tx.errors import InputError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".avif"}
log = logging.getLogger(__name__)


def load_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read any Pillow-readable image file as (H, W, 3) uint8 RGB.

    Grayscale and palette images are expanded to three channels; alpha is composited onto
    white (with a warning), so a transparent PNG looks as it does in a viewer rather than
    showing hidden colours. 16-bit grayscale is scaled to 8 bits (Pillow's own conversion
    clips it at 255, which turns most of a 16-bit picture white). 32-bit integer and float
    images are taken only if every value is already an 8-bit level; their range is
    otherwise unknown. Of an animated file, the first frame is used (with a warning). An
    image over ``max_pixels`` is refused before its pixels are decoded.
    """
    p = Path(path)
    if p.is_dir():
        raise InputError(f"{p} is a folder, not an image file")
    if not p.is_file():
        raise InputError(f"no such file: {p}")
    return _decode(p, str(p), max_pixels)


def load_rgb_bytes(data: bytes, name: str = "<stdin>",
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`load_rgb` for an encoded image held in memory (e.g. read from stdin)."""
    return _decode(io.BytesIO(data), name, max_pixels)


def check_pixels(width: int, height: int, max_pixels: int, name: str) -> None:
    """:class:`InputError` if a ``width`` x ``height`` image is over the pixel cap."""
    if width * height > max_pixels:
        raise InputError(f"{name}: {width}x{height} is {width * height / 1e6:.1f} megapixels, "
                         f"over the cap of {max_pixels / 1e6:.1f}; --max-pixels N raises it")


def _decode(source: Path | BinaryIO, name: str, max_pixels: int) -> np.ndarray:
    # Pillow's own bomb guard (a warning above MAX_IMAGE_PIXELS, an error above twice that)
    # is aligned with our cap for this call; the cap itself is checked from the header,
    # before any pixel is decoded, and gives the one-line error.
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max(max_pixels, 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                check_pixels(im.width, im.height, max_pixels, name)
                if getattr(im, "n_frames", 1) > 1:
                    log.warning("%s: animated image, using its first frame", name)
                im.load()
                return _to_rgb8(im, name)
    except Image.DecompressionBombError as exc:
        raise InputError(f"{name}: {exc}; --max-pixels N raises the cap") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: not a readable image ({exc.__class__.__name__})") from exc
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _to_rgb8(im: Image.Image, name: str) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        return _gray_to_rgb8(name, im.mode, np.asarray(im))
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        log.warning("%s: transparency dropped (composited onto white)", name)
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(bg, rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    arr = np.array(rgb, dtype=np.uint8)  # writable copy: torch.from_numpy needs one
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"{name}: empty image")
    return arr


def _gray_to_rgb8(p: str, mode: str, a: np.ndarray) -> np.ndarray:
    if a.size == 0:
        raise InputError(f"{p}: empty image")
    if mode.startswith("I;16"):
        gray = (a.astype(np.uint32) * 255 + 32767) // 65535  # 0..65535 -> 0..255, rounded
    else:
        ok = bool(np.isfinite(a).all() and a.min() >= 0 and a.max() <= 255
                  and (a == np.round(a)).all())
        if not ok:
            kind = "floating-point" if mode == "F" else "32-bit integer"
            raise InputError(f"{p}: {kind} image whose values are not 8-bit levels 0..255; "
                             "convert it to an 8- or 16-bit image first")
        gray = a
    return np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)


#: zlib level for PNGs written on the receiver's latency path: level 1 writes several times
#: faster than Pillow's default 6, for a slightly larger file.
FAST_PNG_LEVEL = 1


def save_rgb(arr: np.ndarray, path: str | Path, compress_level: int | None = None) -> None:
    """Write uint8 RGB in the format of ``path``'s suffix; ``compress_level`` (0-9)
    applies to PNG, None = Pillow's default.

    The write is atomic: the picture goes to a hidden temporary file in the same folder,
    which is then renamed, so a program watching the folder never reads half a picture.
    """
    p = Path(path)
    fmt = Image.registered_extensions().get(p.suffix.lower())
    if fmt is None:
        raise InputError(f"{p}: unknown image format {p.suffix!r} (use .png, .jpg, ...)")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f".{p.name}.{secrets.token_hex(4)}.tmp"
    try:
        with tmp.open("xb") as f:  # not mkstemp: its 0600 mode would ignore the umask
            write_rgb(arr, f, fmt, compress_level)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def write_rgb(arr: np.ndarray, f: BinaryIO, fmt: str = "PNG",
              compress_level: int | None = None) -> None:
    """Write uint8 RGB to an open binary file (e.g. stdout) in Pillow format ``fmt``."""
    img = Image.fromarray(arr)
    if compress_level is None or fmt != "PNG":
        img.save(f, format=fmt)
    else:
        img.save(f, format=fmt, compress_level=compress_level)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8 (round half up, clamped)."""
    y = (x[0].clamp(0, 1) * 255.0 + 0.5).floor().to(torch.uint8)
    return y.permute(1, 2, 0).cpu().numpy()


def list_images(folder: str | Path) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise InputError(f"not a directory: {d}")
    files = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images found under {d}")
    return files
