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
from resilient_tx.resilience.feedback import FeedbackHub, ImageStats, Report
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
    first = sent.packets[0]
    col.feed(bytes(first), "a", 0.0)
    # Another address reusing the image id (with other bytes: an exact copy would be
    # dropped as one) gets an image of its own.
    col.feed(bytes(dataclasses.replace(first, payload=first.payload + b"x")), "b", 0.0)
    assert sorted(d.key[0] for d in col.flush()) == ["a", "b"]


def test_open_images_are_bounded(sent) -> None:
    col = Collector(five_stages, max_open=2, deadline=10.0)
    for i, sender in enumerate("abc"):
        col.feed(bytes(dataclasses.replace(sent.packets[0], image_id=i)), sender, float(i))
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


# --- admission: authentication, impossible headers, caps ------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from resilient_tx.resilience.auth import PacketKey, Signer, Verifier  # noqa: E402
from resilient_tx.resilience.packet import Packet  # noqa: E402

KEY = PacketKey.from_secret(b"secret-key-bytes-0123456789")


def tiny_tokens(model_id: bytes, width: int, height: int) -> tuple[int, ...]:
    """Stage sizes as a receiver would give them: a 16x16 image is one token."""
    return (1, 0, 0, 0, 0) if width * height <= 256 else (100,) * 5


def test_keyed_collector_takes_signed_packets_only(sent) -> None:
    signer = Signer(KEY)
    col = Collector(five_stages, verifier=Verifier(KEY))
    signed = [signer.sign(p) for p in sent.packets if not p.is_parity]
    plain = [bytes(p) for p in sent.packets]
    assert all(col.feed(b, "evil", 0.0) is None for b in plain)
    forged = bytearray(signed[0])
    forged[-1] ^= 1
    col.feed(bytes(forged), "evil", 0.0)
    due = [col.feed(b, "a", 0.0) for b in signed]
    assert due[-1] is not None and due[-1].complete
    assert all(col.feed(b, "b", 0.1) is None for b in signed)  # replayed from elsewhere
    assert col.drops.snapshot() == {"bad_tag": 1, "replay": len(signed),
                                    "unauthenticated": len(plain)}
    assert col.flush() == []
    assert any("without a tag" in n for n in col.drops.notices)


def test_keyed_byte_copies_are_refused_before_their_tag_is_checked(sent) -> None:
    signer = Signer(KEY)
    verifier = Verifier(KEY)
    col = Collector(five_stages, verifier=verifier)
    signed = [signer.sign(p) for p in sent.packets if not p.is_parity]
    opened: list[bytes] = []
    real_open = verifier.open

    def counting_open(data: bytes) -> Packet:
        opened.append(data)
        return real_open(data)

    verifier.open = counting_open  # type: ignore[method-assign]
    for b in signed:
        col.feed(b, "a", 0.0)
    for port in range(3):  # a flood of copies, from the sender's own address and others
        for b in signed:
            assert col.feed(b, f"evil:{port}" if port else "a", 0.1) is None
    assert len(opened) == len(signed)  # one HMAC per distinct datagram, not per copy
    assert col.drops.snapshot() == {"replay": 3 * len(signed)}


def test_unkeyed_collector_drops_signed_packets_and_says_why(sent) -> None:
    col = Collector(five_stages)
    col.feed(Signer(KEY).sign(sent.packets[0]), "a", 0.0)
    assert col.drops.snapshot() == {"unexpected_tag": 1} and col.flush() == []
    assert "--key-file" in col.drops.notices[0]


def test_impossible_headers_are_refused_before_any_work(sent) -> None:
    p = sent.packets[0]
    col = Collector(five_stages, stage_tokens=tiny_tokens)
    huge = Packet(**{**p.__dict__, "width": 16, "height": 16, "k": 65535, "n": 65535,
                     "index": 0, "wire_version": 2})  # version 3 cannot even say it
    more_chunks_than_tokens = Packet(**{**p.__dict__, "width": 16, "height": 16, "stage": 1,
                                        "k": 2, "n": 3, "index": 0})
    past_last_stage = Packet(**{**p.__dict__, "stage": 6})
    for bad in (huge, more_chunks_than_tokens, past_last_stage):
        assert col.feed(bytes(bad), "a", 0.0) is None
    assert col.drops.snapshot() == {"impossible_header": 3}
    assert col.flush() == [] and col.buffered == 0


def test_substituted_image_id_from_another_port_stays_apart(sent) -> None:
    col = Collector(five_stages)
    real = [bytes(p) for p in sent.packets if not p.is_parity]
    fake = bytes(Packet(**{**sent.packets[0].__dict__, "payload": b"evil" * 10}))
    col.feed(fake, "127.0.0.1:666", 0.0)
    due = [col.feed(b, "127.0.0.1:5000", 0.0) for b in real][-1]
    assert due is not None and due.complete and due.key[0] == "127.0.0.1:5000"
    (other,) = col.flush()
    assert other.key[0] == "127.0.0.1:666" and other.assembler.packets_received == 1


def test_a_flooding_sender_is_evicted_before_others(sent) -> None:
    col = Collector(five_stages, max_open=4, max_open_per_sender=8, deadline=10.0)
    first = sent.packets[0]
    col.feed(bytes(first), "legit", 0.0)
    for i in range(10):
        col.feed(bytes(Packet(**{**first.__dict__, "image_id": 100 + i})), "flood", 1.0 + i)
    assert {d.key[0] for d in col.expired(5.0)} == {"flood"}
    assert any(d.key[0] == "legit" for d in col.flush())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), keyed=st.booleans())
def test_arbitrary_packet_sequences_stay_within_the_caps(sent, data, keyed: bool) -> None:
    signer = Signer(KEY)
    genuine = [signer.sign(p) if keyed else bytes(p) for p in sent.packets]
    col = Collector(five_stages, max_open=3, max_open_per_sender=2, max_image_bytes=2000,
                    max_buffered_bytes=4000, stage_tokens=tiny_tokens,
                    verifier=Verifier(KEY) if keyed else None)
    datagram = st.one_of(st.sampled_from(genuine), st.binary(max_size=200),
                         st.sampled_from(genuine).map(lambda b: b[:-1]),
                         st.builds(lambda b, i, v: b[:i] + bytes([v]) + b[i + 1:],
                                   st.sampled_from(genuine), st.integers(0, 60),
                                   st.integers(0, 255)))
    for t, (d, sender) in enumerate(data.draw(st.lists(st.tuples(
            datagram, st.sampled_from("abcd")), max_size=40))):
        col.feed(d, sender, float(t) / 10)  # raises nothing, whatever arrives
        assert len(col._open) <= 3 and col.buffered <= 4000
        assert all(e.asm.bytes_received <= 2000 for e in col._open.values())
        for s in "abcd":
            assert sum(k[0] == s for k in col._open) <= 2
        col.expired(float(t) / 10)


def test_a_preview_comes_once_when_the_first_stages_are_in(sent) -> None:
    col = Collector(five_stages, deadline=1.0, preview_stages=2)
    early = [p for p in sent.packets if p.stage in (1, 2)]
    later = [p for p in sent.packets if p.stage not in (1, 2)]
    dues = [col.feed(bytes(p), "a", 0.0) for p in early]
    previews = [d for d in dues if d is not None]
    assert len(previews) == 1 and previews[0].preview and not previews[0].complete
    snap = previews[0].assembler
    held = snap.packets_received
    assert snap.stages_complete(5) >= 2
    finals = [d for d in (col.feed(bytes(p), "a", 0.1) for p in later) if d is not None]
    assert len(finals) == 1 and finals[0].complete and not finals[0].preview
    assert snap.packets_received == held  # the preview's snapshot did not move
    assert finals[0].assembler.packets_received > held


def test_a_preview_holds_only_its_first_stages(sent) -> None:
    # Packets of later stages come mixed in with the first ones: a preview that decoded
    # them too would cost almost what the final picture costs.
    col = Collector(five_stages, deadline=1.0, preview_stages=2)
    third = [p for p in sent.packets if p.stage == 3]
    first_two = [p for p in sent.packets if p.stage in (1, 2)]
    dues = [col.feed(bytes(p), "a", 0.0) for p in third + first_two]
    (preview,) = [d for d in dues if d is not None]
    assert preview.preview and preview.decode_stages == 2
    assert 3 in preview.assembler.stages  # held (and counted), just not decoded


def test_no_preview_without_the_option_or_for_a_complete_image(sent) -> None:
    col = Collector(five_stages)
    assert all(d is None or not d.preview
               for d in (col.feed(bytes(p), "a", 0.0) for p in sent.packets))


def test_the_feedback_hub_hears_every_admitted_packet_and_each_release(sent) -> None:
    hub = FeedbackHub(interval=0.1)
    col = Collector(five_stages, deadline=0.5, feedback=hub)
    lost = {3, 4, 5}
    for p in sent.packets:
        if p.seq not in lost:
            col.feed(bytes(p), "peer", 0.0)
    col.feed(b"garbage", "peer", 0.0)  # dropped before the hub hears of it
    reports = hub.due_reports(1.0)
    assert [peer for peer, _ in reports] == ["peer"]
    (stats,) = Report.parse(reports[0][1]).images
    assert stats.image_id == sent.image_id
    assert (stats.total, stats.expected) == (len(sent.packets), len(sent.packets))
    assert stats.lost == len(lost) and stats.loss_runs == 1
    # Complete (FEC filled the hole) and released, but final only once the sender moves on.
    assert not stats.final
    nxt = dataclasses.replace(sent.packets[0], image_id=sent.image_id + 1)
    col.feed(bytes(nxt), "peer", 1.0)
    older = [s for s in Report.parse(hub.due_reports(2.0)[0][1]).images
             if s.image_id == sent.image_id]
    assert older[0].final


def test_an_image_released_by_its_deadline_is_final_at_once(sent) -> None:
    hub = FeedbackHub(interval=0.1)
    col = Collector(five_stages, deadline=0.5, feedback=hub)
    for p in sent.packets[:3]:
        col.feed(bytes(p), "peer", 0.0)
    hub.due_reports(0.2)
    (due,) = col.expired(1.0)
    assert not due.complete
    (stats,) = Report.parse(hub.due_reports(1.0)[0][1]).images
    assert stats.final and stats.total == len(sent.packets) and stats.expected == 3


def test_late_packets_of_a_released_image_still_reach_the_hub(sent) -> None:
    hub = FeedbackHub(interval=0.1)
    col = Collector(five_stages, feedback=hub)
    needed = [p for p in sent.packets if not p.is_parity]
    for p in needed:
        col.feed(bytes(p), "peer", 0.0)
    hub.due_reports(0.0)
    for p in sent.packets:
        if p.is_parity:
            col.feed(bytes(p), "peer", 0.2)
    (stats,) = Report.parse(hub.due_reports(0.5)[0][1]).images
    assert stats.received == len(sent.packets) and stats.lost == 0


def test_a_stream_replayed_from_other_addresses_is_dropped_as_copies(sent) -> None:
    col = Collector(five_stages, deadline=0.5)
    raw = [bytes(p) for p in sent.packets]
    done = [d for d in (col.feed(b, "legit:1", 0.0) for b in raw) if d is not None]
    assert len(done) == 1
    for port in range(2, 50):  # the captured stream, from 48 other source ports
        assert all(col.feed(b, f"attacker:{port}", 0.1) is None for b in raw)
    assert col.drops.counts["copy_from_elsewhere"] == 48 * len(raw)
    assert col.expired(10.0) == []  # no image was opened for any copy
    assert any("replayed capture" in n for n in col.drops.notices)
    # The legitimate sender's own duplicates are no copies from elsewhere.
    col.feed(raw[0], "legit:1", 0.2)
    assert col.drops.counts["copy_from_elsewhere"] == 48 * len(raw)


def test_a_flood_of_feedback_shaped_datagrams_changes_nothing(sent) -> None:
    hub = FeedbackHub(interval=0.1)
    col = Collector(five_stages, deadline=0.5, feedback=hub)
    reports = [Report(i, images=(ImageStats(sent.image_id, 40, 40, 1, 1, 0, True),)).encode()
               for i in range(200)]
    for i, data in enumerate(reports):
        assert col.feed(data, f"stranger:{i}", 0.0) is None
    assert col.drops.counts == {"malformed": len(reports)}
    assert len(hub) == 0 and hub.due_reports(1.0) == [] and col.flush() == []
    # A real image afterwards is collected as if nothing had happened.
    done = [d for d in (col.feed(bytes(p), "legit", 1.0) for p in sent.packets) if d]
    assert len(done) == 1 and done[0].complete
