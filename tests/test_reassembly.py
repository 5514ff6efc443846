"""Receiver: any subset of packets decodes without raising and never yields a wrong token."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.app.demo import sample_path
from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import ModelConfig
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec
from resilient_tx.resilience.packet import Packet
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer
from resilient_tx.resilience.reassembly import ImageAssembler, assemble, decode
from tests.helpers import make_codec

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple:
    codec = make_codec(Path(tmp_path_factory.mktemp("m")), TINY)
    image = load_rgb(sample_path())[:256, :320]
    out = Packetizer(codec, fec.get_profile("light"), max_packet=100).packetize(image, 5)
    return codec, out


def receive(codec, packets: list[Packet]):
    asm = assemble(bytes(p) for p in packets)
    assert asm is not None
    got = decode(codec, asm)
    return got.tokens, got.known, got.report


def test_assemble_skips_malformed_datagrams(setup) -> None:
    _, out = setup
    assert assemble([b"", b"RTXP", b"\x00" * 64]) is None
    asm = assemble([b"junk", *(bytes(p) for p in out.packets[:3])])
    assert asm is not None and asm.packets_received == 3


def test_everything_arrives_everything_exact(setup) -> None:
    codec, out = setup
    tokens, known, rep = receive(codec, list(out.packets))
    assert bool(known.all()) and torch.equal(tokens, out.tokens)
    assert rep.tokens_inpainted == 0 and rep.bytes_unusable == 0
    assert rep.complete_stages == len(out.stages)


def test_a_preview_decodes_its_first_stages_only_and_counts_everything(setup) -> None:
    codec, out = setup
    asm = assemble(bytes(p) for p in out.packets)
    assert asm is not None
    got = decode(codec, asm, stages=2)
    grid = codec.stage_map(*out.tokens.shape[1:])
    assert torch.equal(got.known, grid <= 2)  # exactly the first two stages' tokens
    assert torch.equal(got.tokens[:, grid <= 2], out.tokens[:, grid <= 2])
    rep = got.report
    assert rep.packets_received == len(out.packets)  # what arrived, all of it
    assert rep.complete_stages == 2 and rep.bytes_unusable == 0  # the rest is not lost


def test_a_planned_send_decodes_exactly_after_losses(setup) -> None:
    codec, _ = setup
    image = load_rgb(sample_path())[:256, :320]
    out = Packetizer(codec, fec.for_loss(0.3), max_packet=600,
                     context_depth=2).packetize(image, 6)
    kept = [p for i, p in enumerate(out.packets) if i % 4 != 1]  # lose every 4th packet
    tokens, known, _ = receive(codec, kept)
    assert bool(known.any())
    assert torch.equal(tokens[:, known], out.tokens[:, known])  # exact where known


def test_fec_recovers_lost_data_packets(setup) -> None:
    codec, out = setup
    # drop one data packet of every stage that has parity: FEC must rebuild it
    drop = {(p.stage, 0) for p in out.packets if p.n > p.k}
    kept = [p for p in out.packets if (p.stage, p.index) not in drop]
    tokens, known, rep = receive(codec, kept)
    assert bool(known.all()) and torch.equal(tokens, out.tokens)
    assert rep.packets_recovered == len(drop)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@pytest.mark.slow
@given(data=st.data())
def test_random_subsets_never_give_wrong_tokens(setup, data) -> None:
    codec, out = setup
    out: PacketizedImage
    keep = data.draw(st.lists(st.booleans(), min_size=len(out.packets),
                              max_size=len(out.packets)))
    packets = [p for p, k in zip(out.packets, keep, strict=True) if k]
    if not packets:
        return
    dupes = data.draw(st.lists(st.sampled_from(packets), max_size=5))
    packets = packets + dupes
    random.Random(data.draw(st.integers(0, 2**16))).shuffle(packets)
    tokens, known, rep = receive(codec, packets)
    assert torch.equal(tokens[:, known], out.tokens[:, known])
    assert rep.tokens_decoded == int(known.sum())
    assert rep.tokens_decoded + rep.tokens_inpainted == rep.tokens
    assert 0 <= rep.bytes_unusable <= rep.bytes_received


def test_foreign_and_inconsistent_packets_are_rejected(setup) -> None:
    codec, out = setup
    first = out.packets[0]
    asm = ImageAssembler(first)
    other_image = Packet(**{**first.__dict__, "image_id": first.image_id + 1})
    bad_kn = Packet(**{**first.__dict__, "k": first.k + 1, "n": first.n + 1})
    assert not asm.add(other_image) and not asm.add(bad_kn)
    assert not asm.add(first)  # duplicate
    assert asm.rejected == 2


def test_later_stages_without_context_are_counted_unusable(setup) -> None:
    codec, out = setup
    kept = [p for p in out.packets if p.stage != 1]
    tokens, known, rep = receive(codec, kept)
    assert not bool(known.any())
    assert rep.bytes_unusable == rep.bytes_received > 0
    assert np.isclose(rep.tokens_inpainted, rep.tokens)


def test_context_depth_keeps_later_stages_decodable(tmp_path) -> None:
    codec = make_codec(tmp_path, TINY)
    image = load_rgb(sample_path())[:256, :320]
    out = Packetizer(codec, fec.get_profile("none"), max_packet=100,
                     context_depth=2).packetize(image, 9)
    assert all(p.flags == 2 for p in out.packets)
    kept = [p for p in out.packets if p.stage != 3]
    tokens, known, rep = receive(codec, kept)
    grid = torch.from_numpy(quincunx_stages(*known.shape, 5))
    assert bool(known[grid != 3].all()) and not bool(known[grid == 3].any())
    assert torch.equal(tokens[:, known], out.tokens[:, known])
    # the same loss with the full chain (depth 0) loses stages 3, 4 and 5
    chain = Packetizer(codec, fec.get_profile("none"), max_packet=100,
                      context_depth=0).packetize(image, 9)
    _, known0, _ = receive(codec, [p for p in chain.packets if p.stage != 3])
    assert int(known0.sum()) == int((grid <= 2).sum())


def test_adversarial_headers_never_raise(setup) -> None:
    """CRC-valid packets whose k/n/stage disagree with the image never crash decoding."""
    codec, out = setup
    first = out.packets[0]
    weird = [
        Packet(**{**first.__dict__, "k": 200, "n": 200, "index": 150}),  # k > stage tokens
        Packet(**{**first.__dict__, "stage": 9}),  # a stage the model does not have
        Packet(**{**first.__dict__, "payload": b"\x00" * 7}),  # too short for a chunk
    ]
    for bad in weird:
        got = decode(codec, ImageAssembler(bad))
        tokens, known = got.tokens, got.known
        assert tokens.shape == out.tokens.shape
        assert torch.equal(tokens[:, known], out.tokens[:, known])


def test_a_stage_lost_whole_still_counts_in_the_packets_sent(setup) -> None:
    codec, out = setup
    gone = max(out.stages, key=lambda st: st.k + st.parity).stage
    kept = [p for p in out.packets if p.stage != gone]
    _, _, rep = receive(codec, kept)
    assert rep.packets_sent == len(out.packets)  # the total every packet announces
    assert rep.packets_sent - rep.packets_received == len(out.packets) - len(kept)
    # Without version 2's total, only the stages seen would be counted.
    assert rep.packets_sent > sum(st.k + st.parity for st in out.stages if st.stage != gone)


def test_the_metadata_packet_names_the_image_and_a_contradicting_copy_is_rejected(
        tmp_path) -> None:
    codec = make_codec(tmp_path, TINY)
    image = load_rgb(sample_path())[:64, :64]
    out = Packetizer(codec, fec.get_profile("light"), max_packet=200).packetize(
        image, 3, name="cat.png")
    asm = assemble(bytes(p) for p in out.packets[1:])  # the first copy lost
    assert asm is not None and asm.name == b"cat.png"
    forged = dataclasses.replace(out.packets[0], payload=b"dog.png")
    assert not asm.add(forged) and asm.name == b"cat.png"
    assert asm.packets_received == len(out.packets) - 1
