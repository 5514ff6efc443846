"""The demo's figure: captions above panels, inpainted tokens tinted exactly."""

from __future__ import annotations

import numpy as np

from resilient_tx.app.figure import CAPTION_PX, Panel, inpaint_map, side_by_side


def test_panels_sit_side_by_side_under_captions() -> None:
    a = np.full((40, 30, 3), 10, np.uint8)
    b = np.full((32, 50, 3), 200, np.uint8)
    out = side_by_side([Panel(a, "original", "30x40"), Panel(b, "received")])
    assert out.shape == (40 + CAPTION_PX, 80, 3)
    assert (out[CAPTION_PX:, :30] == 10).all()
    assert (out[CAPTION_PX:CAPTION_PX + 32, 30:] == 200).all()
    assert (out[:CAPTION_PX] < 128).any()  # some caption text was drawn


def test_inpaint_map_tints_exactly_the_unknown_tokens() -> None:
    image = np.full((20, 24, 3), 128, np.uint8)  # a 3 x 3 grid of 8-px tokens, cropped
    known = np.ones((3, 3), dtype=bool)
    known[1, 2] = False
    out = inpaint_map(image, known, 8)
    changed = (out != image).any(axis=2)
    expected = np.zeros((20, 24), dtype=bool)
    expected[8:16, 16:24] = True
    assert np.array_equal(changed, expected)
