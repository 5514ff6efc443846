"""The transport layer's shared parts (resilient_tx.transport): addresses, configs, the
factory, and the back channel every transport offers."""

from __future__ import annotations

import asyncio
import math
import time

import pytest

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, ResilientTxError, TransportError
from resilient_tx.transport import (
    MemoryReceiver,
    TransportConfig,
    max_message_size,
    memory_pair,
    open_receiver,
    open_sender,
    parse_hostport,
)
from tests.helpers import (
    LOOPBACK,
    run_bounded,
)


@pytest.mark.parametrize(("text", "expected"), [
    ("example.org", ("example.org", 5004)),
    ("example.org:6000", ("example.org", 6000)),
    ("10.0.0.1:1", ("10.0.0.1", 1)),
    (" 127.0.0.1:65535 ", ("127.0.0.1", 65535)),
    ("[::1]:7000", ("::1", 7000)),
    ("[::1]", ("::1", 5004)),
    ("fe80::1", ("fe80::1", 5004)),
])
def test_parse_hostport_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize("text", [
    "", "   ", ":5004", "host:", "host:http", "host:-1", "host:65536", "host:0",
    "[::1", "[::1]x", "[not-v6]:80", "1:2:3", "[]:80",
])
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(InputError, match="HOST|port|IPV6|host"):
        parse_hostport(text)


def test_parse_hostport_default_and_zero_port() -> None:
    assert parse_hostport("h", default_port=9) == ("h", 9)
    assert parse_hostport("0.0.0.0:0", allow_port_zero=True) == ("0.0.0.0", 0)
    with pytest.raises(InputError):
        parse_hostport(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("pace", [0, -1.0, math.nan, math.inf, True, "8"])
def test_bad_pace_is_input_error(pace: object) -> None:
    with pytest.raises(InputError, match="pace_mbit"):
        TransportConfig(pace_mbit=pace)  # type: ignore[arg-type]


def test_factory_rejects_unknown_kind_and_option() -> None:
    with pytest.raises(InputError, match="unknown transport"):
        open_sender("carrier-pigeon", "h:1")
    with pytest.raises(InputError, match="unknown transport"):
        open_receiver("tcp", "h:1")
    with pytest.raises(InputError, match="bogus"):
        open_sender("udp", "h:1", bogus=1)
    with pytest.raises(InputError):
        open_sender("udp", "h:99999")
    assert issubclass(TransportError, ResilientTxError)


def test_max_message_size_per_kind() -> None:
    from resilient_tx.transport.webrtc import SCTP_CHUNK_PAYLOAD

    assert max_message_size("udp") == max_message_size("memory") == DEFAULT_MAX_PACKET
    assert max_message_size("webrtc") == min(DEFAULT_MAX_PACKET, SCTP_CHUNK_PAYLOAD) == 1160
    with pytest.raises(InputError, match="unknown transport"):
        max_message_size("tcp")


def test_receivers_say_how_to_reach_them() -> None:
    async def main() -> None:
        named, unnamed = MemoryReceiver("rx-addr"), MemoryReceiver()
        async with named, unnamed:
            assert named.address == "rx-addr" and unnamed.address is unnamed
            for target in (named.address, unnamed.address):
                async with open_sender("memory", target) as tx:
                    await tx.send([b"hi"])
            assert (await named.recv())[0] == (await unnamed.recv())[0] == b"hi"
        with pytest.raises(TransportError, match="not open"):
            open_receiver("udp", LOOPBACK).address  # noqa: B018 - the property raises

    run_bounded(main())


def test_configured_max_packet_is_the_limit() -> None:
    async def main() -> None:
        sender, receiver = memory_pair(config=TransportConfig(max_packet=100))
        async with receiver, sender:
            with pytest.raises(TransportError, match="101 bytes"):
                await sender.send([b"x" * 101])
            await sender.send([b"x" * 100])
            assert receiver.deliver(b"y" * 101, "raw") is False  # the receiver drops it too

    run_bounded(main())


def test_constructing_opens_nothing() -> None:
    # No loop is running here: building endpoints must not touch sockets or the loop.
    open_sender("udp", "127.0.0.1:9")
    open_receiver("udp", LOOPBACK)
    open_sender("webrtc", "127.0.0.1:9")


def test_feedback_absent_returns_nothing_promptly() -> None:
    async def main() -> None:
        sender, receiver = memory_pair()
        async with receiver, sender:
            await sender.send([b"data"])
            start = time.monotonic()
            assert await sender.wait_feedback(0.05) == []
            assert 0.04 <= time.monotonic() - start < 1.0
            assert sender.take_feedback() == [] and sender.feedback_received == 0
            assert await sender.wait_feedback(0) == []
            with pytest.raises(InputError, match="timeout"):
                await sender.wait_feedback(-1)
            waiter = asyncio.ensure_future(sender.wait_feedback(30))
            await asyncio.sleep(0.01)
        start = time.monotonic()
        assert await waiter == []  # the close woke it
        assert await sender.wait_feedback(30) == []  # closed: at once
        assert time.monotonic() - start < 1.0

    run_bounded(main())


def test_sender_feedback_queue_is_bounded() -> None:
    async def main() -> None:
        sender, receiver = memory_pair(config=TransportConfig(feedback_queue=3))
        async with receiver, sender:
            replies = [f"report-{i}".encode() for i in range(5)]
            assert all(receiver.reply(sender.peer, r) for r in replies)
            assert sender.take_feedback() == replies[2:]  # the oldest went first
            assert (sender.feedback_received, sender.feedback_overflowed) == (5, 2)
    run_bounded(main())
    with pytest.raises(InputError, match="feedback_queue"):
        TransportConfig(feedback_queue=0)
