"""Feedback reports: the wire format and its parse contract, the receiver's loss monitor
(counts, runs, pacing, bounded memory) and the hub of monitors."""

from __future__ import annotations

import random
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.errors import FeedbackError, InputError, PacketError
from resilient_tx.resilience.auth import PacketKey
from resilient_tx.resilience.feedback import (
    ENTRY_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_IMAGES,
    MAX_SIZE,
    TAG_SIZE,
    VERSION,
    FeedbackHub,
    ImageStats,
    LossMonitor,
    Report,
    feedback_key,
    is_feedback,
)

EXAMPLES = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEY = PacketKey.from_secret(b"0123456789abcdef0123456789abcdef")
OTHER_KEY = PacketKey.from_secret(b"fedcba9876543210fedcba9876543210")
HEADER = struct.Struct("<4sBBIHIB")
ENTRY = struct.Struct("<IHHHHBB")


@st.composite
def image_stats(draw: st.DrawFn) -> ImageStats:
    """Any consistent entry: sequenced (expected > 0) or not."""
    image_id = draw(st.integers(0, 0xFFFFFFFF))
    stages = draw(st.integers(0, 0xFF))
    final = draw(st.booleans())
    expected = draw(st.integers(0, 0xFFFF))
    if expected == 0:
        return ImageStats(image_id, 0, 0, draw(st.integers(0, 0xFFFF)), 0, stages, final)
    total = draw(st.sampled_from([0, expected]) | st.integers(expected, 0xFFFF))
    received = draw(st.integers(1, expected))
    lost = expected - received
    runs = draw(st.integers(min(lost, 1), min(lost, received)))
    return ImageStats(image_id, total, expected, received, runs, stages, final)


@st.composite
def reports(draw: st.DrawFn, min_images: int = 0) -> Report:
    images = draw(st.lists(image_stats(), min_size=min_images, max_size=MAX_IMAGES,
                           unique_by=lambda s: s.image_id))
    return Report(draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(0, 0xFFFF)),
                  draw(st.integers(0, 0xFFFFFFFF)), tuple(images))


def example(n_images: int = 3) -> Report:
    images = tuple(ImageStats(100 + i, 40, 38, 35, 2, 3, i % 2 == 0) for i in range(n_images))
    return Report(7, 100, 48_000, images)


def raw(seq: int = 1, images: list[tuple[int, ...]] | None = None, version: int = VERSION,
        flags: int = 0, count: int | None = None) -> bytes:
    """A hand-built unkeyed report with a VALID CRC over arbitrary field values."""
    entries = images or []
    body = HEADER.pack(MAGIC, version, flags, seq, 100, 1000,
                       len(entries) if count is None else count)
    body += b"".join(ENTRY.pack(*e) for e in entries)
    return body + struct.pack("<I", zlib.crc32(body))


def missing_runs(arrived: set[int], expected: int) -> int:
    """Brute force: maximal runs of seqs in 0..expected-1 that did not arrive."""
    runs, inside = 0, False
    for s in range(expected):
        gone = s not in arrived
        runs += gone and not inside
        inside = gone
    return runs


# --- the wire format -----------------------------------------------------------------

@EXAMPLES
@given(reports())
def test_round_trip(report: Report) -> None:
    data = bytes(report)
    assert len(data) == HEADER_SIZE + ENTRY_SIZE * len(report.images) + 4
    assert Report.parse(data) == report
    assert Report.parse(bytearray(data)) == report
    assert Report.parse(memoryview(data)) == report
    assert report.encode() == data
    assert is_feedback(data)


@EXAMPLES
@given(reports())
def test_keyed_round_trip(report: Report) -> None:
    data = report.encode(KEY)
    assert len(data) == len(bytes(report)) + TAG_SIZE
    assert Report.parse(data, KEY) == report


@FEW
@given(reports(), st.booleans())
def test_every_truncation_and_extension_is_rejected(report: Report, keyed: bool) -> None:
    key = KEY if keyed else None
    data = report.encode(key)
    for end in range(len(data)):
        with pytest.raises(FeedbackError):
            Report.parse(data[:end], key)
    with pytest.raises(FeedbackError):
        Report.parse(data + b"\x00", key)


@FEW
@given(reports(), st.booleans())
def test_every_single_bit_flip_is_rejected(report: Report, keyed: bool) -> None:
    key = KEY if keyed else None
    data = report.encode(key)
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FeedbackError):
            Report.parse(bytes(flipped), key)


@EXAMPLES
@given(st.binary(max_size=300), st.booleans())
def test_parse_raises_only_feedback_error(data: bytes, keyed: bool) -> None:
    try:
        Report.parse(data, KEY if keyed else None)
    except FeedbackError:
        pass


@EXAMPLES
@given(reports())
def test_any_bytes_behind_a_valid_header_raise_only_feedback_error(report: Report) -> None:
    # A CRC-valid report whose entries are random: the consistency checks must hold.
    rnd = random.Random(report.seq)
    entries = [(rnd.randrange(1 << 32), *(rnd.randrange(1 << 16) for _ in range(4)),
                rnd.randrange(1 << 8), rnd.randrange(3)) for _ in report.images]
    try:
        parsed = Report.parse(raw(images=entries))
    except FeedbackError:
        return
    assert all(s.lost <= s.expected for s in parsed.images)


def test_key_mismatches_are_refused() -> None:
    report = example()
    with pytest.raises(FeedbackError, match="no key"):
        Report.parse(report.encode(KEY))
    with pytest.raises(FeedbackError, match="no tag"):
        Report.parse(bytes(report), KEY)
    with pytest.raises(FeedbackError, match="tag mismatch"):
        Report.parse(report.encode(OTHER_KEY), KEY)
    # a tag from the packet key itself (not the derived feedback key) does not verify
    body = report.encode(KEY)[:-TAG_SIZE]
    with pytest.raises(FeedbackError, match="tag mismatch"):
        Report.parse(body + KEY.tag(body), KEY)
    assert feedback_key(KEY) != KEY.key and feedback_key(KEY) != feedback_key(OTHER_KEY)


def test_feedback_error_is_a_packet_error() -> None:
    with pytest.raises(PacketError):
        Report.parse(b"RTXF")
    with pytest.raises(FeedbackError, match="not a report"):
        Report.parse("RTXF" + "\x00" * 30)  # type: ignore[arg-type]


def test_size_bound() -> None:
    full = Report(0xFFFFFFFF, 0xFFFF, 0xFFFFFFFF,
                  tuple(ImageStats(i, 0xFFFF, 0xFFFF, 1, 1, 5, True) for i in range(16)))
    assert len(full.encode(KEY)) == MAX_SIZE <= 300
    assert len(bytes(Report(0))) == HEADER_SIZE + 4


@pytest.mark.parametrize(("data", "message"), [
    (raw(version=2), "version"),
    (raw(flags=0x02), "flags"),
    (raw(images=[(1, 10, 10, 10, 0, 1, 0x02)]), "image flags"),
    (raw(count=17, images=[(i, 0, 0, 0, 0, 0, 0) for i in range(17)]), "at most"),
    (raw(count=2, images=[(1, 0, 0, 0, 0, 0, 0)]), "length"),
    (raw(images=[(1, 10, 10, 11, 0, 0, 0)]), "received"),  # more than expected
    (raw(images=[(1, 10, 10, 0, 1, 0, 0)]), "received"),  # seq expected-1 must have come
    (raw(images=[(1, 10, 10, 7, 0, 0, 0)]), "loss runs"),  # lost without a run
    (raw(images=[(1, 10, 10, 7, 4, 0, 0)]), "loss runs"),  # more runs than lost
    (raw(images=[(1, 10, 10, 10, 1, 0, 0)]), "loss runs"),  # a run without a loss
    (raw(images=[(1, 10, 10, 2, 3, 0, 0)]), "loss runs"),  # more runs than arrivals
    (raw(images=[(1, 5, 10, 10, 0, 0, 0)]), "total"),  # expected beyond total
    (raw(images=[(1, 0, 0, 3, 1, 0, 0)]), "loss runs"),  # runs without seqs
    (raw(images=[(1, 0, 0, 0, 0, 0, 0), (1, 0, 0, 0, 0, 0, 0)]), "twice"),
])
def test_inconsistent_fields_behind_a_valid_crc(data: bytes, message: str) -> None:
    with pytest.raises(FeedbackError, match=message):
        Report.parse(data)


def test_derived_properties() -> None:
    s = ImageStats(1, total=40, expected=32, received=24, loss_runs=3)
    assert (s.lost, s.loss_rate) == (8, 0.25)
    unsequenced = ImageStats(2, received=9)
    assert (unsequenced.lost, unsequenced.loss_rate) == (0, 0.0)
    assert Report(0, interval_ms=250, bytes_received=1000).receive_rate == 4000.0
    assert Report(0).receive_rate == 0.0


@pytest.mark.parametrize("build", [
    lambda: ImageStats(-1),
    lambda: ImageStats(1 << 32),
    lambda: ImageStats(1, total=1 << 16),
    lambda: ImageStats(1, stages_complete=256),
    lambda: ImageStats(1, final=1),  # type: ignore[arg-type]
    lambda: ImageStats(1, expected=True),
    lambda: Report(-1),
    lambda: Report(0, interval_ms=1 << 16),
    lambda: Report(0, images=[ImageStats(1)]),  # type: ignore[arg-type]
    lambda: Report(0, images=tuple(ImageStats(i) for i in range(17))),
    lambda: example().encode(b"k" * 32),  # type: ignore[arg-type]
])
def test_building_bad_values_is_an_input_error(build: object) -> None:
    with pytest.raises(InputError):
        build()  # type: ignore[operator]


def test_is_feedback() -> None:
    assert is_feedback(bytes(example())) and is_feedback(memoryview(example().encode(KEY)))
    assert not is_feedback(b"RTXP" + bytes(40)) and not is_feedback(b"RT")
    assert not is_feedback("RTXF")  # type: ignore[arg-type]


# --- the loss monitor ----------------------------------------------------------------

def test_counts_and_runs_on_a_hand_made_pattern() -> None:
    m = LossMonitor()
    for seq in (0, 1, 3, 4, 7, 8, 9):  # 2 and 5-6 missing, 10-11 not yet
        m.observe(5, seq, 12, 100, now=0.0)
    (s,) = m.report(0.2).images
    assert (s.image_id, s.total, s.expected, s.received, s.loss_runs) == (5, 12, 10, 7, 2)
    assert (s.lost, s.final) == (3, False)
    m.observe(5, 5, 12, 100, 0.3)  # splits nothing: 5-6 shrinks to 6
    m.observe(5, 2, 12, 100, 0.3)  # removes the run at 2
    assert m.report(0.4).images[0].loss_runs == 1
    m.observe(5, 6, 12, 100, 0.5)
    m.release(5, 0.5)
    (s,) = m.report(0.5).images
    assert (s.expected, s.received, s.loss_runs, s.final) == (10, 10, 0, True)


def test_filling_the_middle_of_a_run_splits_it() -> None:
    m = LossMonitor()
    m.observe(1, 0, 0, 10, 0.0)
    m.observe(1, 6, 0, 10, 0.0)  # 1..5 missing: one run
    assert m.report(1.0).images[0].loss_runs == 1
    m.observe(1, 3, 0, 10, 1.0)  # 1-2 and 4-5
    (s,) = m.report(2.0).images
    assert (s.total, s.expected, s.received, s.loss_runs) == (0, 7, 3, 2)


@EXAMPLES
@given(st.integers(1, 300), st.data())
def test_counts_match_brute_force_in_any_arrival_order(total: int, data: st.DataObject) -> None:
    arrived = data.draw(st.lists(st.integers(0, total - 1), min_size=1, max_size=400))
    m = LossMonitor()
    for seq in arrived:  # repeats included: duplicates must not count twice
        m.observe(9, seq, total, 1, 0.0)
    (s,) = m.report(1.0).images
    expected = max(arrived) + 1
    assert (s.expected, s.received) == (expected, len(set(arrived)))
    assert s.loss_runs == missing_runs(set(arrived), expected)


def test_duplicates_count_bytes_not_packets() -> None:
    m = LossMonitor()
    for _ in range(3):
        m.observe(1, 0, 4, 500, 0.0)
    r = m.report(0.5)
    assert r.images[0].received == 1
    assert (r.bytes_received, r.interval_ms, r.receive_rate) == (1500, 500, 3000.0)


def test_version_one_packets_count_arrivals_only() -> None:
    m = LossMonitor()
    for _ in range(5):
        m.observe(3, None, None, 200, 0.0)
    (s,) = m.report(0.1).images
    assert (s.expected, s.received, s.loss_runs, s.loss_rate) == (0, 5, 0, 0.0)


def test_inconsistent_input_is_ignored() -> None:
    m = LossMonitor()
    m.observe(1, 0, 10, 100, 0.0)
    m.observe(1, 10, 10, 100, 0.0)  # seq >= total
    m.observe(1, 5, 20, 100, 0.0)  # another total for the same image
    m.observe(1, -1, 10, 100, 0.0)
    m.observe(1, 1 << 16, 0, 100, 0.0)  # beyond u16
    m.observe(1, 3, 1 << 20, 100, 0.0)
    m.observe(-5, 0, 10, 100, 0.0)  # impossible image id
    m.observe(1 << 32, 0, 10, 100, 0.0)
    m.observe(1, None, None, 100, 0.0)  # a version-1 packet for a sequenced image
    m.stages_complete(77, 3)  # unknown image
    m.release(78, 0.0)
    r = m.report(0.1)
    assert [(s.image_id, s.expected, s.received) for s in r.images] == [(1, 1, 1)]
    assert r.bytes_received == 900  # every accepted datagram's bytes were real


def test_stages_complete_and_release() -> None:
    m = LossMonitor()
    m.observe(4, 0, 2, 10, 0.0)
    m.stages_complete(4, 3)
    m.stages_complete(4, 999)  # clamped to u8
    assert m.report(0.1).images[0].stages_complete == 255
    m.release(4, 0.2)
    m.observe(4, 1, 2, 10, 0.3)  # a late packet still counts
    (s,) = m.report(0.4).images
    assert (s.final, s.expected, s.received) == (True, 2, 2)


def test_pacing() -> None:
    m = LossMonitor(interval=0.1)
    assert not m.due(0.0)
    m.observe(1, 0, 40, 1000, 10.0)
    assert not m.due(10.05)
    assert m.due(10.125)
    first = m.report(10.125)
    assert (first.seq, first.interval_ms) == (0, 125)
    assert not m.due(20.0)  # nothing changed since
    m.observe(1, 1, 40, 1000, 20.0)
    assert m.due(20.0)  # the interval since the last report is long past
    assert m.report(20.0).seq == 1
    m.observe(1, 2, 40, 1000, 20.01)
    assert not m.due(20.02)
    m.release(1, 20.02)
    assert m.due(20.02)  # a release is reported at once
    assert m.report(20.02).images[0].final
    assert not m.due(20.03)
    m.stages_complete(1, 2)
    assert not m.due(20.05) and m.due(20.12)


def test_next_due_says_when_to_wake() -> None:
    m = LossMonitor(interval=0.1)
    assert m.next_due() is None
    m.observe(1, 0, 4, 10, 5.0)
    assert m.next_due() == pytest.approx(5.1)
    m.report(5.2)
    assert m.next_due() is None  # nothing new since
    m.observe(1, 1, 4, 10, 5.25)
    assert m.next_due() == pytest.approx(5.3)
    m.release(1, 5.26)
    due = m.next_due()
    assert due is not None and due <= 5.26 and m.due(5.26)
    hub = FeedbackHub(interval=0.5)
    assert hub.next_due() is None
    hub.observe("a", 1, 0, 2, 10, 1.0)
    hub.observe("b", 1, 0, 2, 10, 0.5)
    assert hub.next_due() == pytest.approx(1.0)


def test_newest_images_first_and_at_most_sixteen() -> None:
    m = LossMonitor()
    for image in range(20):
        m.observe(image, 0, 1, 10, float(image))
    r = m.report(30.0)
    assert [s.image_id for s in r.images] == list(range(19, 3, -1))
    assert m.tracked == MAX_IMAGES
    m.observe(0, 0, 1, 10, 31.0)  # a late packet of a forgotten image
    assert [s.image_id for s in m.report(32.0).images] == list(range(19, 3, -1))


def test_lies_do_not_evict_real_images() -> None:
    m = LossMonitor()
    for image in range(MAX_IMAGES):
        m.observe(image, 0, 2, 10, 0.0)
    for image in range(100, 200):
        m.observe(image, 5, 3, 10, 0.0)  # seq >= total: never tracked
    assert sorted(s.image_id for s in m.report(1.0).images) == list(range(MAX_IMAGES))


def test_hostile_sender_cannot_grow_memory() -> None:
    m = LossMonitor()
    rnd = random.Random(0)
    for image in range(10_000):
        m.observe(image, 0xFFFF, 0, 1400, 0.0)  # the largest bitmap an image may need
        m.observe(image, rnd.randrange(-10, 1 << 17), rnd.randrange(-10, 1 << 17), 1400, 0.0)
    assert m.tracked == MAX_IMAGES
    held = sum(len(img.seen) for img in m._images.values())
    assert held <= MAX_IMAGES * (0x10000 // 8)
    assert len(m._forgotten) <= 64
    r = Report.parse(m.report(1.0).encode(KEY), KEY)
    assert len(r.images) == MAX_IMAGES and r.bytes_received == 20_000 * 1400


@FEW
@given(st.lists(st.tuples(st.integers(-5, 40), st.one_of(st.none(), st.integers(-5, 70000)),
                          st.one_of(st.none(), st.integers(-5, 70000)), st.integers(-1, 9)),
                max_size=300))
def test_any_input_yields_a_valid_report(events: list[tuple[int, int | None, int | None,
                                                           int]]) -> None:
    m = LossMonitor()
    for t, (image, seq, total, op) in enumerate(events):
        if op == 0:
            m.release(image, t)
        elif op == 1:
            m.stages_complete(image, seq or 0)
        else:
            m.observe(image, seq, total, 100, t)
        if m.due(t):
            assert Report.parse(m.report(t).encode()).images is not None
    r = Report.parse(bytes(m.report(len(events))))
    assert len(r.images) <= MAX_IMAGES


def test_bad_configuration_is_an_input_error() -> None:
    with pytest.raises(InputError):
        LossMonitor(interval=-1)
    with pytest.raises(InputError):
        LossMonitor(max_images=17)
    with pytest.raises(InputError):
        FeedbackHub(interval=float("nan"))
    with pytest.raises(InputError):
        FeedbackHub(max_peers=0)


# --- the hub --------------------------------------------------------------------------

def test_hub_reports_each_due_peer() -> None:
    hub = FeedbackHub(interval=0.1)
    hub.observe("a:1", 1, 0, 10, 100, 0.0)
    hub.observe("b:2", 7, 2, 10, 100, 0.0)
    assert hub.due_reports(0.05) == []
    out = dict(hub.due_reports(0.1, KEY))
    assert set(out) == {"a:1", "b:2"}
    b = Report.parse(out["b:2"], KEY)
    assert [(s.image_id, s.expected, s.loss_runs) for s in b.images] == [(7, 3, 1)]
    assert hub.due_reports(0.2) == []  # nothing new
    hub.release("a:1", 1, 0.25)
    hub.release("nobody", 1, 0.25)  # unknown peers are not created by a release
    hub.stages_complete("nobody", 1, 2)
    (peer, data), = hub.due_reports(0.25)
    assert peer == "a:1" and Report.parse(data).images[0].final
    assert len(hub) == 2 and hub.monitor("nobody") is None


def test_hub_forgets_the_least_recently_active_peer() -> None:
    hub = FeedbackHub(max_peers=3)
    for i, peer in enumerate(("p0", "p1", "p2")):
        hub.observe(peer, 1, 0, 1, 10, float(i))
    hub.observe("p0", 1, 1, 2, 10, 3.0)  # p0 is active again: p1 is now the oldest
    hub.observe("p3", 1, 0, 1, 10, 4.0)
    assert len(hub) == 3
    assert hub.monitor("p1") is None
    assert all(hub.monitor(p) is not None for p in ("p0", "p2", "p3"))
    for i in range(1000):
        hub.observe(f"flood{i}", 1, 0, 1, 10, 5.0)
    assert len(hub) == 3
