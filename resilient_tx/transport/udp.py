"""UDP transport: one datagram per packet over asyncio datagram endpoints.

The sender connects a UDP socket to ``HOST:PORT`` and sends each packet as one
datagram, paced (see :mod:`.base`) and respecting the transport's write buffer (it waits
on ``pause_writing``/``resume_writing`` instead of growing the buffer without bound).
Errors reported by the network for a sent datagram (ICMP port unreachable and the like)
are counted and otherwise ignored: UDP delivery is best effort and losses are erasures.

The receiver binds ``HOST:PORT`` and accepts datagrams from any number of senders at
once, reporting each one's ``host:port``. It never dies on a datagram: empty or
oversized ones are counted in :attr:`~.base.QueuedReceiver.stats` and dropped.

Back channel (see :mod:`.base`). The receiver remembers the source address of the
``reply_peers`` most recent senders whose datagrams it accepted, and
:meth:`UdpReceiver.reply` sends a message there as one datagram from the listening
socket, so it leaves from the port the sender sent to and passes the same NATs and
firewalls in reverse. The sender's connected socket only accepts datagrams from its
target address (the kernel filters the rest), and every one of them, within
``max_packet``, is a feedback message. A source address can be spoofed; answering one
costs a single small datagram, and whom to answer and how often is the caller's choice.
A reply is refused rather than queued while the socket's write buffer is above its
high-water mark (asyncio paused writing), so a stalled socket cannot grow memory.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from resilient_tx.errors import TransportError
from resilient_tx.transport.base import (
    Address,
    PacketSender,
    QueuedReceiver,
    TransportConfig,
    as_address,
    check_positive_int,
    format_peer,
)

logger = logging.getLogger(__name__)

DEFAULT_SOCKET_BUFFER = 4 * 1024 * 1024
DEFAULT_REPLY_PEERS = 4096


@dataclass(frozen=True)
class UdpConfig(TransportConfig):
    """:class:`~.base.TransportConfig` plus the socket buffer size to request (bytes)
    and how many recent senders a receiver can reply to (``reply_peers``).

    The kernel caps the buffer (``net.core.rmem_max`` / ``wmem_max`` on Linux); a large
    receive buffer absorbs bursts while the receiving process is busy decoding.
    """

    socket_buffer: int = DEFAULT_SOCKET_BUFFER
    reply_peers: int = DEFAULT_REPLY_PEERS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("socket_buffer", self.socket_buffer)
        check_positive_int("reply_peers", self.reply_peers)


DEFAULT_UDP_CONFIG = UdpConfig()


def _grow_buffer(transport: asyncio.BaseTransport, option: int, size: int) -> None:
    sock = transport.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, option, size)
    except OSError as exc:  # capped or refused: the default buffer still works
        logger.debug("could not set socket buffer to %d bytes: %s", size, exc)


class _SenderProtocol(asyncio.DatagramProtocol):
    """Tracks writability, counts network errors and passes on feedback datagrams."""

    def __init__(self, on_feedback: Callable[[bytes], object]) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.errors = 0
        self._on_feedback = on_feedback

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The socket is connected: the kernel only lets the target's datagrams through.
        self._on_feedback(data)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        logger.debug("UDP send error (ignored, counted as loss): %s", exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # wake a paused sender so it sees the closed transport


class UdpSender(PacketSender):
    """Sends each packet as one datagram to ``target`` (``HOST[:PORT]`` or a pair)."""

    def __init__(self, target: str | Address, config: UdpConfig = DEFAULT_UDP_CONFIG) -> None:
        super().__init__(config)
        self.target = as_address(target)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _SenderProtocol(self._feedback_received)
        self._socket_buffer = config.socket_buffer

    @property
    def errors(self) -> int:
        """Network errors reported for sent datagrams (e.g. nobody listening)."""
        return self._protocol.errors

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self._protocol, remote_addr=self.target)
        except OSError as exc:
            raise TransportError(f"cannot open UDP socket to {format_peer(self.target)}: "
                                 f"{exc}") from exc
        _grow_buffer(transport, socket.SO_SNDBUF, self._socket_buffer)
        self._transport = transport

    async def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def _send_one(self, packet: bytes) -> None:
        await self._protocol.writable.wait()
        if self._transport is None or self._transport.is_closing():
            raise TransportError("UDP sender is closed")
        self._transport.sendto(packet)


class _ReceiverProtocol(asyncio.DatagramProtocol):
    """Feeds every datagram to the receiver and tracks whether replies may be written;
    never raises."""

    def __init__(self, receiver: UdpReceiver) -> None:
        self._receiver = receiver
        self.writable = True

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._receiver._accept(data, addr)

    def error_received(self, exc: Exception) -> None:
        logger.debug("UDP receive error (ignored): %s", exc)


class UdpReceiver(QueuedReceiver):
    """Binds ``listen`` (``HOST[:PORT]``; port 0 picks a free one, see :attr:`address`)."""

    def __init__(self, listen: str | Address, config: UdpConfig = DEFAULT_UDP_CONFIG) -> None:
        super().__init__(config)
        self.listen = as_address(listen, allow_port_zero=True)
        self._transport: asyncio.DatagramTransport | None = None
        self._protocol = _ReceiverProtocol(self)
        self._socket_buffer = config.socket_buffer
        self._reply_peers = config.reply_peers
        # peer string -> raw socket address, least recently heard from first
        self._peers: OrderedDict[str, tuple[Any, ...]] = OrderedDict()

    def _accept(self, data: bytes, addr: tuple[Any, ...]) -> bool:
        """Queue one datagram from ``addr`` and remember ``addr`` for :meth:`reply`.

        Only accepted datagrams refresh the peer table: a peer string reaches the caller
        (who alone decides whom to answer) only with a packet it was given.
        """
        peer = format_peer(addr)
        if not self.deliver(data, peer):
            return False
        self._peers[peer] = addr
        self._peers.move_to_end(peer)
        if len(self._peers) > self._reply_peers:
            self._peers.popitem(last=False)
        return True

    def _reply(self, peer: str, data: bytes) -> bool:
        addr = self._peers.get(peer)
        transport = self._transport
        if addr is None or transport is None or transport.is_closing():
            return False
        if not self._protocol.writable:  # buffer above its high-water mark: refuse
            return False
        try:
            transport.sendto(data, addr)
        except (OSError, ValueError, TypeError) as exc:  # best effort: report, never raise
            logger.debug("UDP reply to %s failed: %s", peer, exc)
            return False
        return True

    @property
    def address(self) -> Address:
        """The bound ``(host, port)``; only valid once open."""
        if self._transport is None:
            raise TransportError("UdpReceiver is not open")
        host, port = self._transport.get_extra_info("sockname")[:2]
        return host, port

    async def _open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: self._protocol, local_addr=self.listen)
        except OSError as exc:
            raise TransportError(f"cannot bind UDP {format_peer(self.listen)}: {exc}") \
                from exc
        _grow_buffer(transport, socket.SO_RCVBUF, self._socket_buffer)
        self._transport = transport

    async def _close(self) -> None:
        self._peers.clear()
        if self._transport is not None:
            self._transport.close()
