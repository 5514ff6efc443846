"""Receiver bookkeeping: which packets belong to which image, and when an image is due.

Packets are grouped per sender, image id and model id; an image is due when every stage
can be completed, or when ``deadline`` seconds have passed since its last packet (a
sender that vanished mid-image). How many stages "every" is depends on the model, so the
collector asks ``stage_count`` (the receiver knows its models); an image of a model it
does not know can never be complete and is released by its deadline, for the receiver to
report. Like aiortc's jitter buffer this is a pure state machine: the caller passes the
clock in, and nothing here touches a socket.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from resilient_tx.config import ReceiverConfig
from resilient_tx.errors import ResilientTxError
from resilient_tx.resilience.packet import Packet
from resilient_tx.resilience.reassembly import ImageAssembler


@dataclass
class _Entry:
    asm: ImageAssembler
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class DueImage:
    """An image ready to decode: its packets so far and when its first packet came."""

    key: tuple[Hashable, int, bytes]  # (sender, image id, model id)
    assembler: ImageAssembler
    first_seen: float
    complete: bool  # False: released by the deadline, with packets missing


StageCount = Callable[[bytes], int | None]  # model id -> quincunx stages; None: unknown


@dataclass
class Collector:
    """Groups packets into images; ``stage_count`` gives each model's quincunx stages."""

    stage_count: StageCount
    deadline: float = ReceiverConfig.deadline
    max_open: int = 64  # bound on images held at once: a flood cannot exhaust memory
    # A CRC-valid header may still announce a 65535 x 65535 image; decoding that would take
    # minutes and gigabytes, so larger images are refused (8192 x 8192 by default).
    max_pixels: int = 1 << 26
    _open: dict[tuple[Hashable, int, bytes], _Entry] = field(default_factory=dict)
    _done: dict[tuple[Hashable, int, bytes], float] = field(default_factory=dict)
    rejected: int = 0  # datagrams that were not valid packets
    _evicted: list[DueImage] = field(default_factory=list)

    def feed(self, datagram: bytes, sender: Hashable, now: float) -> DueImage | None:
        """Take one datagram; returns the image if this packet completed it."""
        try:
            p = Packet.parse(datagram)
        except ResilientTxError:
            self.rejected += 1
            return None
        if p.width * p.height > self.max_pixels:
            self.rejected += 1
            return None
        key = (sender, p.image_id, p.model_id)
        if key in self._done:
            return None  # a late or duplicate packet of an image already written
        entry = self._open.get(key)
        if entry is None:
            self._evict_if_full()
            entry = self._open[key] = _Entry(ImageAssembler(p), now, now)
        else:
            entry.asm.add(p)
            entry.last_seen = now
        stages = self.stage_count(p.model_id)
        if stages is not None and entry.asm.is_complete(stages):
            return self._release(key, complete=True)
        return None

    def expired(self, now: float) -> list[DueImage]:
        """Images whose last packet is older than the deadline (and any evicted early)."""
        late = [k for k, e in self._open.items() if now - e.last_seen >= self.deadline]
        out, self._evicted = self._evicted, []
        return out + [self._release(k, complete=False) for k in late]

    def next_deadline(self) -> float | None:
        """When the next open image will expire (for the caller's timer)."""
        if not self._open:
            return None
        return min(e.last_seen for e in self._open.values()) + self.deadline

    def flush(self) -> list[DueImage]:
        """Release every open image (shutdown)."""
        return [self._release(k, complete=False) for k in list(self._open)]

    def _release(self, key: tuple[Hashable, int, bytes], complete: bool) -> DueImage:
        entry = self._open.pop(key)
        self._done[key] = entry.last_seen
        if len(self._done) > 4 * self.max_open:  # forget the oldest finished images
            for old in sorted(self._done, key=self._done.__getitem__)[: self.max_open]:
                del self._done[old]
        return DueImage(key, entry.asm, entry.first_seen, complete)

    def _evict_if_full(self) -> None:
        if len(self._open) >= self.max_open:
            oldest = min(self._open, key=lambda k: self._open[k].last_seen)
            self._evicted.append(self._release(oldest, complete=False))
