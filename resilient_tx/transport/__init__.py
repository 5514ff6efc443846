"""Packet transports: UDP, WebRTC data channels, and in-memory for tests.

All of them implement the narrow interface of :mod:`.base`::

    async with open_receiver("udp", "0.0.0.0:5004") as receiver:
        async for packet, peer in receiver:
            ...

    async with open_sender("udp", "host:5004", pace_mbit=20) as sender:
        stats = await sender.send(packets)

``open_sender`` / ``open_receiver`` build an endpoint without opening it; it opens on
``async with``, on ``await``, or on first use. Keyword options are the fields of the
kind's config (:class:`TransportConfig`, :class:`UdpConfig`, ``WebRTCConfig``); the
memory sender also takes ``loss=``, ``feedback_loss=`` (:class:`LossPattern`) and
``peer=``. The WebRTC modules (and aiortc) are imported only when first needed.

Every transport also carries small messages back, receiver to sender (the back channel
of :mod:`.base`)::

    receiver.reply(peer, report)                # best effort: True if handed over
    reports = await sender.wait_feedback(0.1)   # or sender.take_feedback()

A transport never looks inside a packet: the largest message it accepts is its config's
``max_packet``, and :func:`max_message_size` tells a sender how large its packets may be
for a kind of transport to carry each one whole.
"""

from __future__ import annotations

import importlib
from dataclasses import fields
from types import ModuleType
from typing import Any

from resilient_tx.errors import InputError
from resilient_tx.extras import require
from resilient_tx.transport.base import (
    DEFAULT_CONFIG,
    DEFAULT_PORT,
    Address,
    Pacer,
    PacketReceiver,
    PacketSender,
    QueuedReceiver,
    ReceiveStats,
    SendStats,
    TransportConfig,
    format_peer,
    parse_hostport,
)
from resilient_tx.transport.memory import LossPattern, MemoryReceiver, MemorySender, memory_pair
from resilient_tx.transport.udp import UdpConfig, UdpReceiver, UdpSender

KINDS = ("udp", "webrtc", "memory")
_LAZY_WEBRTC = ("WebRTCConfig", "WebRTCReceiver", "WebRTCSender")

__all__ = [
    "DEFAULT_PORT", "KINDS", "Address", "LossPattern", "MemoryReceiver", "MemorySender",
    "PacketReceiver", "PacketSender", "Pacer", "QueuedReceiver", "ReceiveStats",
    "SendStats", "TransportConfig", "UdpConfig", "UdpReceiver", "UdpSender",
    "WebRTCConfig", "WebRTCReceiver", "WebRTCSender", "format_peer", "max_message_size",
    "memory_pair", "open_receiver", "open_sender", "parse_hostport",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY_WEBRTC:
        return getattr(_webrtc(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _webrtc() -> ModuleType:
    """The WebRTC transport module; aiortc is an optional dependency (extra ``webrtc``)."""
    require("aiortc", "webrtc", "the WebRTC transport")
    return importlib.import_module("resilient_tx.transport.webrtc")


def open_sender(kind: str, target: Any, **opts: Any) -> PacketSender:
    """A sender of ``kind`` to ``target`` (``HOST[:PORT]``, a pair, or for ``memory`` a
    receiver or its name); ``await`` it or use ``async with`` to open it."""
    if kind == "udp":
        return UdpSender(target, _config(UdpConfig, kind, opts))
    if kind == "webrtc":
        rtc = _webrtc()
        return rtc.WebRTCSender(target, _config(rtc.WebRTCConfig, kind, opts))
    if kind == "memory":
        loss, peer = opts.pop("loss", None), opts.pop("peer", None)
        feedback_loss = opts.pop("feedback_loss", None)
        return MemorySender(target, _config(TransportConfig, kind, opts), loss=loss, peer=peer,
                            feedback_loss=feedback_loss)
    raise InputError(f"unknown transport {kind!r}; available: {', '.join(KINDS)}")


def open_receiver(kind: str, listen: Any, **opts: Any) -> PacketReceiver:
    """A receiver of ``kind`` on ``listen`` (``HOST[:PORT]``, a pair, or for ``memory`` a
    name or None); ``await`` it or use ``async with`` to open it."""
    if kind == "udp":
        return UdpReceiver(listen, _config(UdpConfig, kind, opts))
    if kind == "webrtc":
        rtc = _webrtc()
        return rtc.WebRTCReceiver(listen, _config(rtc.WebRTCConfig, kind, opts))
    if kind == "memory":
        return MemoryReceiver(listen, _config(TransportConfig, kind, opts))
    raise InputError(f"unknown transport {kind!r}; available: {', '.join(KINDS)}")


def max_message_size(kind: str) -> int:
    """The largest packet a ``kind`` transport carries as one message by default.

    For WebRTC that is also at most one SCTP chunk: aiortc splits larger messages, and
    losing either part would lose the whole packet.
    """
    if kind == "webrtc":
        return min(DEFAULT_CONFIG.max_packet, int(_webrtc().SCTP_CHUNK_PAYLOAD))
    if kind in KINDS:
        return DEFAULT_CONFIG.max_packet
    raise InputError(f"unknown transport {kind!r}; available: {', '.join(KINDS)}")


def _config(cls: type[TransportConfig], kind: str, opts: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(opts) - known)
    if unknown:
        raise InputError(f"unknown option(s) {', '.join(unknown)} for the {kind} transport; "
                         f"known: {', '.join(sorted(known))}")
    return cls(**opts)
