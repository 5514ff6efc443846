"""The planner's loss channel and send order (resilient_tx.resilience.burst)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.errors import InputError
from resilient_tx.resilience import burst
from resilient_tx.resilience.packet import MODEL_ID_SIZE, Packet
from resilient_tx.resilience.packetizer import spread_stages
from resilient_tx.transport.channel import ChannelConfig, burst_lengths


def stage_packets(ns: list[int]) -> list[list[Packet]]:
    """Real (empty) packets, stage s numbered s + 1, as the packetizer builds them."""
    return [[Packet(image_id=0, model_id=bytes(MODEL_ID_SIZE), width=1, height=1,
                    rate_point=0, stage=s + 1, index=i, k=1, n=n, payload=b"")
             for i in range(n)] for s, n in enumerate(ns)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=7))
def test_send_positions_agree_with_the_packetizer(ns: list[int]) -> None:
    order = [(p.stage - 1, p.index) for p in spread_stages(stage_packets(ns))]
    positions = burst.send_positions(ns)
    assert [len(p) for p in positions] == ns
    for s, stage in enumerate(positions):
        for i, where in enumerate(stage):
            assert order[where] == (s, i)


def test_send_positions_spread_a_stage_over_the_whole_send() -> None:
    positions = burst.send_positions([2, 2, 4, 8])
    assert sorted(x for p in positions for x in p) == list(range(16))
    # Keys 0.25 and 0.75 for both two-packet stages: ties go to the earlier stage.
    assert positions[0] == [3, 11] and positions[1] == [4, 12]
    with pytest.raises(InputError, match="packet counts"):
        burst.send_positions([2, -1])


@pytest.mark.parametrize(("p", "length"), [(0.2, 1.0), (0.3, 4.0), (0.5, 8.0)])
def test_channel_transitions_match_the_simulator(p: float, length: float) -> None:
    ours = burst.Channel(p, length)
    theirs = ChannelConfig("gilbert", loss_rate=p, burst_length=length)
    assert ours.transitions == pytest.approx(theirs.transitions)
    assert ours.iid == (length == 1)


@pytest.mark.parametrize(
    ("p", "length", "message"),
    [(1.0, 1.0, "loss rate"), (-0.1, 1.0, "loss rate"), (float("nan"), 1.0, "loss rate"),
     (True, 1.0, "loss rate"), (0.3, 0.5, "burst"), (0.3, float("inf"), "burst"),
     (0.3, float("nan"), "burst"), (0.8, 2.0, "impossible")],
)
def test_channel_validation(p: float, length: float, message: str) -> None:
    with pytest.raises(InputError, match=message):
        burst.Channel(p, length)


def test_iid_needs_no_gilbert_bound() -> None:
    # Burst 1 is i.i.d. loss, which exists at any rate; q > 1 only matters for a chain.
    assert burst.Channel(0.8, 1.0).iid
    assert burst.Channel(0.0, 3.0).iid


@pytest.mark.parametrize(("p", "length"), [(0.1, 1.0), (0.3, 4.0), (0.2, 2.0)])
def test_patterns_have_the_channels_rate_and_bursts(p: float, length: float) -> None:
    lost = burst.patterns(burst.Channel(p, length), 512, 300)
    assert lost.shape == (512, 512) and lost.dtype == bool
    assert lost.mean() == pytest.approx(p, abs=0.01)
    assert lost[0].mean() == pytest.approx(p, abs=0.05)  # stationary from the first packet
    runs = np.concatenate([burst_lengths(lost[:, j]) for j in range(lost.shape[1])])
    expected = length if length > 1 else 1 / (1 - p)  # i.i.d. runs: Geometric(1 - p)
    assert runs.mean() == pytest.approx(expected, rel=0.05)


def test_patterns_are_deterministic_and_extend_their_prefix() -> None:
    channel = burst.Channel(0.3, 4.0)
    short = burst.patterns(channel, 64, 10).copy()
    long = burst.patterns(channel, 64, 700)
    assert np.array_equal(long[: short.shape[0]], short)
    burst._patterns.cache_clear()
    burst._block.cache_clear()
    assert np.array_equal(burst.patterns(channel, 64, 700), long)
    assert not long.flags.writeable


def test_patterns_are_common_random_numbers_across_rates() -> None:
    # Same uniforms for every channel: under i.i.d. loss a higher rate loses a superset.
    low = burst.patterns(burst.Channel(0.2), 128, 100)
    high = burst.patterns(burst.Channel(0.3), 128, 100)
    assert np.all(high[low]) and high.sum() > low.sum()


def test_patterns_validate() -> None:
    with pytest.raises(InputError, match="samples"):
        burst.patterns(burst.Channel(0.1), 0, 10)
    with pytest.raises(InputError, match="length"):
        burst.patterns(burst.Channel(0.1), 10, -1)
