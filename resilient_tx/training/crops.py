"""Random training crops: of images held in memory (augmented by flips) and of token grids."""

from __future__ import annotations

import numpy as np
import torch

from resilient_tx.errors import InputError


class CropSampler:
    """Random crops with horizontal/vertical flips from images held in memory as uint8."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int) -> None:
        small = [i for i, a in enumerate(images) if min(a.shape[:2]) < crop]
        if small:
            raise InputError(f"{len(small)} training image(s) smaller than crop={crop}")
        self.images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in images]
        self.crop = crop
        self.gen = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))

    def batch(self, size: int) -> torch.Tensor:
        """(size, 3, crop, crop) float in [0, 1]."""
        out = []
        for _ in range(size):
            img = self.images[self._randint(len(self.images))]
            _, h, w = img.shape
            y, x = self._randint(h - self.crop + 1), self._randint(w - self.crop + 1)
            c = img[:, y : y + self.crop, x : x + self.crop]
            if self._randint(2):
                c = c.flip(2)
            if self._randint(2):
                c = c.flip(1)
            out.append(c)
        return torch.stack(out).float() / 255.0


def token_crops(tokens: list[torch.Tensor], size: int, n: int,
                gen: torch.Generator) -> torch.Tensor:
    """(n, M, s, s') random crops of at most ``size`` x ``size`` from (M, h, w) token grids.

    A grid smaller than ``size`` is taken whole; the batch is then cut to its smallest
    member so the crops stack.
    """
    out = []
    for _ in range(n):
        t = tokens[int(torch.randint(0, len(tokens), (1,), generator=gen))]
        _, h, w = t.shape
        sh, sw = min(size, h), min(size, w)
        y = int(torch.randint(0, h - sh + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - sw + 1, (1,), generator=gen))
        out.append(t[:, y : y + sh, x : x + sw])
    hmin = min(o.shape[1] for o in out)
    wmin = min(o.shape[2] for o in out)
    return torch.stack([o[:, :hmin, :wmin] for o in out])
