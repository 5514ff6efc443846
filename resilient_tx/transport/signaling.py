"""WebRTC signalling: how a sender and a receiver swap their session descriptions.

Modelled on aiortc's ``contrib/signaling.py``: a :class:`Signaling` channel to one peer
can ``connect``, ``send`` and ``receive`` offer/answer messages, and ``close``. The
WebRTC transport depends only on this interface, so another exchange (a web server, a
message queue) can replace the TCP one below without touching it.

The implementation used by ``resilient-tx`` is :class:`TcpSignaling`: one TCP connection
per sender, carrying one line of UTF-8 JSON each way, newline-terminated::

    sender   -> {"rtx": 1, "type": "offer",  "sdp": "<SDP offer with all candidates>"}
    receiver -> {"rtx": 1, "type": "answer", "sdp": "<SDP answer with all candidates>"}

ICE gathering completes before each description is sent, so no trickle messages follow.
The connection then stays open as the session's lifeline (:meth:`Signaling.wait_closed`):
when the sender closes it, the receiver ends that session. :class:`TcpSignalingServer`
accepts any number of senders on the receiver's ``HOST:PORT`` and runs one session
handler per connection. A malformed line or one over :data:`MAX_SIGNAL_LINE` bytes is a
:class:`~resilient_tx.errors.TransportError` for that session only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from resilient_tx.errors import TransportError
from resilient_tx.transport.base import Address, format_peer

logger = logging.getLogger(__name__)

SIGNAL_VERSION = 1  # the "rtx" field: a receiver refuses messages of another version
MAX_SIGNAL_LINE = 64 * 1024  # an SDP with host candidates is a few KB; refuse floods

DescriptionType = Literal["offer", "answer"]


@dataclass(frozen=True)
class SessionDescription:
    """An SDP offer or answer, independent of aiortc's class of the same role."""

    type: DescriptionType
    sdp: str


def encode_message(description: SessionDescription) -> bytes:
    """The wire form of one message: a JSON line with ``rtx``, ``type``, ``sdp`` in order."""
    message = {"rtx": SIGNAL_VERSION, "type": description.type, "sdp": description.sdp}
    return json.dumps(message).encode() + b"\n"


def decode_message(line: bytes) -> SessionDescription:
    """Parse one received line; :class:`TransportError` for anything but a valid message."""
    try:
        message = json.loads(line)
    except ValueError as exc:
        raise TransportError(f"signalling message is not JSON: {exc}") from exc
    if (not isinstance(message, dict) or message.get("rtx") != SIGNAL_VERSION
            or message.get("type") not in ("offer", "answer")
            or not isinstance(message.get("sdp"), str)):
        raise TransportError(f"expected a version-{SIGNAL_VERSION} signalling offer or "
                             f"answer, got {line[:80]!r}")
    return SessionDescription(message["type"], message["sdp"])


class Signaling(ABC):
    """A signalling channel to one peer (aiortc's ``BaseSignaling``, offers/answers only)."""

    @property
    @abstractmethod
    def peer(self) -> str:
        """A name for the other end (``host:port`` for TCP) that tells senders apart."""

    @abstractmethod
    async def connect(self) -> None:
        """Open the channel (idempotent)."""

    @abstractmethod
    async def send(self, description: SessionDescription) -> None:
        """Send one offer or answer."""

    @abstractmethod
    async def receive(self) -> SessionDescription | None:
        """The next offer or answer; None once the peer has hung up."""

    @abstractmethod
    async def wait_closed(self) -> None:
        """Return when the peer hangs up; anything it sends meanwhile is ignored."""

    @abstractmethod
    async def close(self) -> None:
        """Hang up (idempotent)."""

    async def expect(self, kind: DescriptionType) -> str:
        """Receive a message that must be of type ``kind``; return its SDP."""
        description = await self.receive()
        if description is None:
            raise TransportError(f"signalling connection closed before the {kind}")
        if description.type != kind:
            raise TransportError(f"expected a signalling {kind}, got an {description.type}")
        return description.sdp


class TcpSignaling(Signaling):
    """JSON lines over one TCP connection (module docstring).

    A sender builds it with the receiver's ``(host, port)``; the receiver gets one per
    accepted connection from :class:`TcpSignalingServer`.
    """

    def __init__(self, target: Address | None = None) -> None:
        self.target = target
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._closed = False

    @classmethod
    def accepted(cls, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter) -> TcpSignaling:
        """The channel of a connection a server accepted (already connected)."""
        channel = cls()
        channel._reader, channel._writer = reader, writer
        return channel

    @property
    def peer(self) -> str:
        """``host:port`` of the other end (empty before connecting)."""
        if self._writer is None:
            return ""
        return format_peer(self._writer.get_extra_info("peername"))

    async def connect(self) -> None:
        await self._streams()

    async def _streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._closed:
            raise TransportError("signalling channel is closed")
        if self._reader is None or self._writer is None:
            if self.target is None:
                raise TransportError("signalling channel has no peer to connect to")
            self._reader, self._writer = await asyncio.open_connection(
                *self.target, limit=MAX_SIGNAL_LINE)
        return self._reader, self._writer

    async def send(self, description: SessionDescription) -> None:
        _, writer = await self._streams()
        writer.write(encode_message(description))
        await writer.drain()

    async def receive(self) -> SessionDescription | None:
        reader, _ = await self._streams()
        try:
            line = await reader.readline()
        except ValueError as exc:  # asyncio.LimitOverrunError: line over MAX_SIGNAL_LINE
            raise TransportError(f"signalling line longer than {MAX_SIGNAL_LINE} bytes") \
                from exc
        if not line:
            return None
        if not line.endswith(b"\n"):
            raise TransportError("signalling connection closed in the middle of a message")
        return decode_message(line)

    async def wait_closed(self) -> None:
        if self._reader is None:
            return
        with contextlib.suppress(OSError):
            while await self._reader.read(4096):
                pass  # version 1 sends nothing after the offer; ignore whatever comes

    async def close(self) -> None:
        self._closed = True
        writer, self._writer, self._reader = self._writer, None, None
        if writer is None:
            return
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


SessionHandler = Callable[[Signaling], Awaitable[None]]


class TcpSignalingServer:
    """Accepts signalling connections on ``listen`` and runs ``handler`` for each.

    The handler owns its session; the channel is closed when the handler returns or
    raises (an exception is logged: a bad peer never stops the server).
    """

    def __init__(self, listen: Address, handler: SessionHandler) -> None:
        self.listen = listen
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> Address:
        """The bound ``(host, port)``; only valid once started."""
        if self._server is None or not self._server.sockets:
            raise TransportError("signalling server is not listening")
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    @property
    def sessions(self) -> int:
        """Connections whose handler is still running."""
        return len(self._sessions)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._accept, *self.listen, limit=MAX_SIGNAL_LINE)
        except OSError as exc:
            raise TransportError(f"cannot listen on TCP {format_peer(self.listen)}: {exc}") \
                from exc

    async def close(self) -> None:
        """Stop accepting, cancel the running sessions and wait for them to end."""
        if self._server is not None:
            self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # always true inside a connection callback
            self._sessions.add(task)
        channel = TcpSignaling.accepted(reader, writer)
        peer = channel.peer
        try:
            await self._handler(channel)
        except Exception as exc:  # noqa: BLE001 - a bad peer must never stop the server
            logger.warning("WebRTC session with %s ended: %s", peer, exc)
        finally:
            await channel.close()
            if task is not None:
                self._sessions.discard(task)
