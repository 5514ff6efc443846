"""Packet authentication: shared keys, tags, and the replay window.

A sender and a receiver that share a secret (``--key-file``) sign and check every packet.
The secret is never used directly: :class:`PacketKey` derives the packet key from it with
HMAC-SHA256 under a fixed label, so a key file can later serve other purposes without
its uses being confused. A keyed packet (flag bit 3, see :mod:`.packet`) ends with a
trailer: the sender's random 8-byte id, a sequence number and the first 16 bytes of
HMAC-SHA256(packet key, everything before the tag). A 128-bit tag leaves a forger one
chance in 2**128 per try, which no flood approaches.

The sequence number is the sender's wall clock in microseconds, forced to grow by at
least one per packet. The receiver's :class:`ReplayWindow` keeps, per sender id, the
sequence numbers seen recently and refuses a repeat, one older than everything it still
remembers, or one further than ``max_age`` seconds from its own clock. The last rule is
what stops a capture from an earlier transmission even after the receiver restarts and
forgets everything, at the price of needing the two clocks within ``max_age`` of each
other.

:class:`Verifier` checks the cheap things first (framing, tag) so a keyed receiver
spends one HMAC per forged datagram and nothing more. Like the rest of this package it
is sans-IO except for reading the key file, and takes its clock as a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from resilient_tx.errors import AuthenticationError, InputError, PacketError
from resilient_tx.resilience.packet import (
    MAGIC,
    MAX_U64,
    MIN_HEADER_SIZE,
    SENDER_ID_SIZE,
    TAG_SIZE,
    TRAILER_SIZE,
    Packet,
    Trailer,
    is_keyed,
)

MIN_KEY_BYTES = 16  # below 128 bits a key file is refused as guessable
_PACKET_KEY_LABEL = b"resilient-tx packet key v1"


@dataclass(frozen=True)
class PacketKey:
    """The packet-signing key derived from a shared secret (the secret is not kept)."""

    key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> PacketKey:
        if len(secret) < MIN_KEY_BYTES:
            raise InputError(f"key must be at least {MIN_KEY_BYTES} bytes, got {len(secret)}")
        return cls(hmac.new(secret, _PACKET_KEY_LABEL, hashlib.sha256).digest())

    def tag(self, body: bytes) -> bytes:
        """The truncated tag of ``body`` (a keyed datagram up to its tag)."""
        return hmac.new(self.key, body, hashlib.sha256).digest()[:TAG_SIZE]


def load_key(path: str | Path, warn: Callable[[str], None] | None = None) -> PacketKey:
    """The packet key from a key file; InputError (one line) for an unusable file.

    A file that group or others may read is still used, with a warning through ``warn``:
    refusing it would break setups where that exposure is intended.
    """
    p = Path(path)
    try:
        secret = p.read_bytes()
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise InputError(f"key file {p} does not exist") from None
    except OSError as exc:
        raise InputError(f"cannot read key file {p}: {exc.strerror or exc}") from None
    if not secret:
        raise InputError(f"key file {p} is empty")
    if len(secret) < MIN_KEY_BYTES:
        raise InputError(f"key file {p} holds {len(secret)} bytes; a key needs at least "
                         f"{MIN_KEY_BYTES} (e.g. head -c 32 /dev/urandom > {p.name})")
    if warn is not None and os.name == "posix" and mode & (stat.S_IRWXG | stat.S_IRWXO):
        warn(f"key file {p} is readable by group or others (chmod 600 {p})")
    return PacketKey.from_secret(secret)


class Signer:
    """Signs the packets of one sender: one random sender id, growing sequence numbers."""

    def __init__(self, key: PacketKey, sender_id: bytes | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.sender_id = os.urandom(SENDER_ID_SIZE) if sender_id is None else sender_id
        self._clock = clock
        self._last = -1

    def next_seq(self) -> int:
        self._last = min(MAX_U64, max(int(self._clock() * 1e6), self._last + 1))
        return self._last

    def sign(self, packet: Packet) -> bytes:
        """The keyed datagram of ``packet``."""
        unsigned = replace(packet, trailer=Trailer(self.sender_id, self.next_seq()))
        body = bytes(unsigned)[:-TAG_SIZE]
        return body + self.key.tag(body)


@dataclass
class _Seen:
    """Sequence numbers recently accepted from one sender, oldest first."""

    order: deque[int] = field(default_factory=deque)
    members: set[int] = field(default_factory=set)
    floor: int = -1  # everything at or below was forgotten: refused


@dataclass
class ReplayWindow:
    """Refuses repeated or outdated sequence numbers, per sender id, in bounded memory.

    ``max_age``: seconds a sequence number (a sender timestamp) may differ from ``now``.
    ``depth``: sequence numbers remembered per sender; a packet reordered behind that
    many later ones is refused. ``max_senders``: sender ids tracked; forgetting one
    raises the floor every untracked sender must clear, so eviction never reopens a gap.
    """

    max_age: float = 60.0
    depth: int = 1024
    max_senders: int = 256
    _senders: OrderedDict[bytes, _Seen] = field(default_factory=OrderedDict)
    _floor: int = -1

    def check(self, trailer: Trailer, now: float) -> None:
        """Raise AuthenticationError("replay") unless ``trailer`` is fresh; then remember it."""
        seq = trailer.seq
        if abs(seq / 1e6 - now) > self.max_age:
            raise AuthenticationError("replay", "sequence number outside the replay window "
                                      "(an old capture, or clocks too far apart)")
        seen = self._senders.get(trailer.sender_id)
        floor = self._floor if seen is None else max(seen.floor, self._floor)
        if seq <= floor or (seen is not None and seq in seen.members):
            raise AuthenticationError("replay", "replayed packet")
        if seen is None:
            seen = self._senders[trailer.sender_id] = _Seen()
            self._evict_senders()
        self._senders.move_to_end(trailer.sender_id)
        seen.order.append(seq)
        seen.members.add(seq)
        if len(seen.order) > self.depth:
            old = seen.order.popleft()
            seen.members.discard(old)
            seen.floor = max(seen.floor, old)

    def _evict_senders(self) -> None:
        while len(self._senders) > self.max_senders:
            _, gone = self._senders.popitem(last=False)
            self._floor = max([self._floor, *gone.order])


class Verifier:
    """Checks keyed datagrams: tag first, then the packet, then the replay window."""

    def __init__(self, key: PacketKey, window: ReplayWindow | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.window = ReplayWindow() if window is None else window
        self._clock = clock

    def open(self, data: bytes) -> Packet:
        """The authenticated packet in ``data``; raise :class:`PacketError` otherwise
        (:class:`AuthenticationError` with its ``reason`` for the authentication ones)."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PacketError(f"not a packet (got {type(data).__name__}, expected bytes)")
        data = bytes(data)
        if len(data) < MIN_HEADER_SIZE or not data.startswith(MAGIC):
            raise PacketError("not a packet (bad magic or truncated)")
        if not is_keyed(data):
            raise AuthenticationError("unauthenticated", "packet carries no tag")
        if len(data) < MIN_HEADER_SIZE + TRAILER_SIZE:
            raise AuthenticationError("bad_tag", "truncated tag")
        if not hmac.compare_digest(self.key.tag(data[:-TAG_SIZE]), data[-TAG_SIZE:]):
            raise AuthenticationError("bad_tag", "tag mismatch (forged, or another key)")
        packet = Packet.parse(data)  # authentic, so a malformed one is a sender bug
        assert packet.trailer is not None  # is_keyed and parse agree on the flag
        self.window.check(packet.trailer, self._clock())
        return packet
