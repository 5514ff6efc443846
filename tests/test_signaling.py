"""WebRTC signalling (resilient_tx.transport.signaling): wire format and the TCP exchange."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import TypeVar

import pytest

from resilient_tx.errors import TransportError
from resilient_tx.transport.signaling import (
    MAX_SIGNAL_LINE,
    SessionDescription,
    Signaling,
    TcpSignaling,
    TcpSignalingServer,
    decode_message,
    encode_message,
)

T = TypeVar("T")
LOOPBACK = ("127.0.0.1", 0)


def run(coro: Awaitable[T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def test_wire_format_is_one_json_line_in_a_fixed_key_order() -> None:
    line = encode_message(SessionDescription("offer", "v=0\r\n"))
    assert line == b'{"rtx": 1, "type": "offer", "sdp": "v=0\\r\\n"}\n'
    assert decode_message(line) == SessionDescription("offer", "v=0\r\n")
    answer = b'{"sdp": "x", "type": "answer", "rtx": 1}\n'  # any key order is read
    assert decode_message(answer) == SessionDescription("answer", "x")


@pytest.mark.parametrize("line", [
    b"this is not json\n",
    b'["offer"]\n',
    b'{"rtx": 2, "type": "offer", "sdp": "x"}\n',
    b'{"rtx": 1, "type": "candidate", "sdp": "x"}\n',
    b'{"rtx": 1, "type": "offer", "sdp": 5}\n',
    b'{"type": "offer", "sdp": "x"}\n',
])
def test_malformed_messages_are_transport_errors(line: bytes) -> None:
    with pytest.raises(TransportError, match="signalling"):
        decode_message(line)


async def _answering(channel: Signaling) -> None:
    """A receiver-side session: answer the offer, then hold until the peer hangs up."""
    offer = await channel.expect("offer")
    await channel.send(SessionDescription("answer", f"answer to {offer}"))
    await channel.wait_closed()


@pytest.mark.network
def test_tcp_offer_answer_and_hang_up() -> None:
    async def main() -> None:
        server = TcpSignalingServer(LOOPBACK, _answering)
        await server.start()
        try:
            client = TcpSignaling(server.address)
            await client.connect()
            await client.send(SessionDescription("offer", "sdp-1"))
            assert await client.expect("answer") == "answer to sdp-1"
            assert server.sessions == 1  # the connection is the session's lifeline
            await client.close()
            for _ in range(100):
                if server.sessions == 0:
                    break
                await asyncio.sleep(0.01)
            assert server.sessions == 0
            with pytest.raises(TransportError, match="closed"):
                await client.send(SessionDescription("offer", "again"))
        finally:
            await server.close()

    run(main())


@pytest.mark.network
def test_bad_peers_end_their_own_session_only() -> None:
    async def main() -> None:
        server = TcpSignalingServer(LOOPBACK, _answering)
        await server.start()
        try:
            for junk in (b"not json\n", b"x" * (MAX_SIGNAL_LINE + 10) + b"\n",
                         json.dumps({"rtx": 1, "type": "answer", "sdp": ""}).encode() + b"\n"):
                reader, writer = await asyncio.open_connection(*server.address)
                writer.write(junk)
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped
                writer.close()
            client = TcpSignaling(server.address)
            await client.send(SessionDescription("offer", "fine"))
            assert await client.expect("answer") == "answer to fine"
            await client.close()
        finally:
            await server.close()

    run(main())


@pytest.mark.network
def test_receive_is_none_after_hang_up_and_expect_says_what_was_missing() -> None:
    async def hang_up(channel: Signaling) -> None:
        return None

    async def main() -> None:
        server = TcpSignalingServer(LOOPBACK, hang_up)
        await server.start()
        try:
            client = TcpSignaling(server.address)
            assert await client.receive() is None
            with pytest.raises(TransportError, match="closed before the answer"):
                await TcpSignaling(server.address).expect("answer")
        finally:
            await server.close()

    run(main())


@pytest.mark.network
def test_closing_the_server_ends_running_sessions() -> None:
    async def main() -> None:
        server = TcpSignalingServer(LOOPBACK, _answering)
        await server.start()
        client = TcpSignaling(server.address)
        await client.send(SessionDescription("offer", "o"))
        await client.expect("answer")
        await server.close()
        assert server.sessions == 0
        assert await client.receive() is None  # the server hung up on us
        await client.close()

    run(main())


def test_unconnectable_channels_say_so() -> None:
    async def main() -> None:
        with pytest.raises(TransportError, match="no peer"):
            await TcpSignaling().connect()
        with pytest.raises(TransportError, match="not listening"):
            TcpSignalingServer(LOOPBACK, _answering).address  # noqa: B018

    run(main())
