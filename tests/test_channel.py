"""The seeded channel simulator (resilient_tx.transport.channel)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from resilient_tx.errors import InputError, PacketError
from resilient_tx.resilience.packet import Packet
from resilient_tx.transport.channel import (
    ChannelConfig,
    ChannelStats,
    burst_lengths,
    loss_pattern,
    transmit,
)

SEED = 20240611
LONG = 400_000  # packets per long run: ~20k bursts, so means are tight


def stream(count: int = 200, payload: int = 40) -> list[bytes]:
    """Real packets with distinct payloads, so every delivered copy can be traced."""
    return [bytes(Packet(image_id=1, model_id=b"modelid!", width=64, height=64, rate_point=0,
                         stage=1 + i % 5, index=i % 7, k=5, n=7,
                         payload=i.to_bytes(4, "little") * (payload // 4)))
            for i in range(count)]


def sent_index(packet: bytes) -> int:
    return int.from_bytes(Packet.parse(packet).payload[:4], "little")


def _parses(packet: bytes) -> bool:
    try:
        Packet.parse(packet)
    except PacketError:
        return False
    return True


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_bernoulli_matches_rate_and_iid_burst_length(p: float) -> None:
    lost = loss_pattern(LONG, ChannelConfig("bernoulli", p), SEED)
    assert lost.mean() == pytest.approx(p, abs=0.005)
    # i.i.d. loss: a burst continues with probability p, so its mean length is 1 / (1 - p).
    assert burst_lengths(lost).mean() == pytest.approx(1 / (1 - p), rel=0.03)


@pytest.mark.parametrize(("p", "burst"), [(0.1, 2.0), (0.3, 4.0), (0.5, 8.0), (0.5, 1.0)])
def test_gilbert_matches_rate_and_burst_length(p: float, burst: float) -> None:
    lost = loss_pattern(LONG, ChannelConfig("gilbert", p, burst_length=burst), SEED)
    assert lost.mean() == pytest.approx(p, abs=0.01)
    assert burst_lengths(lost).mean() == pytest.approx(burst, rel=0.05)


def test_gilbert_transitions_follow_the_documented_formulas() -> None:
    q, r = ChannelConfig("gilbert", 0.3, burst_length=4.0).transitions
    assert r == pytest.approx(0.25)
    assert q / (q + r) == pytest.approx(0.3)
    # L = 1 / (1 - p) is i.i.d. loss: q = p and r = 1 - p.
    assert ChannelConfig("gilbert", 0.2, burst_length=1.25).transitions == pytest.approx(
        (0.2, 0.8))


def test_bursty_loss_is_burstier_than_iid_at_the_same_rate() -> None:
    iid = burst_lengths(loss_pattern(LONG, ChannelConfig("bernoulli", 0.3), SEED))
    bursty = burst_lengths(loss_pattern(LONG, ChannelConfig("gilbert", 0.3, 6.0), SEED))
    assert bursty.mean() > 3 * iid.mean()
    assert bursty.max() > iid.max()


def test_burst_lengths_helper() -> None:
    mask = np.array([1, 1, 0, 1, 0, 0, 1, 1, 1], dtype=bool)
    assert burst_lengths(mask).tolist() == [2, 1, 3]
    assert burst_lengths(np.zeros(4, dtype=bool)).size == 0


def test_same_seed_same_output_other_seed_other_output() -> None:
    config = ChannelConfig("gilbert", 0.3, 3.0, duplicate_rate=0.1, corrupt_rate=0.1,
                           reorder_rate=0.2, reorder_depth=4)
    packets = stream()
    first, second = transmit(packets, config, 7), transmit(packets, config, 7)
    assert first == second
    assert transmit(packets, config, 8)[0] != first[0]
    assert first[1].lost > 0 and first[1].corrupted > 0 and first[1].reordered > 0


def test_loss_pattern_is_what_transmit_applies() -> None:
    config = ChannelConfig("gilbert", 0.3, 3.0, duplicate_rate=0.2, reorder_rate=0.3)
    delivered, stats = transmit(stream(), config, SEED)
    lost = loss_pattern(200, config, SEED)
    assert {sent_index(p) for p in delivered} == set(np.flatnonzero(~lost).tolist())
    assert stats.lost == int(lost.sum())


def test_loss_pattern_does_not_depend_on_the_other_impairments() -> None:
    # Each model has its own random stream: common random numbers across a sweep.
    packets = stream()
    plain, _ = transmit(packets, ChannelConfig(loss_rate=0.3), SEED)
    noisy, _ = transmit(packets, ChannelConfig(loss_rate=0.3, reorder_rate=0.5,
                                               duplicate_rate=0.3), SEED)
    assert sorted(set(noisy)) == sorted(set(plain))


def test_corrupted_packets_are_rejected_by_the_crc() -> None:
    packets = stream(400)
    for bits in (1, 2, 3):
        config = ChannelConfig(corrupt_rate=0.5, corrupt_bits=bits)
        delivered, stats = transmit(packets, config, SEED + bits)
        rejected = [p for p in delivered if not _parses(p)]
        assert 150 < stats.corrupted == len(rejected) < 250
        assert all(p not in packets for p in rejected)
        assert [p for p in delivered if _parses(p)] == [p for p in delivered if p in packets]


def test_corrupted_packet_differs_in_exactly_the_flipped_bits() -> None:
    packets = stream(50)
    delivered, _ = transmit(packets, ChannelConfig(corrupt_rate=1.0, corrupt_bits=3), SEED)
    for original, copy in zip(packets, delivered, strict=True):
        xor = np.bitwise_xor(np.frombuffer(original, np.uint8), np.frombuffer(copy, np.uint8))
        assert int(np.unpackbits(xor).sum()) == 3


def test_duplication_adds_adjacent_identical_copies() -> None:
    packets = stream(400)
    delivered, stats = transmit(packets, ChannelConfig(duplicate_rate=0.25), SEED)
    counts = Counter(delivered)
    assert set(counts.values()) <= {1, 2} and set(counts) == set(packets)
    assert stats.duplicated == sum(c - 1 for c in counts.values()) == len(delivered) - 400
    assert 60 < stats.duplicated < 140
    assert [sent_index(p) for p in delivered] == sorted(sent_index(p) for p in delivered)


def test_reordering_displaces_packets_by_at_most_the_depth() -> None:
    packets = stream(400)
    config = ChannelConfig(reorder_rate=0.2, reorder_depth=5)
    delivered, stats = transmit(packets, config, SEED)
    assert sorted(delivered) == sorted(packets) and delivered != packets
    order = np.array([sent_index(p) for p in delivered])
    late = order < np.maximum.accumulate(np.concatenate(([-1], order[:-1])))
    assert stats.reordered == int(late.sum())
    assert 40 < stats.reordered < 120
    # A delayed packet arrives at most `depth` places after its own slot.
    lateness = np.argsort(order) - np.arange(400)  # arrival position - sent position
    assert 1 <= int(lateness.max()) <= 5


def test_stats_add_up() -> None:
    packets = stream(500)
    config = ChannelConfig("gilbert", 0.2, 2.0, duplicate_rate=0.1, corrupt_rate=0.1,
                           reorder_rate=0.1)
    delivered, stats = transmit(packets, config, SEED)
    assert isinstance(stats, ChannelStats)
    assert stats.sent == 500 and stats.delivered == len(delivered)
    assert stats.delivered == stats.sent - stats.lost + stats.duplicated
    assert stats.loss_rate == stats.lost / 500 and 0.1 < stats.loss_rate < 0.3
    assert sum(not _parses(p) for p in delivered) == stats.corrupted > 0


def test_lossless_channel_is_the_identity() -> None:
    packets = stream(30)
    delivered, stats = transmit(packets, ChannelConfig(), SEED)
    assert delivered == packets
    assert stats == ChannelStats(30, 30, 0, 0, 0, 0)
    assert transmit([], ChannelConfig(loss_rate=0.5, reorder_rate=1.0), SEED)[0] == []
    assert ChannelStats(0, 0, 0, 0, 0, 0).loss_rate == 0.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_model": "markov"}, "available: bernoulli, gilbert"),
        ({"loss_rate": 1.0}, r"\[0, 1\)"),
        ({"loss_rate": -0.1}, "loss_rate"),
        ({"loss_rate": float("nan")}, "loss_rate"),
        ({"duplicate_rate": 1.5}, r"\[0, 1\]"),
        ({"corrupt_rate": "0.1"}, "corrupt_rate"),
        ({"burst_length": 0.5}, "burst_length"),
        ({"burst_length": float("inf")}, "finite"),
        ({"corrupt_bits": 0}, "corrupt_bits"),
        ({"reorder_depth": 0}, "reorder_depth"),
        ({"reorder_depth": 2.0}, "reorder_depth"),
        ({"loss_model": "gilbert", "loss_rate": 0.8, "burst_length": 2.0}, "impossible"),
    ],
)
def test_config_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InputError, match=message):
        ChannelConfig(**kwargs)  # type: ignore[arg-type]


def test_transmit_validates_seed_and_packets() -> None:
    for seed in (-1, 1.5, None, True):
        with pytest.raises(InputError, match="seed"):
            transmit([b"x"], ChannelConfig(), seed)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="bytes"):
        transmit(["text"], ChannelConfig(), SEED)  # type: ignore[list-item]
    with pytest.raises(InputError, match="n must be"):
        loss_pattern(-1, ChannelConfig(), SEED)
