"""The demo's picture: labelled panels side by side, and a map of inpainted tokens.

Pure image composition with Pillow: each panel gets a caption strip above it, so a reader
of ``transmitted_side_by_side.png`` sees what each half is, at what loss, bytes and PSNR.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

CAPTION_PX = 44  # height of the caption strip above each panel
FONT_PX = 16
MARK = np.array([255, 0, 160], dtype=np.float32)  # inpainted tokens: magenta, not in photos


@dataclass(frozen=True)
class Panel:
    image: np.ndarray  # (H, W, 3) uint8
    title: str
    detail: str = ""


def inpaint_map(image: np.ndarray, known: np.ndarray, downsample: int) -> np.ndarray:
    """``image`` with every inpainted token's pixels tinted (``known`` is (h, w) bool)."""
    h, w = image.shape[:2]
    mask = np.kron(~known, np.ones((downsample, downsample), dtype=bool))[:h, :w]
    out = image.astype(np.float32)
    out[mask] = 0.45 * out[mask] + 0.55 * MARK
    return out.round().astype(np.uint8)


def side_by_side(panels: list[Panel]) -> np.ndarray:
    """The panels in a row, each under its two-line caption, on a white background."""
    height = max(p.image.shape[0] for p in panels) + CAPTION_PX
    width = sum(p.image.shape[1] for p in panels)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    font = _font()
    x = 0
    for p in panels:
        canvas.paste(Image.fromarray(p.image), (x, CAPTION_PX))
        draw.text((x + 6, 4), p.title, fill="black", font=font)
        if p.detail:
            draw.text((x + 6, 4 + FONT_PX + 4), p.detail, fill=(70, 70, 70), font=font)
        x += p.image.shape[1]
    return np.asarray(canvas)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_PX)  # Pillow >= 10.1 scales its own font
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()
