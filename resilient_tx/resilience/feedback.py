"""Receiver feedback: the report wire format and the receiver-side loss monitor.

A receiver tells each sender what arrived, much as an RTCP receiver report does, so the
sender can estimate the path's loss rate and burstiness (:mod:`.estimator`) and plan its
parity. Every data packet carries ``seq``, its 0-based place in its image's send order,
and ``total``, the packets sent for that image; from these the receiver counts, per
image, what it knows was sent, what arrived and how the gaps cluster.

Wire format (all integers little-endian; :data:`HEADER_SIZE` = 17, :data:`ENTRY_SIZE` =
14, at most :data:`MAX_IMAGES` entries, so a report is at most 261 bytes keyed)::

    offset  size  field
    0       4     magic "RTXF"
    4       1     version (this build writes and reads 1)
    5       1     flags: bit 0 = keyed (a tag follows the CRC); others 0
    6       4     report seq u32 (counts this receiver's reports to this sender)
    10      2     interval u16, milliseconds covered by the byte count
    12      4     bytes received u32 from this sender during the interval
    16      1     image count u8 (<= 16)
    17      14*c  image entries, newest image first:
                    0   4  image id u32
                    4   2  total u16 (packets the sender announced; 0: unknown)
                    6   2  expected u16 (highest seq seen + 1)
                    8   2  received u16 (distinct seqs < expected that arrived)
                    10  2  loss runs u16 (maximal runs of missing seqs in 0..expected-1)
                    12  1  stages complete u8
                    13  1  flags: bit 0 = final (none of its packets are expected any more: the
                          image was released incomplete, or its sender moved on); others 0
    ...     4     CRC32 of everything before it
    ...     16    keyed reports only: HMAC-SHA256(feedback key, everything before)[:16]

An image whose packets carry no ``seq`` (version-1 packets) is reported with
``expected = 0`` and ``received`` counting its packets: it tells the sender only that the
image arrived. The feedback key is derived from the shared :class:`~.auth.PacketKey`
under its own label, so a report's tag can never be mistaken for a packet's. A keyed
parser refuses unkeyed reports, and an unkeyed parser refuses keyed ones, which it cannot
check. Reports carry no replay protection of their own: the sender ignores a report whose
seq is not newer than the last one (:mod:`.estimator`), and every count in a report only
grows, so a replayed report can only repeat what the sender already knew.

Building a report with out-of-range fields is a programming error and raises
:class:`~resilient_tx.errors.InputError`; parsing raises only
:class:`~resilient_tx.errors.FeedbackError`.

:class:`LossMonitor` (one per sender) and :class:`FeedbackHub` (all senders) turn the
packets a receiver accepts into paced reports. They are pure state machines with the
clock passed in, bounded in memory whatever a sender claims, and never raise on
inconsistent input: they ignore it.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
import zlib
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from resilient_tx.errors import FeedbackError, InputError
from resilient_tx.resilience.auth import PacketKey

MAGIC = b"RTXF"
VERSION = 1
KEYED_FLAG = 0x01  # flags bit 0: a tag follows the CRC
FINAL_FLAG = 0x01  # image entry flags bit 0: no more packets of the image expected
MAX_IMAGES = 16
TAG_SIZE = 16
_HEADER = struct.Struct("<4sBBIHIB")
_ENTRY = struct.Struct("<IHHHHBB")
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size
ENTRY_SIZE = _ENTRY.size
MIN_SIZE = HEADER_SIZE + _CRC.size
MAX_SIZE = HEADER_SIZE + MAX_IMAGES * ENTRY_SIZE + _CRC.size + TAG_SIZE
_FEEDBACK_KEY_LABEL = b"resilient-tx feedback key v1"
MAX_U8 = 0xFF
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InputError(f"{name} must be in [{low}, {high}], got {value}")


def feedback_key(key: PacketKey) -> bytes:
    """The report-signing key derived from a packet key (its own label: no tag of one
    kind can pass as the other)."""
    return hmac.new(key.key, _FEEDBACK_KEY_LABEL, hashlib.sha256).digest()


def _check_key(key: PacketKey) -> None:
    if not isinstance(key, PacketKey):
        raise InputError(f"key must be a PacketKey, got {type(key).__name__}")


def _tag(key: PacketKey, body: bytes) -> bytes:
    return hmac.new(feedback_key(key), body, hashlib.sha256).digest()[:TAG_SIZE]


@dataclass(frozen=True)
class ImageStats:
    """What one receiver knows about one image of one sender (module docstring)."""

    image_id: int
    total: int = 0
    expected: int = 0
    received: int = 0
    loss_runs: int = 0
    stages_complete: int = 0
    final: bool = False

    def __post_init__(self) -> None:
        _check_int("image_id", self.image_id, 0, MAX_U32)
        for name in ("total", "expected", "received", "loss_runs"):
            _check_int(name, getattr(self, name), 0, MAX_U16)
        _check_int("stages_complete", self.stages_complete, 0, MAX_U8)
        if not isinstance(self.final, bool):
            raise InputError(f"final must be a bool, got {type(self.final).__name__}")
        self._check_consistent()

    def _check_consistent(self) -> None:
        """The invariants the counting guarantees; a report breaking them is forged or buggy."""
        if self.total and self.expected > self.total:
            raise InputError(f"expected {self.expected} > total {self.total}")
        if self.expected == 0:
            if self.loss_runs:
                raise InputError("loss runs without any sequenced packet")
            return
        # seq expected-1 arrived (it defines expected), and every run of losses ends
        # before a packet that arrived.
        if not 1 <= self.received <= self.expected:
            raise InputError(f"received {self.received} not in [1, expected={self.expected}]")
        lost = self.expected - self.received
        if not min(lost, 1) <= self.loss_runs <= min(lost, self.received):
            raise InputError(f"{self.loss_runs} loss runs impossible with {lost} lost "
                             f"and {self.received} received")

    @property
    def lost(self) -> int:
        """Packets known to be missing (0 when nothing carried a seq)."""
        return self.expected - self.received if self.expected else 0

    @property
    def loss_rate(self) -> float:
        """Share of the packets known to be sent that are missing (0.0 when unknown)."""
        return self.lost / self.expected if self.expected else 0.0

    def __bytes__(self) -> bytes:
        return _ENTRY.pack(self.image_id, self.total, self.expected, self.received,
                           self.loss_runs, self.stages_complete,
                           FINAL_FLAG if self.final else 0)

    @classmethod
    def parse(cls, data: bytes) -> ImageStats:
        """One image entry; raise :class:`FeedbackError` (only) if it is malformed."""
        if len(data) != ENTRY_SIZE:
            raise FeedbackError(f"image entry is {len(data)} bytes, need {ENTRY_SIZE}")
        image_id, total, expected, received, runs, stages, flags = _ENTRY.unpack(data)
        if flags & ~FINAL_FLAG:
            raise FeedbackError(f"unknown image flags {flags:#04x}")
        try:
            return cls(image_id, total, expected, received, runs, stages,
                       bool(flags & FINAL_FLAG))
        except InputError as exc:
            raise FeedbackError(f"inconsistent image entry ({exc})") from exc


@dataclass(frozen=True)
class Report:
    """One feedback report from a receiver to a sender (module docstring)."""

    seq: int
    interval_ms: int = 0
    bytes_received: int = 0
    images: tuple[ImageStats, ...] = ()

    def __post_init__(self) -> None:
        _check_int("seq", self.seq, 0, MAX_U32)
        _check_int("interval_ms", self.interval_ms, 0, MAX_U16)
        _check_int("bytes_received", self.bytes_received, 0, MAX_U32)
        if not isinstance(self.images, tuple) or not all(
                isinstance(s, ImageStats) for s in self.images):
            raise InputError("images must be a tuple of ImageStats")
        if len(self.images) > MAX_IMAGES:
            raise InputError(f"at most {MAX_IMAGES} images per report, got {len(self.images)}")
        if len({s.image_id for s in self.images}) != len(self.images):
            raise InputError("an image id appears twice in one report")

    @property
    def receive_rate(self) -> float:
        """Bytes per second received from the sender over the interval (0.0 if empty)."""
        return self.bytes_received * 1000.0 / self.interval_ms if self.interval_ms else 0.0

    def _body(self, keyed: bool) -> bytes:
        header = _HEADER.pack(MAGIC, VERSION, KEYED_FLAG if keyed else 0, self.seq,
                              self.interval_ms, self.bytes_received, len(self.images))
        fields = header + b"".join(bytes(s) for s in self.images)
        return fields + _CRC.pack(zlib.crc32(fields) & MAX_U32)

    def __bytes__(self) -> bytes:
        return self._body(keyed=False)

    def encode(self, key: PacketKey | None = None) -> bytes:
        """The datagram: unkeyed without ``key``, else with its tag."""
        if key is None:
            return bytes(self)
        _check_key(key)
        body = self._body(keyed=True)
        return body + _tag(key, body)

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview,
              key: PacketKey | None = None) -> Report:
        """Decode one datagram; raise :class:`FeedbackError` (only) for anything malformed,
        corrupted, or failing the tag (module docstring gives the keyed rules)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise FeedbackError(f"not a report (got {type(data).__name__}, expected bytes)")
        if key is not None:
            _check_key(key)
        data = bytes(data)
        count = _check_framing(data, keyed=key is not None)
        if key is not None:
            if not hmac.compare_digest(_tag(key, data[:-TAG_SIZE]), data[-TAG_SIZE:]):
                raise FeedbackError("report tag mismatch (forged, or another key)")
            data = data[:-TAG_SIZE]
        (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
        if zlib.crc32(data[:-_CRC.size]) & MAX_U32 != crc:
            raise FeedbackError("corrupted report (CRC mismatch)")
        _magic, _version, _flags, seq, interval_ms, nbytes, _count = _HEADER.unpack_from(data)
        images = tuple(ImageStats.parse(data[o:o + ENTRY_SIZE])
                       for o in range(HEADER_SIZE, HEADER_SIZE + count * ENTRY_SIZE,
                                      ENTRY_SIZE))
        try:
            return cls(seq, interval_ms, nbytes, images)
        except InputError as exc:
            raise FeedbackError(f"inconsistent report ({exc})") from exc


def _check_framing(data: bytes, keyed: bool) -> int:
    """Magic, version, flags and length (all that precedes the tag and CRC checks);
    returns the image count."""
    if len(data) < MIN_SIZE or not data.startswith(MAGIC):
        raise FeedbackError("not a report (bad magic or truncated)")
    _magic, version, flags, _seq, _ms, _bytes, count = _HEADER.unpack_from(data)
    if version != VERSION:
        raise FeedbackError(f"unsupported report version {version} (this build reads "
                            f"{VERSION})")
    if flags & ~KEYED_FLAG:
        raise FeedbackError(f"unknown report flags {flags:#04x}")
    if keyed and not flags & KEYED_FLAG:
        raise FeedbackError("report carries no tag, and a key is required")
    if not keyed and flags & KEYED_FLAG:
        raise FeedbackError("keyed report, and no key to check it")
    if count > MAX_IMAGES:
        raise FeedbackError(f"report lists {count} images, at most {MAX_IMAGES}")
    size = MIN_SIZE + count * ENTRY_SIZE + (TAG_SIZE if keyed else 0)
    if len(data) != size:
        raise FeedbackError(f"report length {len(data)} does not match its {count} images "
                            f"(need {size})")
    return int(count)


def is_feedback(data: bytes | bytearray | memoryview) -> bool:
    """Whether a datagram looks like a report (magic only: cheap, parse to be sure)."""
    return isinstance(data, (bytes, bytearray, memoryview)) and bytes(data[:4]) == MAGIC


# --- the receiver side ---------------------------------------------------------------

_FORGOTTEN = 64  # image ids remembered after eviction, so a late packet cannot revive one


@dataclass
class _Image:
    """The arrival record of one image; counts are updated per packet in O(1)."""

    total: int = 0
    expected: int = 0
    received: int = 0
    runs: int = 0
    unsequenced: int = 0  # packets without a seq (version 1)
    stages: int = 0
    final: bool = False
    seen: bytearray = field(default_factory=bytearray)  # bit s: seq s arrived

    def has(self, seq: int) -> bool:
        return seq < 8 * len(self.seen) and bool(self.seen[seq >> 3] & (1 << (seq & 7)))

    def mark(self, seq: int) -> None:
        if seq >= 8 * len(self.seen):
            # grow to the highest seq seen only: memory follows what arrived, not what
            # a sender claims
            self.seen.extend(bytes((seq >> 3) + 1 - len(self.seen)))
        self.seen[seq >> 3] |= 1 << (seq & 7)

    def add(self, seq: int) -> None:
        """Count seq (once: a duplicate changes nothing)."""
        if self.has(seq):
            return
        if seq >= self.expected:
            # seqs expected..seq-1 become a new run of losses (expected-1 arrived)
            self.runs += seq > self.expected
            self.expected = seq + 1
        else:
            # seq filled a hole: it splits its run, shortens it, or removes it
            left = seq > 0 and not self.has(seq - 1)
            right = seq + 1 < self.expected and not self.has(seq + 1)
            self.runs += 1 if left and right else -1 if not (left or right) else 0
        self.mark(seq)
        self.received += 1

    def stats(self, image_id: int) -> ImageStats:
        received = self.received if self.expected else min(self.unsequenced, MAX_U16)
        return ImageStats(image_id, self.total, self.expected, received, self.runs,
                          self.stages, self.final)


def _valid(seq: int | None, total: int | None) -> bool:
    """Whether (seq, total) can come from an honest sender (None: a version-1 packet)."""
    if seq is None:
        return True
    t = 0 if total is None else total
    if not isinstance(seq, int) or not isinstance(t, int):
        return False
    # seq < 0xFFFF even when total is unknown: expected = seq + 1 must fit its u16
    return 0 <= seq < MAX_U16 and 0 <= t <= MAX_U16 and (t == 0 or seq < t)


def _check_interval(interval: float) -> None:
    if (isinstance(interval, bool) or not isinstance(interval, (int, float))
            or not interval >= 0 or math.isinf(interval)):
        raise InputError(f"interval must be a finite number >= 0, got {interval!r}")


class LossMonitor:
    """Counts what one sender's packets say about the path, and paces reports to it.

    ``interval``: the shortest time between two reports while something changes (a
    release makes one due at once). ``max_images``: images tracked; beyond it the oldest
    (first seen) is forgotten, for good. ``last_active``: the clock of the last packet or
    release (None before any), for a caller that retires idle senders.
    """

    def __init__(self, interval: float = 0.1, max_images: int = MAX_IMAGES) -> None:
        _check_interval(interval)
        _check_int("max_images", max_images, 1, MAX_IMAGES)
        self.interval = float(interval)
        self.max_images = max_images
        self._images: OrderedDict[int, _Image] = OrderedDict()  # first seen first
        self._forgotten: deque[int] = deque(maxlen=_FORGOTTEN)
        self._seq = 0
        self._bytes = 0
        self._since: float | None = None  # start of the interval of the next report
        self._changed = False
        self._released = False
        self.last_active: float | None = None

    def observe(self, image_id: int, seq: int | None, total: int | None, size: int,
                now: float) -> None:
        """One accepted data packet (``seq``/``total`` None for a version-1 packet).

        Its bytes count toward the receive rate whatever it says; a duplicate, or a
        packet whose fields contradict the image's, changes nothing else.
        """
        self._touch(now)
        if isinstance(size, int) and size > 0:
            self._bytes += size
        self._changed = True
        # checked before the image is looked up: a lie must not evict a real image
        image = self._image(image_id) if _valid(seq, total) else None
        if image is None:
            return
        if seq is None:
            image.unsequenced += 1
            return
        announced = 0 if total is None else total
        if image.expected and announced != image.total:
            return  # the image's packets disagree on its size: trust the first ones
        if not image.expected:
            image.total = announced
        image.add(seq)

    def stages_complete(self, image_id: int, n: int) -> None:
        """The receiver can now decode ``n`` stages of the image."""
        image = self._images.get(image_id)
        if image is None or not isinstance(n, int):
            return
        stages = min(max(n, 0), MAX_U8)
        if image.stages != stages:
            image.stages = stages
            self._changed = True

    def release(self, image_id: int, now: float) -> None:
        """The image went to the decoder incomplete (its deadline passed): it is final,
        and a report is due now. (An image also becomes final when a packet of a newer
        one from the same sender arrives.)"""
        image = self._images.get(image_id)
        if image is None:
            return
        self._touch(now)
        image.final = True
        self._changed = self._released = True

    def due(self, now: float) -> bool:
        """Whether a report should go out now (see the class docstring)."""
        if self._released:
            return True
        return (self._changed and self._since is not None
                and now >= self._since + self.interval)  # the sum next_due returns

    def next_due(self) -> float | None:
        """When :meth:`due` turns true (on the caller's clock; past if it already is), or
        None while nothing waits to be reported: for the caller's timer."""
        if self._since is None or not self._changed:
            return None
        return self._since if self._released else self._since + self.interval

    def report(self, now: float) -> Report:
        """The report for now: the newest images first; starts the next interval."""
        since = now if self._since is None else self._since
        interval_ms = min(max(round((now - since) * 1000), 0), MAX_U16)
        images = tuple(img.stats(i) for i, img in reversed(self._images.items()))
        out = Report(self._seq, interval_ms, min(self._bytes, MAX_U32), images)
        self._seq = (self._seq + 1) & MAX_U32
        self._bytes = 0
        self._since = now
        self._changed = self._released = False
        return out

    @property
    def tracked(self) -> int:
        """Images tracked now (never more than ``max_images``)."""
        return len(self._images)

    def _touch(self, now: float) -> None:
        self.last_active = now
        if self._since is None:
            self._since = now

    def _image(self, image_id: int) -> _Image | None:
        image = self._images.get(image_id)
        if image is not None:
            return image
        if (not isinstance(image_id, int) or not 0 <= image_id <= MAX_U32
                or image_id in self._forgotten):
            return None
        # The sender moved on to a new image: what it has not delivered of the earlier
        # ones by now was lost (their ends, after the last packet that came, included).
        for earlier in self._images.values():
            earlier.final = True
        image = self._images[image_id] = _Image()
        while len(self._images) > self.max_images:
            gone, _ = self._images.popitem(last=False)
            self._forgotten.append(gone)
        return image


class FeedbackHub:
    """One :class:`LossMonitor` per sender (``peer``, e.g. ``"host:port"``), at most
    ``max_peers`` of them: the least recently active is forgotten first."""

    def __init__(self, interval: float = 0.1, max_peers: int = 256) -> None:
        _check_interval(interval)
        _check_int("max_peers", max_peers, 1, 1 << 20)
        self.interval = float(interval)
        self.max_peers = max_peers
        self._monitors: OrderedDict[str, LossMonitor] = OrderedDict()

    def observe(self, peer: str, image_id: int, seq: int | None, total: int | None,
                size: int, now: float) -> None:
        """One accepted data packet from ``peer`` (see :meth:`LossMonitor.observe`)."""
        monitor = self._monitors.get(peer)
        if monitor is None:
            monitor = self._monitors[peer] = LossMonitor(self.interval)
            while len(self._monitors) > self.max_peers:
                self._monitors.popitem(last=False)
        self._monitors.move_to_end(peer)
        monitor.observe(image_id, seq, total, size, now)

    def stages_complete(self, peer: str, image_id: int, n: int) -> None:
        monitor = self._monitors.get(peer)
        if monitor is not None:
            monitor.stages_complete(image_id, n)

    def release(self, peer: str, image_id: int, now: float) -> None:
        monitor = self._monitors.get(peer)
        if monitor is not None:
            self._monitors.move_to_end(peer)
            monitor.release(image_id, now)

    def due_reports(self, now: float, key: PacketKey | None = None) -> list[tuple[str, bytes]]:
        """(peer, encoded report) for every sender whose report is due now."""
        return [(peer, m.report(now).encode(key))
                for peer, m in self._monitors.items() if m.due(now)]

    def next_due(self) -> float | None:
        """The earliest :meth:`LossMonitor.next_due` over the senders, None for none."""
        times = [t for t in (m.next_due() for m in self._monitors.values()) if t is not None]
        return min(times, default=None)

    def monitor(self, peer: str) -> LossMonitor | None:
        """The monitor of ``peer``, if it is tracked."""
        return self._monitors.get(peer)

    def __len__(self) -> int:
        return len(self._monitors)
