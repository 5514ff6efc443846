"""The MIM headroom probes, simulations/mim_headroom.py (checked against the real codec)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.codec import entropy
from resilient_tx.codec.image_codec import Codec
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import load_rgb
from resilient_tx.zoo.registry import get_model
from tests.helpers import load_simulation


@pytest.fixture(scope="module")
def hr():
    return load_simulation("mim_headroom")


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec(get_model("low"))


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    return load_rgb(sample_path())[:192, :320]


@pytest.mark.slow
def test_stage_bits_add_up_to_the_coded_streams(hr, codec: Codec, crop: np.ndarray) -> None:
    res = hr.probe_stages(codec, [crop])
    ideal = sum(r["mim_bits"] * r["sub_indices"] for r in res["rows"])
    coded = 8 * sum(len(st.data) for st in codec.encode(crop).stages)
    # An arithmetic coder spends its ideal length plus a few bytes of flush per stream.
    assert ideal <= coded <= ideal + 8 * 4 * len(res["rows"])
    marginal = 8 * codec.marginal_only_bytes(codec.image_to_tokens(crop))
    all_marginal = sum(r["marginal_bits"] * r["sub_indices"] for r in res["rows"])
    assert all_marginal == pytest.approx(marginal, abs=32)
    assert res["rows"][0]["saving"] == 0.0  # stage 1 is coded with the marginals
    assert 0.0 < res["saving_all_stages"] < 1.0


@pytest.mark.slow
def test_flip_probe_plain_matches_the_mim(hr, codec: Codec, crop: np.ndarray) -> None:
    tokens = codec.image_to_tokens(crop)
    _, h, w = tokens.shape
    hidden = codec.stage_map(h, w) >= 3
    mim = codec.model.net.mim.float().eval()
    with torch.no_grad():
        want = torch.log_softmax(mim(tokens[None], hidden[None])[0].double(), -1)
        got = hr._flipped_log_probs(mim, tokens, hidden, [])
        both = hr._flipped_log_probs(mim, tokens, hidden, [0, 1])
    assert torch.equal(got, want)
    assert both.shape == want.shape and not torch.equal(both, want)
    res = hr.probe_flips(codec, [crop])
    assert res["sub_indices"] == tokens.numel() - tokens[:, codec.stage_map(h, w) == 1].numel()


def test_conditioned_heads_start_at_the_shipped_heads_and_stay_causal(hr, codec: Codec) -> None:
    shipped = codec.model.net.mim.heads
    heads = hr.ConditionedHeads(shipped, codec.cfg.codebook_size, condition=True)
    feats = torch.randn(5, shipped[0].in_features)
    targets = torch.randint(0, codec.cfg.codebook_size, (5, len(shipped)))
    with torch.no_grad():
        want = torch.stack([h(feats) for h in shipped], 1)
        assert torch.allclose(heads(feats, targets), want)
        for e in heads.embed:
            e.weight.normal_()
        other = targets.clone()
        other[:, 1:] = (other[:, 1:] + 1) % codec.cfg.codebook_size
        a, b = heads(feats, targets), heads(feats, other)
    assert torch.equal(a[:, :2], b[:, :2])  # q^1 and q^2 see only q^1, which is unchanged
    assert not torch.equal(a[:, 2:], b[:, 2:])


@pytest.mark.slow
def test_nstages_at_five_is_the_codec_saving(hr, codec: Codec, crop: np.ndarray) -> None:
    # Float ideal lengths vs the coder's integer CDFs: equal to well under a tenth of a point.
    five = hr.probe_nstages(codec, [crop], [5, 7])["rows"]
    assert [r["stages"] for r in five] == [5, 7]
    assert five[0]["saving"] == pytest.approx(
        hr.probe_stages(codec, [crop])["saving_all_stages"], abs=1e-3)


@pytest.mark.slow
def test_rdoq_at_lambda_zero_is_the_codec(hr, codec: Codec, crop: np.ndarray) -> None:
    marginal_bits = hr._marginal_bits(codec).float()
    mim0, marg0, psnr0 = hr._rdoq_image(codec, crop, 0.0, marginal_bits)
    enc = codec.encode(crop)
    assert psnr0 == pytest.approx(psnr(crop, codec.decode(enc)), abs=1e-6)
    coded = 8 * sum(len(st.data) for st in enc.stages)
    assert mim0 == pytest.approx(coded, rel=0.02)
    tokens = codec.image_to_tokens(crop)
    assert marg0 == pytest.approx(float(marginal_bits.gather(1, tokens.reshape(
        tokens.shape[0], -1)).sum()), rel=1e-6)
    mim1, _, psnr1 = hr._rdoq_image(codec, crop, 0.05, marginal_bits)
    assert mim1 < mim0 and psnr1 < psnr0  # bits bought with distortion


def test_main_writes_json(hr, tmp_path: Path, capsys) -> None:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    from PIL import Image

    Image.fromarray(load_rgb(sample_path())[:128, :192]).save(img_dir / "a.png")
    rc = hr.main(["--images", str(img_dir), "--probes", "stages", "rdoq", "--lambdas", "0",
                  "--out", str(tmp_path / "o"), "--threads", "1"])
    assert rc == 0
    data = json.loads((tmp_path / "o" / "headroom.json").read_text())
    assert set(data["low"]) == {"model_id", "images", "stages", "rdoq"}
    assert data["low"]["rdoq"]["rows"][0]["lambda"] == 0
    assert "saving" in capsys.readouterr().out


def test_main_refuses_kodak_training_and_bad_limits(hr, tmp_path: Path, capsys) -> None:
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    assert hr.main(["--train-images", str(kodak), "--out", str(tmp_path)]) == 2
    assert "Kodak" in capsys.readouterr().err
    assert hr.main(["--limit", "-1", "--out", str(tmp_path)]) == 2
    assert "--limit" in capsys.readouterr().err
    assert hr.main(["--stage-counts", "1", "--out", str(tmp_path)]) == 2
    assert "--stage-counts" in capsys.readouterr().err


def test_stage_code_lengths_are_the_entropy_modules(codec: Codec, crop: np.ndarray) -> None:
    # The probe's "as coded" claim rests on entropy.code_lengths; pin it to a real stream.
    tokens = codec.image_to_tokens(crop)
    _, h, w = tokens.shape
    pos = codec.stages(h, w)[2]
    sym = codec.stage_coder(h, w).symbols(tokens, 3)
    cdf = codec.stage_cdfs(tokens, 3, pos, codec.stage_map(h, w) >= 3)
    bits = float(entropy.code_lengths(cdf, sym).sum())
    assert bits <= 8 * len(entropy.encode(cdf, sym)) <= bits + 32


def test_subcond_needs_training_images(hr, tmp_path: Path, capsys) -> None:
    # The default probes run without a training set (a fresh clone has none): subcond waits.
    args = hr.build_parser().parse_args([])
    assert hr._probes(args) == [p for p in hr.PROBES if p != "subcond"]
    assert Path(args.images).is_dir()  # the bundled sample photo
    capsys.readouterr()
    assert hr.main(["--probes", "subcond", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--train-images DIR" in err
    assert hr.main(["--probes", "subcond", "--train-images", str(tmp_path / "no"),
                    "--out", str(tmp_path)]) == 2
    assert "training images not found" in capsys.readouterr().err
