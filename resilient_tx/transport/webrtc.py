"""WebRTC data-channel transport (aiortc): UDP-like delivery with DTLS and ICE.

Data channel. Each sender opens one :class:`~aiortc.RTCPeerConnection` with one data
channel created as ``ordered=False, maxRetransmits=0``: SCTP never retransmits or
reorders, so delivery is unreliable and unordered like UDP, and each packet is one
binary message of at most ``max_packet`` (<= 1200) bytes; a larger one is refused with
:class:`~resilient_tx.errors.TransportError` rather than fragmented (losing any fragment
would lose the whole message). Only host ICE candidates are used (no STUN/TURN servers).

Signalling goes through :mod:`.signaling` (a :class:`~.signaling.Signaling` channel per
sender; by default one TCP connection to the receiver's ``HOST:PORT`` carrying one JSON
line each way). ICE gathering completes before each description is sent, so no trickle
messages follow. The signalling connection stays open as the session's lifeline: when
the sender closes it (or the peer connection fails), the receiver closes that peer
connection. A malformed message or a handshake slower than ``connect_timeout`` ends
that one session only; the receiver keeps serving any number of senders.

Flow control. The sender sets ``bufferedAmountLowThreshold = low_water`` and, before
each message, pauses while ``bufferedAmount > high_water`` until the channel's
``bufferedamountlow`` event fires. ``close()`` waits (up to ``drain_timeout``) for the
channel buffer and the SCTP send queue to empty before tearing the connection down, so
a sender that sends and closes at once does not lose its tail.

Back channel (see :mod:`.base`). The data channel is bidirectional: the receiver keeps
each session's channel under the peer string it reports with that sender's packets and
:meth:`WebRTCReceiver.reply` sends a binary message on it, unreliable and unordered like
the forward direction; the sender passes every binary message it gets on its channel to
its feedback queue (text messages are ignored). A channel is forgotten when it closes or
its session ends, and a reply is refused rather than queued while the channel's
``bufferedAmount`` exceeds ``high_water``.

aiortc quirk: aiortc splits a message into several SCTP DATA chunks above
:data:`SCTP_CHUNK_PAYLOAD` bytes (1160 in aiortc 1.16, whose SCTP packets are capped at
1189 bytes), so 1161..1200-byte messages travel as two chunks. Pass
``max_packet=SCTP_CHUNK_PAYLOAD`` (and packetize to that size) to rule it out.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, TransportError
from resilient_tx.transport.base import (
    Address,
    PacketSender,
    QueuedReceiver,
    TransportConfig,
    as_address,
    check_positive_int,
    check_positive_seconds,
    format_peer,
)
from resilient_tx.transport.signaling import (
    SessionDescription,
    Signaling,
    TcpSignaling,
    TcpSignalingServer,
)

try:  # the largest message aiortc sends as a single SCTP DATA chunk
    from aiortc.rtcsctptransport import USERDATA_MAX_LENGTH as SCTP_CHUNK_PAYLOAD
except ImportError:  # pragma: no cover - older or newer aiortc layout
    SCTP_CHUNK_PAYLOAD = 1160  # aiortc 1.16's value

logger = logging.getLogger(__name__)

CHANNEL_LABEL = "resilient-tx"
_DRAIN_POLL_S = 0.01


@dataclass(frozen=True)
class WebRTCConfig(TransportConfig):
    """:class:`~.base.TransportConfig` plus WebRTC timing and flow-control knobs.

    ``connect_timeout``: seconds for signalling, ICE, DTLS and the channel to open.
    ``high_water`` / ``low_water``: bytes in ``bufferedAmount`` at which a sender pauses
    / resumes. ``drain_timeout``: seconds a sender waits for a full buffer to drain
    (then :class:`TransportError`) and, on close, for queued messages to leave.
    """

    connect_timeout: float = 15.0
    high_water: int = 256 * 1024
    low_water: int = 64 * 1024
    drain_timeout: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_packet > DEFAULT_MAX_PACKET:
            raise InputError(f"max_packet for WebRTC must be <= {DEFAULT_MAX_PACKET} bytes "
                             f"(one unfragmented message), got {self.max_packet}")
        check_positive_seconds("connect_timeout", self.connect_timeout)
        check_positive_seconds("drain_timeout", self.drain_timeout)
        check_positive_int("high_water", self.high_water)
        check_positive_int("low_water", self.low_water)
        if self.low_water >= self.high_water:
            raise InputError(f"low_water ({self.low_water}) must be below high_water "
                             f"({self.high_water})")


DEFAULT_WEBRTC_CONFIG = WebRTCConfig()


def _peer_connection() -> RTCPeerConnection:
    """A peer connection with host candidates only (no STUN: we may be offline)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


def _sctp_busy(pc: RTCPeerConnection) -> bool:
    """True while SCTP still holds unacknowledged chunks.

    aiortc exposes no public "flushed" signal; its send queue is private, so read it
    defensively (absent attribute: assume flushed).
    """
    return bool(getattr(pc.sctp, "_outbound_queue", None))


class WebRTCSender(PacketSender):
    """Connects to a :class:`WebRTCReceiver` at ``target`` and sends over a data channel.

    ``signaling`` replaces the default TCP exchange with the receiver at ``target``.
    """

    def __init__(self, target: str | Address, config: WebRTCConfig = DEFAULT_WEBRTC_CONFIG,
                 signaling: Signaling | None = None) -> None:
        super().__init__(config)
        self.target = as_address(target)
        self._rtc = config
        self._signaling = signaling if signaling is not None else TcpSignaling(self.target)
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._writable = asyncio.Event()

    async def _open(self) -> None:
        where = format_peer(self.target)
        try:
            await asyncio.wait_for(self._connect(), self._rtc.connect_timeout)
        except asyncio.TimeoutError:
            await self._teardown()
            raise TransportError(f"WebRTC connection to {where} did not open within "
                                 f"{self._rtc.connect_timeout} s") from None
        except (OSError, TransportError) as exc:
            await self._teardown()
            raise TransportError(f"WebRTC connection to {where} failed: {exc}") from exc

    async def _connect(self) -> None:
        await self._signaling.connect()
        self._pc = pc = _peer_connection()
        settled = asyncio.Event()
        self._channel = channel = self._make_channel(pc, settled)
        pc.on("connectionstatechange",
              lambda: settled.set() if pc.connectionState in ("failed", "closed") else None)
        await pc.setLocalDescription(await pc.createOffer())
        await self._signaling.send(SessionDescription("offer", pc.localDescription.sdp))
        answer = await self._signaling.expect("answer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        await settled.wait()
        if channel.readyState != "open":
            raise TransportError(f"peer connection {pc.connectionState}")

    def _make_channel(self, pc: RTCPeerConnection, opened: asyncio.Event) -> RTCDataChannel:
        channel = pc.createDataChannel(CHANNEL_LABEL, ordered=False, maxRetransmits=0)
        channel.bufferedAmountLowThreshold = self._rtc.low_water
        channel.on("open", opened.set)
        channel.on("message", self._feedback_received)  # counts and ignores str messages
        channel.on("bufferedamountlow", self._writable.set)
        channel.on("close", self._writable.set)  # wake a paused send to see the close
        return channel

    async def _send_one(self, packet: bytes) -> None:
        channel = self._channel
        if channel is not None and channel.bufferedAmount > self._rtc.high_water:
            await self._wait_writable()
        if channel is None or channel.readyState != "open":
            state = "not open" if channel is None else channel.readyState
            raise TransportError(f"WebRTC data channel to {format_peer(self.target)} "
                                 f"is {state}")
        channel.send(packet)

    async def _wait_writable(self) -> None:
        self._writable.clear()
        try:
            await asyncio.wait_for(self._writable.wait(), self._rtc.drain_timeout)
        except asyncio.TimeoutError:
            raise TransportError(f"WebRTC data channel to {format_peer(self.target)} "
                                 f"stalled for {self._rtc.drain_timeout} s") from None

    async def _close(self) -> None:
        await self._drain()
        await self._teardown()

    async def _drain(self) -> None:
        """Wait until queued messages left (bounded by ``drain_timeout``)."""
        channel, pc = self._channel, self._pc
        if channel is None or pc is None:
            return
        deadline = time.monotonic() + self._rtc.drain_timeout
        while channel.readyState == "open" and (channel.bufferedAmount or _sctp_busy(pc)):
            if time.monotonic() > deadline:
                logger.warning("closing WebRTC sender with %d bytes still buffered",
                               channel.bufferedAmount)
                return
            await asyncio.sleep(_DRAIN_POLL_S)

    async def _teardown(self) -> None:
        if self._pc is not None:
            await self._pc.close()
        await self._signaling.close()  # hanging up ends the session at the receiver


class WebRTCReceiver(QueuedReceiver):
    """Listens for senders on TCP ``listen`` (port 0: any free one, see :attr:`address`)."""

    def __init__(self, listen: str | Address, config: WebRTCConfig = DEFAULT_WEBRTC_CONFIG) -> None:
        super().__init__(config)
        self.listen = as_address(listen, allow_port_zero=True)
        self._rtc = config
        self._server = TcpSignalingServer(self.listen, self._session)
        self._channels: dict[str, RTCDataChannel] = {}  # peer -> its open session's channel

    @property
    def address(self) -> Address:
        """The bound signalling ``(host, port)``; only valid once open."""
        if not self._opened:
            raise TransportError("WebRTCReceiver is not open")
        return self._server.address

    @property
    def peers(self) -> int:
        """Senders currently connected (signalling sessions in progress or open)."""
        return self._server.sessions

    async def _open(self) -> None:
        await self._server.start()

    async def _close(self) -> None:
        await self._server.close()
        self._channels.clear()

    def _reply(self, peer: str, data: bytes) -> bool:
        channel = self._channels.get(peer)
        if channel is None or channel.readyState != "open":
            return False
        if channel.bufferedAmount > self._rtc.high_water:  # bounded: refuse, never queue
            return False
        try:
            channel.send(data)
        except Exception as exc:  # noqa: BLE001 - aiortc's errors vary; reply never raises
            logger.debug("WebRTC reply to %s failed: %s", peer, exc)
            return False
        return True

    async def _session(self, signaling: Signaling) -> None:
        """One sender's session: handshake, then hold the peer connection until it ends."""
        pc = _peer_connection()
        peer = signaling.peer
        try:
            await self._serve(signaling, pc)
        finally:
            await pc.close()
            # Closing the connection closes its channel, which normally forgets it; this
            # catches a channel that never reported it. An open one belongs to a newer
            # session that reuses the peer string, and stays.
            channel = self._channels.get(peer)
            if channel is not None and channel.readyState != "open":
                self._forget(peer, channel)

    async def _serve(self, signaling: Signaling, pc: RTCPeerConnection) -> None:
        peer = signaling.peer
        offer = await asyncio.wait_for(signaling.expect("offer"), self._rtc.connect_timeout)
        ended = asyncio.Event()
        pc.on("datachannel", lambda channel: self._attach(channel, peer))
        pc.on("connectionstatechange",
              lambda: ended.set() if pc.connectionState in ("failed", "closed") else None)
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await signaling.send(SessionDescription("answer", pc.localDescription.sdp))
        await _until_over(signaling, ended)

    def _attach(self, channel: RTCDataChannel, peer: str) -> None:
        if channel.ordered or channel.maxRetransmits != 0:
            logger.info("peer %s opened a reliable or ordered channel %r; accepting it",
                        peer, channel.label)
        channel.on("message", lambda message: self.deliver(message, peer))
        self._channels[peer] = channel
        channel.on("close", lambda: self._forget(peer, channel))

    def _forget(self, peer: str, channel: RTCDataChannel) -> None:
        if self._channels.get(peer) is channel:
            del self._channels[peer]


async def _until_over(signaling: Signaling, ended: asyncio.Event) -> None:
    """Return when the signalling peer hangs up or the peer connection ends."""
    hung_up = asyncio.ensure_future(signaling.wait_closed())
    gone = asyncio.ensure_future(ended.wait())
    try:
        await asyncio.wait({hung_up, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hung_up.cancel()
        gone.cancel()
