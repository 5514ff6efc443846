"""Random training crops: of images (augmented by flips) and of token grids.

Two samplers with one interface (``batch(size)``, a seeded ``gen``, ``crop``):
:class:`CropSampler` cuts crops one by one on the host from images held as uint8;
:class:`DeviceCropSampler` holds every image on the training device as uint8 and cuts a
whole batch with one gather there, its random numbers drawn on the device, so a step never
waits for the host. They draw different random streams, so their batches differ.
:func:`token_crops` and :class:`DeviceTokenCrops` are the same pair for token grids.
"""

from __future__ import annotations

import numpy as np
import torch

from resilient_tx.errors import InputError


def _check_sizes(images: list[np.ndarray], crop: int) -> None:
    if not images:
        raise InputError("no training images")
    small = [i for i, a in enumerate(images) if min(a.shape[:2]) < crop]
    if small:
        raise InputError(f"{len(small)} training image(s) smaller than crop={crop}")


class CropSampler:
    """Random crops with horizontal/vertical flips from images held in memory as uint8."""

    def __init__(self, images: list[np.ndarray], crop: int, seed: int) -> None:
        _check_sizes(images, crop)
        self.images = [torch.from_numpy(a).permute(2, 0, 1).contiguous() for a in images]
        self.crop = crop
        self.gen = torch.Generator().manual_seed(seed)

    def _randint(self, high: int) -> int:
        return int(torch.randint(0, high, (1,), generator=self.gen))

    def batch(self, size: int) -> torch.Tensor:
        """(size, 3, crop, crop) float in [0, 1], on the CPU."""
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


def _offsets(sizes: torch.Tensor, crop: torch.Tensor | int, u: torch.Tensor) -> torch.Tensor:
    """Uniform integer offsets in [0, size - crop] from uniforms ``u`` in [0, 1)."""
    room = sizes - crop
    return (u * (room + 1)).long().clamp(max=room)


def _axis(crop: int, start: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """(B, crop) source coordinates along one axis, reversed where ``flip``."""
    r = torch.arange(crop, device=start.device)
    return start[:, None] + torch.where(flip[:, None], crop - 1 - r, r)


class DeviceCropSampler:
    """:class:`CropSampler` on ``device``: images held there as one uint8 pixel array.

    ``memory_format`` is the layout of the returned batch (a gather of HWC pixels is
    channels-last already; the default makes it contiguous like :class:`CropSampler`'s).
    """

    def __init__(self, images: list[np.ndarray], crop: int, seed: int, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> None:
        _check_sizes(images, crop)
        self.crop, self.device, self.memory_format = crop, device, memory_format
        self.pixels = torch.cat([torch.from_numpy(np.ascontiguousarray(a)).reshape(-1, 3)
                                 for a in images]).to(device)  # (sum of H*W, 3) uint8
        hw = torch.tensor([a.shape[:2] for a in images], dtype=torch.int64)
        starts = torch.cumsum(hw[:, 0] * hw[:, 1], 0) - hw[:, 0] * hw[:, 1]
        self.h, self.w, self.start = hw[:, 0].to(device), hw[:, 1].to(device), starts.to(device)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    @property
    def num_images(self) -> int:
        return int(self.h.numel())

    def batch(self, size: int) -> torch.Tensor:
        """(size, 3, crop, crop) float in [0, 1], on the device."""
        dev, g, c = self.device, self.gen, self.crop
        i = torch.randint(0, self.num_images, (size,), generator=g, device=dev)
        u = torch.rand(size, 4, generator=g, device=dev)
        h, w = self.h[i], self.w[i]
        rows = _axis(c, _offsets(h, c, u[:, 0]), u[:, 2] < 0.5)  # (B, c)
        cols = _axis(c, _offsets(w, c, u[:, 1]), u[:, 3] < 0.5)
        idx = self.start[i, None, None] + rows[:, :, None] * w[:, None, None] + cols[:, None, :]
        px = self.pixels[idx]  # (B, c, c, 3) uint8
        out = px.permute(0, 3, 1, 2).float().div_(255.0)
        return out.contiguous(memory_format=self.memory_format)


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


class DeviceTokenCrops:
    """:func:`token_crops` on ``device``, with one fixed crop shape.

    The crop is at most ``size`` x ``size`` and fits every grid (what :func:`token_crops`
    cuts a batch to whenever it mixes grid orientations), so every batch has the same
    shape and needs no host round trip.
    """

    def __init__(self, tokens: list[torch.Tensor], size: int, seed: int,
                 device: torch.device) -> None:
        if not tokens:
            raise InputError("no token grids")
        self.device = device
        self.sh = min(size, *(int(t.shape[1]) for t in tokens))
        self.sw = min(size, *(int(t.shape[2]) for t in tokens))
        self.flat = torch.cat([t.permute(1, 2, 0).reshape(-1, t.shape[0]) for t in tokens])
        self.flat = self.flat.to(device)  # (sum of h*w, M)
        hw = torch.tensor([t.shape[1:] for t in tokens], dtype=torch.int64)
        starts = torch.cumsum(hw[:, 0] * hw[:, 1], 0) - hw[:, 0] * hw[:, 1]
        self.h, self.w, self.start = hw[:, 0].to(device), hw[:, 1].to(device), starts.to(device)
        self.gen = torch.Generator(device=device).manual_seed(seed)

    def batch(self, n: int) -> torch.Tensor:
        """(n, M, sh, sw) int64 token crops, on the device."""
        dev, g = self.device, self.gen
        i = torch.randint(0, int(self.h.numel()), (n,), generator=g, device=dev)
        u = torch.rand(n, 2, generator=g, device=dev)
        h, w = self.h[i], self.w[i]
        y, x = _offsets(h, self.sh, u[:, 0]), _offsets(w, self.sw, u[:, 1])
        rows = y[:, None] + torch.arange(self.sh, device=dev)
        cols = x[:, None] + torch.arange(self.sw, device=dev)
        idx = self.start[i, None, None] + rows[:, :, None] * w[:, None, None] + cols[:, None, :]
        return self.flat[idx].permute(0, 3, 1, 2).long()
