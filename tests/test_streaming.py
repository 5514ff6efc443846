"""Row streaming of conv stacks (model/streaming.py): the same rows as the whole-image call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resilient_tx.config import ModelConfig
from resilient_tx.model import PQMIM
from resilient_tx.model.autoencoder import ResBlock
from resilient_tx.model.streaming import (
    ConvRows,
    RowStream,
    row_chunks,
    stream_of,
    stream_rows,
)

# oneDNN may pick another kernel for another input height, so a streamed row can differ
# from the whole-image one in the last float32 bit or two; anything larger is a bug.
TOL = {"rtol": 1e-5, "atol": 1e-5}
SMALL = ModelConfig(widths=(8, 12, 16), latent_dim=16, num_subvectors=2, codebook_size=16,
                    latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)


def _streamed(module: nn.Module, x: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.cat(list(stream_rows(module, row_chunks(x, rows))), dim=2)


def _resblock(ch: int) -> ResBlock:
    blk = ResBlock(ch)
    nn.init.normal_(blk.conv2.weight, std=0.1)  # not the identity it starts as
    return blk


LAYERS = {
    "conv3": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "conv4s2": lambda: nn.Conv2d(4, 6, 4, stride=2, padding=1),
    "conv1x1": lambda: nn.Conv2d(4, 6, 1),
    "conv5_nopad": lambda: nn.Conv2d(4, 6, 5),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, padding=1, groups=4),
    "shuffle": lambda: nn.PixelShuffle(2),
    "unshuffle": lambda: nn.PixelUnshuffle(2),
    "silu": lambda: nn.SiLU(),
    "resblock": lambda: _resblock(4),
    "stack": lambda: nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), _resblock(8), nn.SiLU(),
                                   nn.Conv2d(8, 16, 4, stride=2, padding=1), nn.PixelShuffle(2),
                                   nn.Conv2d(4, 4, 3, padding=1)),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 64])
@pytest.mark.parametrize("channels_last", [False, True])
def test_each_layer_streams_to_the_whole_image_result(name: str, rows: int,
                                                      channels_last: bool) -> None:
    layer = LAYERS[name]().eval()
    x = torch.randn(1, 4, 24, 10)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want, got = layer(x), _streamed(layer, x, rows)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("height", [16, 48, 80])
@pytest.mark.parametrize("rows", [4, 16, 1000])
def test_the_pqvae_conv_stacks_stream(height: int, rows: int) -> None:
    net = PQMIM(SMALL).eval()
    for blk in net.modules():  # zero-initialised residual convs would hide a wrong skip
        if isinstance(blk, ResBlock):
            nn.init.normal_(blk.conv2.weight, std=0.1)
    x = torch.rand(1, 3, height, 32) * 2 - 1
    z = torch.randn(1, SMALL.latent_dim, height // 16, 2)
    with torch.no_grad():
        torch.testing.assert_close(_streamed(net.encoder.convs, x, rows),
                                   net.encoder.convs(x), **TOL)
        torch.testing.assert_close(_streamed(net.decoder.convs, z, max(1, rows // 16)),
                                   net.decoder.convs(z), **TOL)


def test_streamed_conv_rows_come_out_as_soon_as_they_are_computable() -> None:
    conv = nn.Conv2d(1, 1, 3, padding=1)
    stream = ConvRows(conv)
    with torch.no_grad():
        assert ConvRows(nn.Conv2d(1, 2, 3, stride=2)).push(torch.randn(1, 1, 2, 9)).shape == (
            1, 2, 0, 4)  # nothing computable yet: no rows, of the output's width
        first = stream.push(torch.randn(1, 1, 4, 5))
        second = stream.push(torch.randn(1, 1, 4, 5))
        tail = stream.finish()
    # Row o needs input rows o-1..o+1: after 4 rows, 3 outputs; the last waits for the end.
    assert (first.shape[2], second.shape[2]) == (3, 4)
    assert tail is not None and tail.shape[2] == 1


def test_a_module_can_supply_its_own_stream() -> None:
    class Doubler(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * x

        def row_stream(self) -> RowStream:
            return stream_of(nn.Identity())

    x = torch.randn(1, 2, 6, 3)
    # The module's own stream is used, not its forward: the identity here.
    assert torch.equal(_streamed(Doubler(), x, 2), x)


def test_unsupported_layers_and_padding_are_refused() -> None:
    with pytest.raises(TypeError, match="no row-streaming rule"):
        stream_of(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="zero padding"):
        stream_of(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="rows per chunk"):
        list(row_chunks(torch.zeros(1, 1, 4, 4), 0))


def test_unshuffle_needs_whole_groups_of_rows() -> None:
    with pytest.raises(ValueError, match="multiple of 2"):
        _streamed(nn.PixelUnshuffle(2), torch.randn(1, 1, 5, 4), 2)
