"""Training crops: the host and device image samplers, and token-grid crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resilient_tx.errors import InputError
from resilient_tx.training.crops import (
    CropSampler,
    DeviceCropSampler,
    DeviceTokenCrops,
    token_crops,
)

CPU = torch.device("cpu")


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (20, 28, 3), dtype=np.uint8),
            rng.integers(0, 256, (26, 17, 3), dtype=np.uint8)]


def _windows(images: list[np.ndarray], crop: int) -> list[torch.Tensor]:
    """Every (3, crop, crop) window of every image under every flip, as uint8."""
    out = []
    for a in images:
        t = torch.from_numpy(a).permute(2, 0, 1)
        for y in range(a.shape[0] - crop + 1):
            for x in range(a.shape[1] - crop + 1):
                c = t[:, y : y + crop, x : x + crop]
                out += [c, c.flip(1), c.flip(2), c.flip(1).flip(2)]
    return out


def _is_window(crop: torch.Tensor, windows: list[torch.Tensor]) -> bool:
    q = (crop * 255).round().to(torch.uint8)
    return any(torch.equal(q, w) for w in windows)


@pytest.mark.parametrize("make", [
    lambda im, c, s: CropSampler(im, c, s),
    lambda im, c, s: DeviceCropSampler(im, c, s, CPU),
])
def test_samplers_cut_flipped_windows_reproducibly(images, make) -> None:
    a, b = make(images, 16, 3), make(images, 16, 3)
    x = a.batch(12)
    assert x.shape == (12, 3, 16, 16) and x.dtype == torch.float32
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.equal(x, b.batch(12))  # same seed, same crops
    assert not torch.equal(a.batch(12), x)  # a new draw every batch
    windows = _windows(images, 16)
    assert all(_is_window(c, windows) for c in x)


def test_device_sampler_uses_every_image_offset_and_flip(images) -> None:
    s = DeviceCropSampler(images, 16, 0, CPU)
    windows = _windows(images[:1], 16)
    batch = s.batch(400)
    from_first = sum(_is_window(c, windows) for c in batch)
    assert 100 < from_first < 300  # both images are drawn
    corners = {float(c[0, 0, 0]) for c in batch}
    assert len(corners) > 40  # many offsets and flips, not one fixed crop


def test_device_sampler_resumes_from_its_generator_state(images) -> None:
    s = DeviceCropSampler(images, 16, 5, CPU)
    s.batch(3)
    state = s.gen.get_state()
    nxt = s.batch(4)
    s.gen.set_state(state)
    assert torch.equal(s.batch(4), nxt)


def test_device_sampler_memory_format(images) -> None:
    s = DeviceCropSampler(images, 16, 0, CPU, torch.channels_last)
    assert s.batch(2).is_contiguous(memory_format=torch.channels_last)
    assert DeviceCropSampler(images, 16, 0, CPU).batch(2).is_contiguous()


@pytest.mark.parametrize("cls", [CropSampler, DeviceCropSampler])
def test_samplers_refuse_images_smaller_than_the_crop(images, cls) -> None:
    args = (CPU,) if cls is DeviceCropSampler else ()
    with pytest.raises(InputError, match="smaller than crop=18"):
        cls(images, 18, 0, *args)
    with pytest.raises(InputError, match="no training images"):
        cls([], 8, 0, *args)


def test_token_crops_on_host_and_device_are_sub_grids() -> None:
    grids = [torch.randint(0, 16, (2, 5, 9)), torch.randint(0, 16, (2, 9, 5))]
    host = token_crops(grids, 6, 8, torch.Generator().manual_seed(0))
    assert host.shape[:2] == (8, 2) and max(host.shape[2:]) <= 6
    dev = DeviceTokenCrops(grids, 6, 0, CPU)
    assert (dev.sh, dev.sw) == (5, 5)  # fits every grid: one shape for every batch
    batch = dev.batch(20)
    assert batch.shape == (20, 2, 5, 5) and batch.dtype == torch.int64
    for crop in batch:
        assert any(torch.equal(crop, g[:, y : y + 5, x : x + 5]) for g in grids
                   for y in range(g.shape[1] - 4) for x in range(g.shape[2] - 4))
    assert torch.equal(DeviceTokenCrops(grids, 6, 0, CPU).batch(20), batch)
