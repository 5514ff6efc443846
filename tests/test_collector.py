"""Collector: images are released when complete or when their deadline passes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.config import ModelConfig
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec
from resilient_tx.resilience.collector import Collector
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer
from tests.helpers import make_codec

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)


def _packetize(tmp_path_factory, cfg: ModelConfig) -> PacketizedImage:
    codec = make_codec(Path(tmp_path_factory.mktemp("c")), cfg)
    return Packetizer(codec, fec.get_profile("light"), max_packet=150).packetize(
        load_rgb(sample_path())[:128, :160], 3)


@pytest.fixture(scope="module")
def sent(tmp_path_factory) -> PacketizedImage:
    return _packetize(tmp_path_factory, TINY)


def five_stages(model_id: bytes) -> int:
    """What a receiver answers for the (five-stage) tiny model of ``sent``."""
    return 5


def test_complete_image_released_by_its_last_needed_packet(sent) -> None:
    col = Collector(five_stages, deadline=1.0)
    raw = [bytes(p) for p in sent.packets if not p.is_parity]
    due = [col.feed(b, "a", 0.0) for b in raw]
    assert all(d is None for d in due[:-1]) and due[-1] is not None and due[-1].complete
    assert col.feed(raw[0], "a", 0.1) is None  # late duplicate of a finished image
    assert col.expired(10.0) == []


def test_deadline_releases_a_partial_image(sent) -> None:
    col = Collector(five_stages, deadline=0.5)
    for b in [bytes(p) for p in sent.packets][:2]:
        assert col.feed(b, "a", 1.0) is None
    assert col.next_deadline() == pytest.approx(1.5)
    assert col.expired(1.4) == []
    (due,) = col.expired(1.5)
    assert not due.complete and due.assembler.packets_received == 2


def test_garbage_is_counted_and_senders_are_kept_apart(sent) -> None:
    col = Collector(five_stages)
    assert col.feed(b"not a packet", "x", 0.0) is None and col.rejected == 1
    raw = bytes(sent.packets[0])
    col.feed(raw, "a", 0.0)
    col.feed(raw, "b", 0.0)
    assert len(col.flush()) == 2


def test_open_images_are_bounded(sent) -> None:
    col = Collector(five_stages, max_open=2, deadline=10.0)
    for i, sender in enumerate("abc"):
        col.feed(bytes(sent.packets[0]), sender, float(i))
    evicted = col.expired(2.0)
    assert [d.key[0] for d in evicted] == ["a"]


def test_oversized_images_are_refused(sent) -> None:
    from resilient_tx.resilience.packet import Packet

    big = Packet(**{**sent.packets[0].__dict__, "width": 60000, "height": 60000})
    col = Collector(five_stages)
    assert col.feed(bytes(big), "a", 0.0) is None and col.rejected == 1
    assert col.flush() == []


def test_stage_count_comes_from_the_model(tmp_path_factory) -> None:
    three = _packetize(tmp_path_factory, dataclasses.replace(TINY, stages=3))
    model_id = three.packets[0].model_id
    asked: list[bytes] = []

    def stages(mid: bytes) -> int:
        asked.append(mid)
        return 3

    col = Collector(stages, deadline=1.0)
    raw = [bytes(p) for p in three.packets if not p.is_parity]
    assert {p.stage for p in three.packets} == {1, 2, 3}
    due = [col.feed(b, "a", 0.0) for b in raw]
    assert due[-1] is not None and due[-1].complete  # done after 3 stages, not 5
    assert set(asked) == {model_id}


def test_unknown_model_is_never_complete_and_released_by_its_deadline(sent) -> None:
    col = Collector(lambda model_id: None, deadline=0.5)
    assert all(col.feed(bytes(p), "a", 1.0) is None for p in sent.packets)
    assert col.rejected == 0  # not garbage: the receiver reports it as skipped
    (due,) = col.expired(1.5)
    assert not due.complete and due.assembler.packets_received == len(sent.packets)
