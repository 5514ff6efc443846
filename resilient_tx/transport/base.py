"""The narrow transport interface: an async packet sender and an async packet receiver.

A transport moves opaque datagrams of at most a configured size
(:attr:`TransportConfig.max_packet`; by default the library's packet size). It promises
nothing about order, duplicates or losses: the packet layer above treats a missing
packet as an erasure. Every implementation (``memory``, ``udp``,
``webrtc``) derives from :class:`PacketSender` / :class:`PacketReceiver`, so callers and
tests swap them freely (the in-memory one plays the role of httpx's ``MockTransport``).

Lifecycle. Constructing an endpoint opens nothing; it opens on ``async with``, on
``await endpoint`` (which returns the endpoint), on ``await endpoint.open()``, or lazily
on the first ``send`` / ``recv``. ``close()`` is idempotent. A closed endpoint cannot be
reopened.

Pacing (:class:`Pacer`). ``pace_mbit`` is a payload rate in Mbit/s (10**6 bit/s) counting
message bytes only, not IP/UDP/DTLS/SCTP headers. It is a token bucket refilled at that
rate whose depth is :data:`PACING_BURST_BYTES`: a packet leaves as soon as the bucket
holds its size, otherwise the sender sleeps until it does. The small depth absorbs the
event loop's ~1 ms timer granularity (an oversleep is caught up by the next packets
instead of lowering the long-run rate) while keeping bursts to a few packets.

Back channel (receiver -> sender feedback). A receiver may answer a sender with small
opaque messages: :meth:`PacketReceiver.reply` sends one to the sender that
:meth:`~PacketReceiver.recv` named ``peer``; the sender collects them with
:meth:`PacketSender.take_feedback` or :meth:`PacketSender.wait_feedback`. The transport
never looks inside a message (the report format belongs to the layer above). Like the
forward path it is best effort and bounded:

* ``reply`` never raises: it returns False (and counts a failure) when the transport has
  no back channel, the peer is unknown or gone, the message is not non-empty bytes of at
  most ``max_packet`` bytes, or the network refuses it. True means "handed to the
  network", not "delivered".
* A sender keeps at most ``feedback_queue`` messages; when full, the oldest is dropped
  (counted in :attr:`PacketSender.feedback_overflowed`), so a sender that never reads
  feedback holds bounded memory, and one that never receives any works as before.
* Rate limiting, authentication and deciding whom to answer are the caller's business:
  a transport replies to any peer it has heard from recently.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from resilient_tx.config import DEFAULT_MAX_PACKET, DEFAULT_PORT
from resilient_tx.errors import InputError, TransportError

PACING_BURST_BYTES = 4 * DEFAULT_MAX_PACKET
DEFAULT_MAX_QUEUE = 65536  # received packets buffered before new ones are dropped
DEFAULT_FEEDBACK_QUEUE = 256  # feedback messages a sender buffers; the oldest go first

Address = tuple[str, int]
_E = TypeVar("_E", bound="Endpoint")


def parse_hostport(text: str, default_port: int = DEFAULT_PORT, *,
                   allow_port_zero: bool = False) -> Address:
    """Parse ``HOST``, ``HOST:PORT``, ``[IPV6]``, ``[IPV6]:PORT`` or a bare IPv6 address.

    Port 0 ("any free port", for a receiver bound in a test) is refused unless
    ``allow_port_zero``. Raises :class:`InputError` with the offending text otherwise.
    """
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"expected HOST[:PORT], got {text!r}")
    text = text.strip()
    host, port_text = _split_hostport(text)
    if not host:
        raise InputError(f"missing host in {text!r}; expected HOST[:PORT]")
    port = default_port if port_text is None else _parse_port(port_text, text)
    low = 0 if allow_port_zero else 1
    if not low <= port <= 65535:
        raise InputError(f"port {port} in {text!r} is out of range {low}..65535")
    return host, port


def _split_hostport(text: str) -> tuple[str, str | None]:
    """(host, port text or None); brackets are stripped from an IPv6 host."""
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1:] if close > 0 else ""
        if close < 0 or (rest and not rest.startswith(":")):
            raise InputError(f"malformed bracketed address {text!r}; expected [IPV6]:PORT")
        _check_ipv6(text[1:close], text)
        return text[1:close], (rest[1:] if rest else None)
    if text.count(":") > 1:  # a bare IPv6 address cannot carry a port
        _check_ipv6(text, text)
        return text, None
    host, sep, port = text.partition(":")
    return host, (port if sep else None)


def _check_ipv6(host: str, text: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise InputError(f"{host!r} in {text!r} is not an IPv6 address; write "
                         f"[IPV6]:PORT for IPv6, HOST:PORT otherwise") from None


def _parse_port(port_text: str, text: str) -> int:
    if not port_text.isdigit():
        raise InputError(f"port {port_text!r} in {text!r} is not a number")
    return int(port_text)


def as_address(target: str | Address, default_port: int = DEFAULT_PORT, *,
               allow_port_zero: bool = False) -> Address:
    """Accept a ``HOST[:PORT]`` string or an already-split ``(host, port)`` pair."""
    if isinstance(target, tuple) and len(target) == 2:
        host, port = target
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise InputError(f"expected a (host: str, port: int) pair, got {target!r}")
        return parse_hostport(_join(host, port), default_port,
                              allow_port_zero=allow_port_zero)
    return parse_hostport(target, default_port, allow_port_zero=allow_port_zero)


def format_peer(address: Any) -> str:
    """``host:port`` (``[v6]:port``) for a socket address; ``str(address)`` otherwise."""
    if isinstance(address, tuple) and len(address) >= 2:
        return _join(str(address[0]), int(address[1]))
    return str(address)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class TransportConfig:
    """Options every transport understands.

    ``pace_mbit``: payload rate limit of a sender in Mbit/s, ``None`` for as fast as the
    transport accepts (module docstring). ``max_packet``: the largest message a sender
    sends (larger ones are refused) and a receiver accepts (larger ones are dropped).
    ``max_queue``: packets a receiver buffers for ``recv``; beyond that it drops, as a
    full socket buffer would. ``feedback_queue``: back-channel messages a sender buffers
    until they are taken; beyond that the oldest is dropped (module docstring).
    """

    pace_mbit: float | None = None
    max_packet: int = DEFAULT_MAX_PACKET
    max_queue: int = DEFAULT_MAX_QUEUE
    feedback_queue: int = DEFAULT_FEEDBACK_QUEUE

    def __post_init__(self) -> None:
        _check_pace(self.pace_mbit)
        check_positive_int("max_packet", self.max_packet)
        check_positive_int("max_queue", self.max_queue)
        check_positive_int("feedback_queue", self.feedback_queue)


def _check_pace(pace: float | None) -> None:
    if pace is None:
        return
    if (isinstance(pace, bool) or not isinstance(pace, (int, float))
            or not math.isfinite(pace) or pace <= 0):
        raise InputError(f"pace_mbit must be a positive number of Mbit/s or None, "
                         f"got {pace!r}")


def check_positive_int(name: str, value: int) -> None:
    """Validate a count-like option: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be a positive int, got {value!r}")


def check_wait_seconds(name: str, value: float) -> None:
    """Validate a wait: a finite number >= 0 (0 polls without waiting)."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise InputError(f"{name} must be a non-negative number of seconds, got {value!r}")


def check_positive_seconds(name: str, value: float) -> None:
    """Validate a timeout-like option: a finite number > 0."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise InputError(f"{name} must be a positive number of seconds, got {value!r}")


DEFAULT_CONFIG = TransportConfig()


@dataclass(frozen=True)
class SendStats:
    """What one :meth:`PacketSender.send` call handed to the network."""

    packets: int
    bytes: int
    seconds: float

    @property
    def mbit_per_s(self) -> float:
        """Achieved payload rate (0 for an instantaneous or empty send)."""
        return self.bytes * 8 / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReceiveStats:
    """Counters of a receiver since it opened."""

    packets: int  # accepted and queued for recv()
    bytes: int
    rejected: int  # empty, oversized or non-binary messages, dropped
    overflowed: int  # dropped because max_queue packets were waiting


class Pacer:
    """Token-bucket pacing at ``mbit`` Mbit/s with a depth of ``burst_bytes`` bytes."""

    def __init__(self, mbit: float | None, burst_bytes: int = PACING_BURST_BYTES) -> None:
        _check_pace(mbit)
        self._rate = None if mbit is None else mbit * 1e6 / 8  # bytes per second
        self._burst_s = 0.0 if self._rate is None else burst_bytes / self._rate
        self._next = -math.inf  # when the bucket next holds enough for a packet

    async def wait(self, nbytes: int) -> None:
        """Sleep until a packet of ``nbytes`` may leave; return at once when unpaced."""
        if self._rate is None:
            return
        now = time.monotonic()
        start = max(self._next, now - self._burst_s)
        self._next = start + nbytes / self._rate  # reserve the slot before sleeping
        if start > now:
            await asyncio.sleep(start - now)


class Endpoint(ABC):
    """Open/close lifecycle shared by senders and receivers (module docstring)."""

    def __init__(self) -> None:
        self._opened = False
        self._closed = False
        self._lock = asyncio.Lock()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    async def open(self: _E) -> _E:
        """Open the endpoint (idempotent) and return it."""
        async with self._lock:
            if self._closed:
                raise TransportError(f"{type(self).__name__} is closed")
            if not self._opened:
                await self._open()
                self._opened = True
        return self

    async def close(self) -> None:
        """Release sockets and peers (idempotent; waits for an open in progress)."""
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            if self._opened:
                await self._close()

    @abstractmethod
    async def _open(self) -> None:
        """Acquire the transport's resources."""

    @abstractmethod
    async def _close(self) -> None:
        """Release what :meth:`_open` acquired."""

    async def __aenter__(self: _E) -> _E:
        return await self.open()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __await__(self: _E) -> Generator[Any, None, _E]:
        return self.open().__await__()


class PacketSender(Endpoint):
    """Sends datagrams, best effort: a lost packet is never an error.

    It also collects what the receiver sends back (module docstring, "Back channel"):
    a transport feeds each message to :meth:`_feedback_received`, which keeps the newest
    ``config.feedback_queue`` of them for :meth:`take_feedback` / :meth:`wait_feedback`.
    """

    def __init__(self, config: TransportConfig) -> None:
        super().__init__()
        self.config = config
        self._pacer = Pacer(config.pace_mbit)
        self._feedback: deque[bytes] = deque()
        self._feedback_arrived = asyncio.Event()
        self._feedback_counts = {"received": 0, "rejected": 0, "overflowed": 0}

    @property
    def feedback_received(self) -> int:
        """Feedback messages accepted into the queue since the sender was built."""
        return self._feedback_counts["received"]

    @property
    def feedback_rejected(self) -> int:
        """Feedback messages ignored: empty, oversized, not bytes, or after close."""
        return self._feedback_counts["rejected"]

    @property
    def feedback_overflowed(self) -> int:
        """Queued feedback messages dropped, oldest first, because the queue was full."""
        return self._feedback_counts["overflowed"]

    def take_feedback(self) -> list[bytes]:
        """Every feedback message received since the last call, oldest first."""
        taken = list(self._feedback)
        self._feedback.clear()
        return taken

    async def wait_feedback(self, timeout: float) -> list[bytes]:
        """Wait up to ``timeout`` s for feedback, then :meth:`take_feedback`.

        Returns at once when messages are already queued or the sender is closed (a close
        during the wait wakes it too), and ``[]`` when nothing came in time. It never
        opens the sender: nothing can arrive before the sender has sent.
        """
        check_wait_seconds("timeout", timeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._feedback and not self._closed:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            # Cleared only while the queue is empty, so a message that arrives from now
            # on sets it again; another waiter may have taken the messages that woke us.
            self._feedback_arrived.clear()
            try:
                await asyncio.wait_for(self._feedback_arrived.wait(), remaining)
            except asyncio.TimeoutError:
                break
        return self.take_feedback()

    def _feedback_received(self, data: object) -> bool:
        """Queue one message from the receiver (transports call this); never raises.

        False when the message was ignored: not bytes, empty, larger than ``max_packet``,
        or the sender is closed. A full queue drops its oldest message to make room,
        because the newest report describes the network best.
        """
        if (self._closed or not isinstance(data, bytes)
                or not 0 < len(data) <= self.config.max_packet):
            self._feedback_counts["rejected"] += 1
            return False
        if len(self._feedback) >= self.config.feedback_queue:
            self._feedback.popleft()
            self._feedback_counts["overflowed"] += 1
        self._feedback.append(data)
        self._feedback_counts["received"] += 1
        self._feedback_arrived.set()
        return True

    async def close(self) -> None:
        """Release the transport (idempotent) and wake every :meth:`wait_feedback`."""
        try:
            await super().close()
        finally:
            self._feedback_arrived.set()

    async def send(self, packets: Sequence[bytes]) -> SendStats:
        """Send ``packets`` in order, paced; return once all are handed to the network.

        Every packet is checked before the first leaves: a non-bytes, empty or
        oversized packet raises :class:`TransportError` and nothing is sent.
        """
        batch = self._check(packets)
        await self.open()
        start = time.monotonic()
        for packet in self._on_wire(batch):
            await self._pacer.wait(len(packet))
            await self._send_one(packet)
            await asyncio.sleep(0)  # let other tasks (a local receiver) run
        return SendStats(packets=len(batch), bytes=sum(map(len, batch)),
                         seconds=time.monotonic() - start)

    def _check(self, packets: Sequence[bytes]) -> list[bytes]:
        if self._closed:
            raise TransportError(f"{type(self).__name__} is closed")
        if isinstance(packets, (bytes, bytearray)):
            raise TransportError("send() takes a sequence of packets, not one bytes object")
        batch = [bytes(p) if isinstance(p, bytearray) else p for p in packets]
        for index, packet in enumerate(batch):
            self._check_one(index, packet)
        return batch

    def _check_one(self, index: int, packet: object) -> None:
        if not isinstance(packet, bytes):
            raise TransportError(f"packet {index} is {type(packet).__name__}, not bytes")
        if not packet:
            raise TransportError(f"packet {index} is empty")
        if len(packet) > self.config.max_packet:
            raise TransportError(
                f"packet {index} is {len(packet)} bytes; {type(self).__name__} sends at "
                f"most {self.config.max_packet} bytes per message and never fragments")

    def _on_wire(self, batch: list[bytes]) -> list[bytes]:
        """What actually goes on the wire for ``batch`` (the memory transport drops some)."""
        return batch

    @abstractmethod
    async def _send_one(self, packet: bytes) -> None:
        """Hand one checked packet to the network."""


class PacketReceiver(Endpoint):
    """Yields ``(datagram, peer)`` pairs; ``async for`` ends when the receiver closes.

    :meth:`reply` answers a peer over the back channel (module docstring); a transport
    provides one by overriding :meth:`_reply`, and the default has none.
    """

    def __init__(self, config: TransportConfig = DEFAULT_CONFIG) -> None:
        super().__init__()
        self.config = config
        self._replies = {"sent": 0, "failed": 0}

    @property
    def replies_sent(self) -> int:
        """Replies handed to the network (delivery is not confirmed)."""
        return self._replies["sent"]

    @property
    def replies_failed(self) -> int:
        """Replies refused: no back channel, unknown peer, bad message, network error."""
        return self._replies["failed"]

    def reply(self, peer: str, data: bytes) -> bool:
        """Send ``data`` back to the sender that :meth:`recv` named ``peer``; never raises.

        True once the message is handed to the network (it may still be lost); False,
        counted in :attr:`replies_failed`, when it cannot be: the receiver is not open,
        the transport has no back channel, ``peer`` is unknown or gone, ``data`` is not
        non-empty bytes of at most ``max_packet`` bytes, or the network refuses it.
        """
        ok = (self._opened and not self._closed and isinstance(peer, str)
              and isinstance(data, bytes) and 0 < len(data) <= self.config.max_packet
              and self._reply(peer, data))
        self._replies["sent" if ok else "failed"] += 1
        return ok

    def _reply(self, peer: str, data: bytes) -> bool:
        """Hand one checked reply to ``peer``; False if there is no way to. Must not raise."""
        return False

    @property
    @abstractmethod
    def address(self) -> object:
        """What a sender of the same kind is given to reach this receiver, once open:
        the bound ``(host, port)`` for the socket transports."""

    async def recv(self) -> tuple[bytes, str]:
        """The next datagram and a string naming its sender; TransportError once closed."""
        item = await self._get()
        if item is None:
            raise TransportError(f"{type(self).__name__} is closed")
        return item

    def recv_nowait(self) -> tuple[bytes, str] | None:
        """A datagram that is already waiting, or None; never blocks, never raises. Lets a
        busy reader take packets without an await each (the default has none waiting)."""
        return None

    def __aiter__(self) -> PacketReceiver:
        return self

    async def __anext__(self) -> tuple[bytes, str]:
        item = await self._get()
        if item is None:
            raise StopAsyncIteration
        return item

    @abstractmethod
    async def _get(self) -> tuple[bytes, str] | None:
        """The next datagram, or None once closed and drained."""


class QueuedReceiver(PacketReceiver):
    """A receiver whose transport pushes datagrams into a bounded queue via :meth:`deliver`.

    Packets queued before :meth:`close` can still be received; then ``recv`` raises and
    iteration stops.
    """

    def __init__(self, config: TransportConfig) -> None:
        super().__init__(config)
        self._queue: asyncio.Queue[tuple[bytes, str] | None] = asyncio.Queue()
        self._counts = {"packets": 0, "bytes": 0, "rejected": 0, "overflowed": 0}

    @property
    def stats(self) -> ReceiveStats:
        """A snapshot of the receive counters."""
        return ReceiveStats(**self._counts)

    def deliver(self, data: object, peer: str) -> bool:
        """Queue one datagram; never raises. False if it was dropped (counted in stats)."""
        if self._closed:
            return False
        if not isinstance(data, bytes) or not 0 < len(data) <= self.config.max_packet:
            self._counts["rejected"] += 1
            return False
        if self._queue.qsize() >= self.config.max_queue:
            self._counts["overflowed"] += 1
            return False
        self._queue.put_nowait((data, peer))
        self._counts["packets"] += 1
        self._counts["bytes"] += len(data)
        return True

    async def close(self) -> None:
        """Stop receiving; wake every waiting ``recv``."""
        if self._closed:
            return
        try:
            await super().close()
        finally:
            self._queue.put_nowait(None)

    def recv_nowait(self) -> tuple[bytes, str] | None:
        if self._queue.empty():
            return None
        item = self._queue.get_nowait()
        if item is None:
            self._queue.put_nowait(None)  # the end marker stays for recv to report
        return item

    async def _get(self) -> tuple[bytes, str] | None:
        if self._closed and self._queue.empty():
            return None
        if not self._closed:
            await self.open()
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # keep the end marker for the next caller
        return item
