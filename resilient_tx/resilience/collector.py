"""Receiver bookkeeping: which packets belong to which image, and when an image is due.

Packets are grouped per sender, image id and model id, so packets that reuse an image id
from another address never mix with (or replace) the real image; an image is due when
every stage can be completed, or when ``deadline`` seconds have passed since its last
packet (a sender that vanished mid-image). How many stages "every" is depends on the
model, so the collector asks ``stage_count`` (the receiver knows its models); an image of
a model it does not know can never be complete and is released by its deadline, for the
receiver to report. Like aiortc's jitter buffer this is a pure state machine: the caller
passes the clock in, and nothing here touches a socket.

Admission comes before any allocation: with a :class:`~.auth.Verifier` an unsigned,
forged or replayed datagram is dropped after one HMAC; without one, a datagram that
already came byte for byte from another address is dropped as a copy (a captured stream
replayed from many source ports would otherwise make the receiver decode the same image
once per port -- a legitimate sender never sends the same bytes from two addresses, its
image ids being random); a header the model cannot have
produced (more chunks than its stage has tokens, more shards than a Reed-Solomon
codeword holds, a stage past the last) is dropped before an assembler exists; and caps
on pixels, images in flight (per sender and in all) and bytes buffered (per image and in
all) bound memory. When a cap is reached the sender holding the most gives way first,
so one flooding sender cannot push out the others. Every drop is counted by reason in
:class:`Drops`.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from resilient_tx.config import ReceiverConfig
from resilient_tx.errors import AuthenticationError, ResilientTxError
from resilient_tx.resilience.auth import Verifier
from resilient_tx.resilience.fec import MAX_CODEWORD
from resilient_tx.resilience.feedback import FeedbackHub
from resilient_tx.resilience.packet import MAX_NAME_BYTES, Packet
from resilient_tx.resilience.reassembly import ImageAssembler

Key = tuple[Hashable, int, bytes]  # (sender, image id, model id)
MAX_META_COPIES = 4  # copies of an image's metadata packet a sender may send (we send 2)

# Said once, the first time a reason is counted: these point at a misconfiguration.
NOTICES = {
    "unauthenticated": "dropping packets without a tag: is the sender missing --key-file?",
    "unexpected_tag": "dropping signed packets: the sender uses --key-file and this "
                      "receiver has no key (give it the same --key-file)",
    "bad_tag": "dropping packets whose tag does not verify: forged, or signed with "
               "another key",
    "copy_from_elsewhere": "dropping packets that already came from another address: a "
                           "replayed capture? (--key-file stops replays for good)",
}
MAX_DIGESTS = 1 << 16  # datagrams remembered for the copy check (about 6 MB)


@dataclass
class Drops:
    """Datagrams and images dropped, by reason; ``notices`` holds the messages of
    :data:`NOTICES` not yet shown (the caller shows and clears them)."""

    counts: dict[str, int] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)

    def add(self, reason: str, n: int = 1) -> None:
        if reason not in self.counts and reason in NOTICES:
            self.notices.append(NOTICES[reason])
        self.counts[reason] = self.counts.get(reason, 0) + n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    def summary(self) -> str:
        """``3 bad_tag, 1 replay`` (or ``none``)."""
        return ", ".join(f"{n} {r}" for r, n in self.snapshot().items()) or "none"


@dataclass
class _Entry:
    asm: ImageAssembler
    first_seen: float
    last_seen: float
    previewed: bool = False


@dataclass(frozen=True)
class DueImage:
    """An image ready to decode: its packets so far and when its first packet came."""

    key: Key
    assembler: ImageAssembler
    first_seen: float
    complete: bool  # False: released by the deadline, with packets missing
    preview: bool = False  # a snapshot once the first stages arrived; the image stays open
    decode_stages: int | None = None  # a preview decodes its first stages only


StageCount = Callable[[bytes], int | None]  # model id -> quincunx stages; None: unknown
# (model id, width, height) -> tokens in each stage; None: unknown model
StageTokens = Callable[[bytes, int, int], tuple[int, ...] | None]


@dataclass
class Collector:
    """Groups packets into images; ``stage_count`` gives each model's quincunx stages.

    ``stage_tokens``, when given, lets headers be checked against the stage sizes;
    ``verifier``, when given, makes the collector accept signed packets only. With
    ``preview_stages`` = P > 0, ``feed`` also returns, once per image, a *preview*: a
    snapshot of the image as soon as its first P stages can be completed while later
    ones are still missing (the image itself stays open for the rest).
    """

    stage_count: StageCount
    deadline: float = ReceiverConfig.deadline
    max_open: int = ReceiverConfig.max_open
    max_pixels: int = ReceiverConfig.max_pixels
    max_open_per_sender: int = ReceiverConfig.max_open_per_sender
    max_image_bytes: int = ReceiverConfig.max_image_bytes
    max_buffered_bytes: int = ReceiverConfig.max_buffered_bytes
    stage_tokens: StageTokens | None = None
    verifier: Verifier | None = None
    preview_stages: int = 0
    feedback: FeedbackHub | None = None  # told of every admitted packet and release
    drops: Drops = field(default_factory=Drops)
    _open: dict[Key, _Entry] = field(default_factory=dict)
    _done: dict[Key, float] = field(default_factory=dict)
    _evicted: list[DueImage] = field(default_factory=list)
    _tokens: dict[tuple[bytes, int, int], tuple[int, ...] | None] = field(default_factory=dict)
    _origin: OrderedDict[bytes, Hashable] = field(default_factory=OrderedDict)
    buffered: int = 0  # bytes held by open images

    @classmethod
    def from_config(cls, cfg: ReceiverConfig, stage_count: StageCount, *,
                    stage_tokens: StageTokens | None = None,
                    verifier: Verifier | None = None) -> Collector:
        return cls(stage_count, cfg.deadline, cfg.max_open, cfg.max_pixels,
                   cfg.max_open_per_sender, cfg.max_image_bytes, cfg.max_buffered_bytes,
                   stage_tokens, verifier, cfg.preview_stages if cfg.progressive else 0)

    @property
    def rejected(self) -> int:
        """Datagrams dropped so far, whatever the reason."""
        return self.drops.total

    def feed(self, datagram: bytes, sender: Hashable, now: float) -> DueImage | None:
        """Take one datagram; returns the image if this packet completed it."""
        # Checked first: a replayed copy costs one hash, not a parse or a tag check.
        digest = hashlib.blake2b(datagram, digest_size=12).digest()
        origin = self._origin.get(digest)
        if origin is not None:
            if self.verifier is not None:
                # A byte copy of a signed packet already accepted carries its sequence
                # number: the replay window would refuse it, after a costlier HMAC.
                self._drop("replay")
                return None
            if origin != sender:
                self._drop("copy_from_elsewhere")
                return None
        p = self._admit(datagram)
        if p is None:
            return None
        self._remember(digest, sender)
        key = (sender, p.image_id, p.model_id)
        if key in self._done:
            self._observe(sender, p, now)  # late packets still tell how lossy the path is
            return None  # a late or duplicate packet of an image already released
        entry = self._open.get(key)
        if entry is None:
            if not self._make_room(sender, p.size):
                self._drop("over_cap")
                return None
            entry = self._open[key] = _Entry(ImageAssembler(p), now, now)
            self.buffered += entry.asm.bytes_received
        else:
            if entry.asm.bytes_received + p.size > self.max_image_bytes or not self._fits(p):
                self._drop("over_cap")
                return None
            before = entry.asm.bytes_received
            entry.asm.add(p)
            self.buffered += entry.asm.bytes_received - before
            entry.last_seen = now
        self._observe(sender, p, now)
        stages = self.stage_count(p.model_id)
        if stages is None:
            return None
        done = entry.asm.stages_complete(stages)
        if self.feedback is not None:
            self.feedback.stages_complete(str(sender), p.image_id, done)
        if done == stages:
            return self._release(key, complete=True, now=now)
        if 0 < self.preview_stages <= done and not entry.previewed:
            entry.previewed = True
            return DueImage(key, entry.asm.snapshot(), entry.first_seen, False,
                            preview=True, decode_stages=self.preview_stages)
        return None

    def expired(self, now: float) -> list[DueImage]:
        """Images whose last packet is older than the deadline (and any evicted early)."""
        # The same sum as next_deadline, so expired(next_deadline()) always releases.
        late = [k for k, e in self._open.items() if now >= e.last_seen + self.deadline]
        out, self._evicted = self._evicted, []
        return out + [self._release(k, complete=False, now=now) for k in late]

    def next_deadline(self) -> float | None:
        """When the next open image will expire (for the caller's timer)."""
        if not self._open:
            return None
        return min(e.last_seen for e in self._open.values()) + self.deadline

    def flush(self) -> list[DueImage]:
        """Release every open image (shutdown)."""
        return [self._release(k, complete=False) for k in list(self._open)]

    # --- admission ------------------------------------------------------------------

    def _drop(self, reason: str) -> None:
        self.drops.add(reason)

    def _admit(self, datagram: bytes) -> Packet | None:
        """The packet, if it passes authentication and the header checks; else None."""
        try:
            if self.verifier is not None:
                p = self.verifier.open(datagram)
            else:
                p = Packet.parse(datagram)
                if p.trailer is not None:
                    raise AuthenticationError("unexpected_tag", "signed packet, no key")
        except AuthenticationError as exc:
            self._drop(exc.reason)
            return None
        except ResilientTxError:
            self._drop("malformed")
            return None
        if p.width * p.height > self.max_pixels:
            self._drop("over_cap")
            return None
        if not self._possible(p):
            self._drop("impossible_header")
            return None
        return p

    def _remember(self, digest: bytes, sender: Hashable) -> None:
        """Note the first sender of an admitted datagram (module docstring); the last
        :data:`MAX_DIGESTS` are remembered."""
        if digest in self._origin:
            self._origin.move_to_end(digest)
            return
        self._origin[digest] = sender
        if len(self._origin) > MAX_DIGESTS:
            self._origin.popitem(last=False)

    def _possible(self, p: Packet) -> bool:
        """Whether the model could have made this header (checked before any allocation,
        so a header announcing 65535 chunks costs nothing)."""
        if p.n > MAX_CODEWORD:
            return False
        if p.is_meta:  # the file name: two copies of one short payload
            return p.k == 1 and p.n <= MAX_META_COPIES and len(p.payload) <= MAX_NAME_BYTES
        stages = self.stage_count(p.model_id)
        if stages is not None and p.stage > stages:
            return False
        tokens = self._stage_tokens(p)
        # An empty stage still travels as one (empty) chunk.
        return tokens is None or p.k <= max(1, tokens[p.stage - 1])

    def _stage_tokens(self, p: Packet) -> tuple[int, ...] | None:
        if self.stage_tokens is None:
            return None
        key = (p.model_id, p.width, p.height)
        if key not in self._tokens:
            if len(self._tokens) >= 4 * self.max_open:
                self._tokens.clear()  # a cache: forgetting costs one recomputation
            self._tokens[key] = self.stage_tokens(*key)
        tokens = self._tokens[key]
        return tokens if tokens is None or p.stage <= len(tokens) else ()

    # --- caps -----------------------------------------------------------------------

    def _fits(self, p: Packet) -> bool:
        return self.buffered + p.size <= self.max_buffered_bytes

    def _make_room(self, sender: Hashable, size: int) -> bool:
        """Evict (release early) so a new image of ``sender`` fits every cap; False if
        even that cannot make it fit."""
        if size > self.max_image_bytes:
            return False
        mine = [k for k in self._open if k[0] == sender]
        if len(mine) >= self.max_open_per_sender:
            self._evict(min(mine, key=lambda k: self._open[k].last_seen))
        while self._open and (len(self._open) >= self.max_open
                              or self.buffered + size > self.max_buffered_bytes):
            self._evict(self._victim())
        return self.buffered + size <= self.max_buffered_bytes

    def _victim(self) -> Key:
        """The oldest image of the sender holding the most images: one sender flooding
        ids from one address pays for its own flood before anyone else does."""
        held: dict[Hashable, int] = {}
        for k in self._open:
            held[k[0]] = held.get(k[0], 0) + 1
        heaviest = max(held.values())
        return min((k for k in self._open if held[k[0]] == heaviest),
                   key=lambda k: self._open[k].last_seen)

    def _evict(self, key: Key) -> None:
        self._evicted.append(self._release(key, complete=False))

    def _observe(self, sender: Hashable, p: Packet, now: float) -> None:
        if self.feedback is not None:
            self.feedback.observe(str(sender), p.image_id, p.seq, p.total, p.size, now)

    def _release(self, key: Key, complete: bool, now: float | None = None) -> DueImage:
        entry = self._open.pop(key)
        if self.feedback is not None and not complete:
            # A complete image goes out while its last packets may still be on the way:
            # it is final for the feedback only once its sender moves on (feedback.py).
            self.feedback.release(str(key[0]), key[1],
                                  entry.last_seen if now is None else now)
        self.buffered -= entry.asm.bytes_received
        self._done[key] = entry.last_seen
        if len(self._done) > 4 * self.max_open:  # forget the oldest finished images
            for old in sorted(self._done, key=self._done.__getitem__)[: self.max_open]:
                del self._done[old]
        return DueImage(key, entry.asm, entry.first_seen, complete)
