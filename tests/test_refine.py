"""Encoder-side effort (resilient_tx.codec.refine): same format, never a worse decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.app.cli import main
from resilient_tx.codec.container import EncodedImage
from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.refine import RefineSettings, refine_tokens
from resilient_tx.config import SenderConfig
from resilient_tx.errors import ConfigError, InputError
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import save_rgb, to_tensor
from resilient_tx.model import pad_to_multiple
from resilient_tx.resilience import fec
from resilient_tx.resilience.packetizer import Packetizer
from resilient_tx.zoo.checkpoint import load_model
from tests.helpers import make_codec


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    """A smooth 40 x 56 picture (not a multiple of f: padding must not count)."""
    yy, xx = np.mgrid[0:40, 0:56]
    base = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).astype(np.float64)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _decoded_psnr(codec: Codec, img: np.ndarray, effort: int) -> float:
    blob = bytes(codec.encode(img, effort))
    return psnr(img, codec.decode(EncodedImage.parse(blob)))


def test_effort_zero_is_todays_tokens(tmp_path: Path, tiny_config, image) -> None:
    codec = make_codec(tmp_path, tiny_config)
    x = pad_to_multiple(to_tensor(image), tiny_config.downsample)
    today = codec.net.tokens(x)[0]
    assert torch.equal(codec.image_to_tokens(image), today)
    assert torch.equal(codec.image_to_tokens(image, 0), today)
    assert torch.equal(refine_tokens(codec.net, x, *image.shape[:2], 0)[0], today)
    assert bytes(codec.encode(image, 0)) == bytes(codec.encode(image))


@pytest.mark.parametrize("temperature", [0.0, 0.05])
def test_effort_never_decodes_worse(tmp_path: Path, tiny_config, image, one_thread,
                                    temperature: float) -> None:
    codec = make_codec(tmp_path, tiny_config)
    x = pad_to_multiple(to_tensor(image), tiny_config.downsample)
    before = psnr(image, codec.tokens_to_image(codec.image_to_tokens(image), 56, 40))
    for effort in (1, 4, 12):
        tokens = refine_tokens(codec.net, x, 40, 56, effort, RefineSettings(0.2, temperature))
        assert psnr(image, codec.tokens_to_image(tokens[0], 56, 40)) >= before


def test_refined_stream_decodes_with_an_unchanged_decoder(tmp_path: Path, tiny_config, one_thread,
                                                          image) -> None:
    sender = make_codec(tmp_path, tiny_config)
    weights = {k: v.clone() for k, v in sender.net.state_dict().items()}
    tokens = sender.image_to_tokens(image, 6)
    blob = bytes(sender.encode(image, 6))
    # The sender's weights are frozen: refinement moves only the latent.
    assert all(torch.equal(v, sender.net.state_dict()[k]) for k, v in weights.items())
    assert all(p.grad is None for p in sender.net.parameters())
    receiver = Codec(load_model(tmp_path / "tiny.pt"))  # a fresh decoder from the file
    out = receiver.decode(EncodedImage.parse(blob))
    assert np.array_equal(out, sender.tokens_to_image(tokens, 56, 40))
    assert psnr(image, out) >= _decoded_psnr(receiver, image, 0)


def test_shipped_model_improves_on_a_crop(low_model, sample_crop, one_thread) -> None:
    codec = Codec(low_model)
    crop = sample_crop[:64, :96]
    plain = codec.image_to_tokens(crop)
    refined = codec.image_to_tokens(crop, 8)
    h, w = crop.shape[:2]
    assert not torch.equal(plain, refined)  # eight steps do change some tokens ...
    # ... and only for the better (keep-best), on the receiver's reconstruction.
    assert psnr(crop, codec.tokens_to_image(refined, w, h)) > psnr(
        crop, codec.tokens_to_image(plain, w, h))


def test_a_large_image_is_refined_tile_by_tile(low_model, sample_crop, one_thread,
                                              monkeypatch) -> None:
    # Every grid counts as large here: the 128 x 150 crop is an 8 x 10 grid.
    import resilient_tx.codec.refine as refine
    from resilient_tx.model import banded

    monkeypatch.setattr(banded, "BANDED_MIN_TOKENS", 0)
    monkeypatch.setattr(banded, "BAND_TOKENS", 30)
    codec = Codec(low_model, reduced_precision=False)
    crop = sample_crop[:, :150]
    h, w = crop.shape[:2]
    plain = codec.image_to_tokens(crop)
    before = psnr(crop, codec.tokens_to_image(plain, w, h))
    assert codec.refine_steps(w, h, 0) == 0
    # One tile holds the whole grid: refinement finds better tokens.
    ticks: list[int] = []
    refined = codec.image_to_tokens(crop, 8, lambda: ticks.append(1))
    assert len(ticks) == codec.refine_steps(w, h, 8) == 1
    assert not torch.equal(plain, refined)
    assert psnr(crop, codec.tokens_to_image(refined, w, h)) > before
    # 4 x 4 tiles (2 x 3, the last column padded): each tile's pass sees only its window,
    # and the whole-image check still keeps the result from ever decoding worse.
    monkeypatch.setattr(refine, "TILE_TOKENS", 4)
    ticks.clear()
    tiled = codec.image_to_tokens(crop, 8, lambda: ticks.append(1))
    assert len(ticks) == codec.refine_steps(w, h, 8) == 6
    assert psnr(crop, codec.tokens_to_image(tiled, w, h)) >= before


@pytest.mark.parametrize("effort", [-1, 1.5, True, "3"])
def test_bad_effort_rejected(tmp_path: Path, tiny_config, image, effort) -> None:
    codec = make_codec(tmp_path, tiny_config)
    with pytest.raises(InputError, match="effort"):
        codec.image_to_tokens(image, effort)
    with pytest.raises(InputError, match="effort"):
        Packetizer(codec, fec.get_profile("none"), effort=effort)


def test_sender_config_effort() -> None:
    assert SenderConfig().effort == 0
    assert SenderConfig(effort=3).effort == 3
    with pytest.raises(ConfigError, match="effort"):
        SenderConfig(effort=-1)


def test_packetizer_uses_its_effort(tmp_path: Path, tiny_config, image, one_thread) -> None:
    codec = make_codec(tmp_path, tiny_config)
    out = Packetizer(codec, fec.get_profile("none"), effort=5).packetize(image, 7)
    assert torch.equal(out.tokens, codec.image_to_tokens(image, 5))


def test_cli_effort(tmp_path: Path, tiny_config, image, capsys, one_thread) -> None:
    make_codec(tmp_path, tiny_config)
    png, rtx = tmp_path / "in.png", tmp_path / "out.rtx"
    save_rgb(image, png)
    model = ["--model", str(tmp_path / "tiny.pt")]
    assert main(["encode", str(png), "-o", str(rtx), "--effort", "-2", *model]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("resilient-tx: error:") and "--effort" in err and "\n" not in err
    assert main(["encode", str(png), "-o", str(rtx), "--effort", "3", *model]) == 0
    codec = Codec(load_model(tmp_path / "tiny.pt"))
    assert EncodedImage.parse(rtx.read_bytes()).stages == codec.encode(image, 3).stages
    assert main(["send", str(png), "--to", "127.0.0.1", "--effort", "-1"]) == 2
    assert "effort" in capsys.readouterr().err
