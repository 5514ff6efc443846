"""resilient_tx.eval.file_fec: a classical image file cut into packets with Reed-Solomon
parity across the whole file, its exact decode probability, and its tuned operating point."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.app.demo import sample_path
from resilient_tx.errors import InputError
from resilient_tx.eval import classical, file_fec, metrics
from resilient_tx.images import load_rgb
from resilient_tx.resilience.packet import HEADER_SIZE
from resilient_tx.transport.channel import ChannelConfig, loss_pattern

SMALL_PACKET = 120  # a few dozen bytes of chunk: the small test files still span many packets
CODECS = ["WEBP", *(["AVIF"] if classical.avif_available() else [])]


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return load_rgb(sample_path())[:128, :192]


@pytest.fixture(scope="module")
def webp(image: np.ndarray) -> file_fec.FilePackets:
    return file_fec.packetize_file(image, "webp", 60, parity_fraction=0.5,
                                   max_packet=SMALL_PACKET)


@pytest.mark.parametrize("codec", CODECS)
def test_packets_are_equal_and_counted_with_our_header(image: np.ndarray, codec: str) -> None:
    fp = file_fec.packetize_file(image, codec, 50, parity_fraction=0.5,
                                 max_packet=SMALL_PACKET)
    assert fp.k >= 3 and fp.parity == math.ceil(0.5 * fp.k) and fp.n == len(fp.shards)
    assert {len(s) for s in fp.shards} == {fp.packet_size - HEADER_SIZE}
    assert fp.packet_size <= SMALL_PACKET and fp.total_bytes == fp.n * fp.packet_size
    assert fp.k * (fp.packet_size - HEADER_SIZE) >= len(fp.data)  # the whole file is sent
    assert np.array_equal(fp.decoded, classical.decode(fp.data))
    assert (fp.width, fp.height) == (image.shape[1], image.shape[0])


def test_a_parity_count_or_a_fraction_but_not_both(image: np.ndarray) -> None:
    fp = file_fec.packetize_file(image, "WEBP", 60, parity=5, max_packet=SMALL_PACKET)
    assert fp.parity == 5
    for kwargs in ({}, {"parity": 1, "parity_fraction": 0.5}, {"parity": -1},
                   {"parity_fraction": -0.5}):
        with pytest.raises(InputError):
            file_fec.packetize_file(image, "WEBP", 60, max_packet=SMALL_PACKET, **kwargs)
    with pytest.raises(InputError, match="255"):  # one RS codeword across the file
        file_fec.packetize_file(image, "WEBP", 60, parity=250, max_packet=SMALL_PACKET)
    with pytest.raises(InputError):
        file_fec.packetize_file(image[..., 0], "WEBP", 60, parity=1)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_the_file_comes_back_iff_k_packets_arrive(webp: file_fec.FilePackets,
                                                  data: st.DataObject) -> None:
    arrived = data.draw(st.lists(st.integers(0, webp.n - 1), unique=True))
    picture = file_fec.receive(webp, arrived)
    if len(arrived) >= webp.k:
        assert np.array_equal(picture, webp.decoded)
    else:
        assert np.array_equal(picture, file_fec.fallback(webp.width, webp.height))
        assert (picture == file_fec.GRAY).all()


def test_receive_rejects_unknown_indices(webp: file_fec.FilePackets) -> None:
    for bad in ([webp.n], [-1], [True]):
        with pytest.raises(InputError):
            file_fec.receive(webp, bad)


def test_at_bytes_takes_the_highest_quality_that_fits(image: np.ndarray) -> None:
    cache: metrics.EncodeCache = {}
    budget = 3000
    fp = file_fec.at_bytes(image, "WEBP", budget, 0.5, SMALL_PACKET, cache)
    assert fp is not None and fp.total_bytes <= budget
    above = file_fec.packetize_file(image, "WEBP", fp.quality + 1, parity_fraction=0.5,
                                    max_packet=SMALL_PACKET, cache=cache)
    assert above.total_bytes > budget
    assert fp.quality in cache  # encodes are kept for the next search
    assert file_fec.at_bytes(image, "WEBP", 100, 0.5, SMALL_PACKET) is None
    with pytest.raises(InputError):
        file_fec.at_bytes(image, "WEBP", 0, 0.5)


def test_iid_decode_probability_is_the_binomial_tail() -> None:
    cfg = ChannelConfig(loss_rate=0.3)
    # P(at most 1 of 3 lost) = 0.7^3 + 3 * 0.3 * 0.7^2
    assert file_fec.decode_probability(2, 3, cfg) == pytest.approx(0.343 + 0.441)
    assert file_fec.decode_probability(5, 5, ChannelConfig(loss_rate=0.0)) == 1.0
    with pytest.raises(InputError):
        file_fec.decode_probability(5, 4, cfg)


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_gilbert_with_memoryless_bursts_is_iid(p: float) -> None:
    """Mean burst 1 / (1 - p) makes the Gilbert chain i.i.d. (channel.py's docstring)."""
    iid = ChannelConfig(loss_rate=p)
    gilbert = ChannelConfig(loss_model="gilbert", loss_rate=p, burst_length=1 / (1 - p))
    for k, n in ((1, 1), (4, 9), (10, 30)):
        assert file_fec.decode_probability(k, n, gilbert) == pytest.approx(
            file_fec.decode_probability(k, n, iid), abs=1e-12)


@pytest.mark.parametrize("cfg", [ChannelConfig(loss_rate=0.3),
                                 ChannelConfig(loss_model="gilbert", loss_rate=0.3,
                                               burst_length=4.0)], ids=["iid", "gilbert"])
def test_decode_probability_matches_the_channel_simulator(cfg: ChannelConfig) -> None:
    k, n, draws = 12, 20, 4000
    arrived = np.array([(~loss_pattern(n, cfg, seed)).sum() for seed in range(draws)])
    p = file_fec.decode_probability(k, n, cfg)
    assert 0.05 < p < 0.99
    assert np.mean(arrived >= k) == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / draws))


def test_bursts_need_more_parity_than_iid_loss() -> None:
    iid = ChannelConfig(loss_rate=0.2)
    bursty = ChannelConfig(loss_model="gilbert", loss_rate=0.2, burst_length=6.0)
    assert file_fec.decode_probability(10, 16, bursty) < file_fec.decode_probability(
        10, 16, iid)


@pytest.mark.parametrize("loss", [0.1, 0.4])
def test_tuned_for_loss_beats_every_fixed_fraction(image: np.ndarray, loss: float) -> None:
    budget, cache = 5000, {}
    tuned = file_fec.tuned_for_loss(image, "WEBP", budget, loss, SMALL_PACKET, cache=cache)
    assert tuned is not None and tuned.total_bytes <= budget
    cfg = file_fec.assumed_channel(loss)
    best = file_fec.expected_psnr(tuned, image, cfg)
    for frac in file_fec.PARITY_FRACTIONS:
        fixed = file_fec.at_bytes(image, "WEBP", budget, frac, SMALL_PACKET, cache)
        if fixed is not None:
            assert best >= file_fec.expected_psnr(fixed, image, cfg) - 1e-9
    grey = metrics.psnr(image, file_fec.fallback(image.shape[1], image.shape[0]))
    assert grey < best < metrics.psnr(image, tuned.decoded)
    assert file_fec.tuned_for_loss(image, "WEBP", 100, loss, SMALL_PACKET) is None


def test_higher_loss_buys_more_parity(image: np.ndarray) -> None:
    cache: metrics.EncodeCache = {}
    low, high = (file_fec.tuned_for_loss(image, "WEBP", 5000, p, SMALL_PACKET, cache=cache)
                 for p in (0.05, 0.5))
    assert low is not None and high is not None
    assert high.parity / high.k > low.parity / low.k and high.quality <= low.quality


def test_assumed_channel_is_iid_at_burst_one() -> None:
    assert file_fec.assumed_channel(0.2).loss_model == "bernoulli"
    gilbert = file_fec.assumed_channel(0.2, burst=4.0)
    assert (gilbert.loss_model, gilbert.burst_length) == ("gilbert", 4.0)


def test_simulate_is_seeded_and_follows_the_loss_pattern(webp: file_fec.FilePackets) -> None:
    cfg = ChannelConfig(loss_rate=0.4)
    got = [bool(np.array_equal(file_fec.simulate(webp, cfg, seed), webp.decoded))
           for seed in range(40)]
    want = [int((~loss_pattern(webp.n, cfg, seed)).sum()) >= webp.k for seed in range(40)]
    assert got == want and any(got) and not all(got)
    assert np.array_equal(file_fec.simulate(webp, cfg, 3), file_fec.simulate(webp, cfg, 3))
    with pytest.raises(InputError, match="corrupt"):
        file_fec.simulate(webp, ChannelConfig(loss_rate=0.1, corrupt_rate=0.1), 0)


def test_missing_avif_is_a_clear_error(image: np.ndarray,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classical, "avif_available", lambda: False)
    with pytest.raises(classical.CodecUnavailableError, match="AVIF"):
        file_fec.at_bytes(image, "avif", 5000, 0.5)
