"""Packetizer: chunks are interleaved, balanced, fit the packet limit, and carry FEC parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.codec import layout
from resilient_tx.codec.stage_coder import context_stages
from resilient_tx.errors import InputError
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec, uep
from resilient_tx.resilience.packet import Packet
from resilient_tx.resilience.packetizer import Packetizer, spread_stages
from tests.helpers import make_codec


@pytest.fixture
def image() -> np.ndarray:
    return load_rgb(sample_path())[:256, :320]


@pytest.mark.parametrize("max_packet", [100, 200, 1200])
def test_packets_fit_limit_and_parse(tmp_path, tiny_config, image, max_packet) -> None:
    pk = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("light"),
                    max_packet=max_packet)
    out = pk.packetize(image, image_id=42)
    assert all(p.size <= max_packet for p in out.packets)
    assert [Packet.parse(bytes(p)) for p in out.packets] == list(out.packets)
    for plan in out.stages:
        stage_packets = [p for p in out.packets if p.stage == plan.stage]
        assert len(stage_packets) == plan.k + plan.parity
        assert all(p.k == plan.k and p.n == plan.k + plan.parity for p in stage_packets)


def test_small_packets_split_stages_into_several_chunks(tmp_path, tiny_config, image) -> None:
    out = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("none"),
                     max_packet=100).packetize(image, 1)
    assert max(plan.k for plan in out.stages) > 1


def test_packet_sizes_that_need_over_one_codeword_per_stage_are_not_planned(
        tmp_path, tiny_config, image, monkeypatch) -> None:
    # A 12-megapixel photo cut into quarter-size packets needs over 255 per stage: here the
    # codeword is shrunk instead, so the smaller packet sizes are the ones that overflow.
    pk = Packetizer(make_codec(tmp_path, tiny_config), fec.for_loss(0.3), max_packet=300)
    tokens = pk.codec.image_to_tokens(image)
    small = Packetizer(pk.codec, fec.for_loss(0.3), max_packet=100)
    assert max(plan.k for plan in small.plan_stages(tokens)) > 1
    tried = [max(shape.k for shape in cut.shapes) for cut in pk._cuts(tokens)]
    full_k = tried[0]  # the configured packet size comes first
    assert max(tried) > full_k  # smaller packets mean more of them
    monkeypatch.setattr(fec, "MAX_CODEWORD", max(tried) - 1)
    assert all(max(shape.k for shape in cut.shapes) < max(tried) for cut in pk._cuts(tokens))
    assert max(plan.k for plan in pk.plan_stages(tokens)) < max(tried)
    assert pk.plan_within(tokens, 10**9) is not None
    # Not even the configured packet size fits: one clear error.
    monkeypatch.setattr(fec, "MAX_CODEWORD", 1)
    with pytest.raises(InputError, match="too large to send at this rate"):
        small.plan_stages(tokens)


def test_unequal_protection_earlier_stages_get_more(tmp_path, tiny_config, image) -> None:
    out = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("strong"),
                     max_packet=100, min_chunks=4).packetize(image, 1)
    ratios = [plan.parity / plan.k for plan in out.stages]
    assert ratios == sorted(ratios, reverse=True) and ratios[0] > ratios[-1]


def test_chunks_interleave_neighbours() -> None:
    members = layout.chunk_members(100, 4, seed=7)
    for idx in members:
        # one position from every block of k consecutive stage positions
        assert len(idx) == 25 and sorted(set(idx // 4)) == list(range(25))


def test_best_seed_balances_bytes() -> None:
    bits = np.random.default_rng(0).gamma(2.0, 5.0, size=1000)
    k = 6
    plain = np.bincount(layout.assign_chunks(1000, k, 0), weights=bits, minlength=k)
    seed = layout.best_seed(bits, k)
    best = np.bincount(layout.assign_chunks(1000, k, seed), weights=bits, minlength=k)
    # Measured: largest chunk 8.3 % above the mean with no rotation, 2.5 % with the best
    # seed; seed 0 is among the candidates, so only a strict gain shows the search works.
    assert seed != 0 and best.max() < 0.97 * plain.max()
    assert layout.best_seed(bits, k) == seed  # the decoder-side rebuild is reproducible


def test_bad_arguments(tmp_path, tiny_config) -> None:
    codec = make_codec(tmp_path, tiny_config)
    with pytest.raises(InputError):
        Packetizer(codec, fec.get_profile("none"), max_packet=40)
    with pytest.raises(InputError):
        Packetizer(codec, fec.get_profile("none"), min_chunks=0)
    with pytest.raises(InputError):
        layout.assign_chunks(10, 0, 0)


@pytest.mark.parametrize("sizes", [[3, 2, 4, 5, 6], [1, 1, 2, 4, 8], [5], [2, 9, 1]])
def test_spread_stages_interleaves_every_stage_over_the_whole_send(sizes: list[int]) -> None:
    groups = [[(s, i) for i in range(n)] for s, n in enumerate(sizes)]
    order = list(spread_stages(groups))  # any objects: only the grouping matters
    assert sorted(order) == sorted(p for g in groups for p in g)
    for s, n in enumerate(sizes):  # each stage keeps its own order ...
        assert [i for st, i in order if st == s] == list(range(n))
    total = len(order)
    for length in range(1, total + 1):  # ... and no window of the send is crowded by one
        for start in range(total - length + 1):
            window = order[start:start + length]
            for s, n in enumerate(sizes):
                assert sum(st == s for st, _ in window) <= math.ceil(length * n / total) + 1


def test_a_loss_rate_profile_picks_the_cheapest_packet_size(tmp_path, tiny_config,
                                                            image) -> None:
    codec = make_codec(tmp_path, tiny_config)
    profile = fec.for_loss(0.4)
    pk = Packetizer(codec, profile, max_packet=1200, context_depth=2)
    out = pk.packetize(image, 3)
    assert all(p.size <= 1200 for p in out.packets)
    assert [Packet.parse(bytes(p)) for p in out.packets] == list(out.packets)
    chosen = max(p.size for p in out.packets)
    # Its plan scores no worse than the same profile held to the configured size alone.
    fixed = Packetizer(codec, profile, max_packet=1200, context_depth=2)
    fixed._capacities = lambda: [fixed.capacity]  # type: ignore[method-assign]
    alone = fixed.packetize(image, 3)

    def score(sent) -> float:
        m, h, w = sent.tokens.shape
        shares = [len(pos) / (h * w) for pos in codec.stages(h, w)]
        shapes = [uep.StageShape(st.k, max(p.size for p in sent.packets if p.stage == st.stage),
                                 share, context_stages(st.stage, 2))
                  for st, share in zip(sent.stages, shares, strict=True)]
        return profile.score(shapes, [st.parity for st in sent.stages])

    assert score(out) <= score(alone) + 1e-12
    assert len(pk._capacities()) == 4 and chosen <= 1200


def test_rule_profiles_keep_the_configured_packet_size(tmp_path, tiny_config) -> None:
    pk = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("strong"),
                    max_packet=1200)
    assert pk._capacities() == [pk.capacity]


@pytest.mark.parametrize("hw", [(1, 1), (16, 16), (1, 300), (40, 17)])
@pytest.mark.parametrize("profile", ["light", "for_loss"])
def test_tiny_images_with_empty_stages_round_trip(tmp_path, tiny_config, hw, profile) -> None:
    from resilient_tx.resilience import reassembly

    codec = make_codec(tmp_path, tiny_config)
    image = np.random.default_rng(0).integers(0, 256, (*hw, 3), dtype=np.uint8)
    prof = fec.for_loss(0.3) if profile == "for_loss" else fec.get_profile(profile)
    out = Packetizer(codec, prof, context_depth=2).packetize(image, 3)
    asm = reassembly.assemble(bytes(p) for p in out.packets)
    assert asm is not None
    got = reassembly.decode(codec, asm)
    assert bool(got.known.all()) and torch.equal(got.tokens, out.tokens)


def test_version_2_numbers_every_packet_and_sends_the_name_first_and_last(
        tmp_path, tiny_config, image) -> None:
    pk = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("light"),
                    max_packet=200)
    out = pk.packetize(image, image_id=9, name="../photos/holiday.png")
    total = len(out.packets)
    assert [p.seq for p in out.packets] == list(range(total))
    assert {p.total for p in out.packets} == {total}
    first, last = out.packets[0], out.packets[-1]
    assert first.is_meta and last.is_meta and (first.index, last.index) == (0, 1)
    assert first.payload == last.payload == b"holiday.png"  # no directories travel
    assert sum(p.is_meta for p in out.packets) == 2
    assert [Packet.parse(bytes(p)) for p in out.packets] == list(out.packets)
    assert all(p.size <= 200 for p in out.packets)


def test_version_1_on_request_writes_no_positions_and_no_name(tmp_path, tiny_config,
                                                              image) -> None:
    pk = Packetizer(make_codec(tmp_path, tiny_config), fec.get_profile("light"),
                    max_packet=200, wire_version=1)
    out = pk.packetize(image, image_id=9, name="x.png")
    assert all(p.seq is None and p.total is None and not p.is_meta for p in out.packets)
    assert all(bytes(p)[4] == 1 for p in out.packets)
    with pytest.raises(InputError, match="wire version"):
        Packetizer(pk.codec, fec.get_profile("light"), wire_version=4)
