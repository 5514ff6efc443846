"""The WebRTC transport (resilient_tx.transport.webrtc) over loopback: data channels,
signalling, session ends and feedback. Real-socket tests are marked ``network``."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, TransportError
from resilient_tx.transport import (
    open_receiver,
    open_sender,
)
from tests.helpers import (
    LOOPBACK,
    collect,
    payloads,
    random_packets,
    run_bounded,
    until,
)


def test_webrtc_config_limits() -> None:
    from resilient_tx.transport import WebRTCConfig
    with pytest.raises(InputError, match="1200"):
        WebRTCConfig(max_packet=1500)
    with pytest.raises(InputError, match="low_water"):
        WebRTCConfig(high_water=1000, low_water=1000)


@pytest.mark.network
def test_webrtc_round_trip_and_size_limit() -> None:
    packets = random_packets(50, seed=6)

    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("webrtc", LOOPBACK) as receiver:
            async with open_sender("webrtc", receiver.address) as sender:
                with pytest.raises(TransportError, match="1201 bytes"):
                    await sender.send([b"x" * (DEFAULT_MAX_PACKET + 1)])
                await sender.send(packets)
            return await collect(receiver, 50)

    got = run_bounded(main())
    assert payloads(got) == Counter(packets)


@pytest.mark.network
def test_webrtc_two_senders_and_bad_signalling() -> None:
    first, second = random_packets(40, seed=7), random_packets(40, seed=8)

    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("webrtc", LOOPBACK, connect_timeout=5.0) as receiver:
            reader, writer = await asyncio.open_connection(*receiver.address)
            writer.write(b"this is not json\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.read(), 5) == b""  # session dropped
            writer.close()
            async with open_sender("webrtc", receiver.address) as a, \
                    open_sender("webrtc", receiver.address, pace_mbit=20) as b:
                await asyncio.gather(a.send(first), b.send(second))
            return await collect(receiver, 80)

    got = run_bounded(main(), timeout=30)
    assert payloads(got) == Counter(first + second)
    assert len({peer for _, peer in got}) == 2


@pytest.mark.network
def test_webrtc_unreachable_receiver_is_transport_error() -> None:
    async def main() -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        with pytest.raises(TransportError, match="failed"):
            await open_sender("webrtc", f"127.0.0.1:{port}", connect_timeout=5.0)

    run_bounded(main())


@pytest.mark.network
def test_webrtc_sessions_end_with_either_side() -> None:
    async def main() -> None:
        receiver = await open_receiver("webrtc", LOOPBACK)
        async with receiver:
            async with open_sender("webrtc", receiver.address) as sender:
                await until(lambda: receiver.peers == 1)
            await until(lambda: receiver.peers == 0)  # a vanished sender is let go
            sender = await open_sender("webrtc", receiver.address, drain_timeout=1.0)
        assert receiver.peers == 0
        await until(lambda: sender._channel.readyState != "open")  # type: ignore[union-attr]
        with pytest.raises(TransportError, match="closed"):
            await sender.send([b"nobody is listening"])
        await sender.close()

    run_bounded(main())


@pytest.mark.network
def test_webrtc_feedback_round_trip() -> None:
    async def main() -> None:
        async with open_receiver("webrtc", LOOPBACK) as receiver:
            async with open_sender("webrtc", receiver.address) as sender:
                await sender.send([b"data"])
                _, peer = (await collect(receiver, 1))[0]
                assert receiver.reply("127.0.0.1:9", b"x") is False
                assert receiver.reply(peer, b"report") is True
                assert await sender.wait_feedback(5) == [b"report"]
            await until(lambda: receiver.peers == 0)
            assert receiver.reply(peer, b"late") is False  # the session is over
            assert (receiver.replies_sent, receiver.replies_failed) == (1, 2)

    run_bounded(main())
