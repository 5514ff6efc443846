"""The UDP transport (resilient_tx.transport.udp) over loopback: delivery, pacing, garbage,
refusals and feedback to each datagram's source. Real-socket tests are marked ``network``."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter

import pytest

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError
from resilient_tx.transport import (
    UdpConfig,
    format_peer,
    open_receiver,
    open_sender,
)
from tests.helpers import (
    LOOPBACK,
    collect,
    payloads,
    random_packets,
    run_bounded,
    settle,
)


@pytest.mark.network
def test_udp_loopback_delivers_all_packets() -> None:
    packets = random_packets(200, seed=3)

    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("udp", LOOPBACK) as receiver:
            async with open_sender("udp", receiver.address) as sender:
                stats = await sender.send(packets)
                assert stats.packets == 200
                return await collect(receiver, 200)

    got = run_bounded(main())
    assert payloads(got) == Counter(packets)
    assert len({peer for _, peer in got}) == 1


@pytest.mark.network
def test_udp_two_senders_at_once() -> None:
    first, second = random_packets(100, seed=4), random_packets(100, seed=5)

    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("udp", LOOPBACK) as receiver:
            async with open_sender("udp", receiver.address) as a, \
                    open_sender("udp", receiver.address, pace_mbit=100) as b:
                await asyncio.gather(a.send(first), b.send(second))
                return await collect(receiver, 200)

    got = run_bounded(main())
    assert payloads(got) == Counter(first + second)
    by_peer = {peer: Counter() for _, peer in got}
    for data, peer in got:
        by_peer[peer][data] += 1
    assert sorted(by_peer.values(), key=len) == sorted([Counter(first), Counter(second)],
                                                       key=len)


@pytest.mark.network
def test_udp_receiver_survives_garbage() -> None:
    async def main() -> None:
        async with open_receiver("udp", LOOPBACK) as receiver:
            raw = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                for junk in (b"", b"\xff" * 1201, b"\x00" * 60000, b"not-a-packet"):
                    raw.sendto(junk, receiver.address)
            finally:
                raw.close()
            assert (await collect(receiver, 1))[0][0] == b"not-a-packet"
            async with open_sender("udp", receiver.address) as sender:
                await sender.send([b"still alive"])
                assert (await collect(receiver, 1))[0][0] == b"still alive"
            assert receiver.stats.rejected == 3

    run_bounded(main())


@pytest.mark.network
def test_udp_pacing_takes_at_least_the_expected_time() -> None:
    packets = [bytes(1000)] * 250  # 2 Mbit at 8 Mbit/s = 0.25 s

    async def main() -> tuple[float, int]:
        async with open_receiver("udp", LOOPBACK) as receiver:
            async with open_sender("udp", receiver.address, pace_mbit=8.0) as sender:
                start = time.monotonic()
                await sender.send(packets)
                elapsed = time.monotonic() - start
            return elapsed, len(await settle(receiver))

    elapsed, arrived = run_bounded(main())
    assert elapsed >= 0.2  # lower bound only; loaded CI machines are slow, never fast
    assert arrived == len(packets)


@pytest.mark.network
def test_udp_send_to_nobody_is_not_an_error() -> None:
    async def main() -> None:
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        async with open_sender("udp", f"127.0.0.1:{port}", socket_buffer=65536) as sender:
            for _ in range(3):
                await sender.send([b"into the void"])
                await asyncio.sleep(0.01)
            assert sender.errors >= 1  # ICMP port unreachable, counted, not raised

    run_bounded(main())
    with pytest.raises(InputError):
        UdpConfig(socket_buffer=0)
    with pytest.raises(InputError, match="pair"):
        open_sender("udp", ("127.0.0.1", "80"))


@pytest.mark.network
def test_udp_feedback_round_trip() -> None:
    async def main() -> None:
        async with open_receiver("udp", LOOPBACK) as receiver:
            async with open_sender("udp", receiver.address) as sender:
                await sender.send([b"data"])
                _, peer = (await collect(receiver, 1))[0]
                assert receiver.reply(peer, b"report") is True
                assert await sender.wait_feedback(5) == [b"report"]
                for bad_peer, bad in (("127.0.0.1:9", b"x"), (peer, b""),
                                      (peer, b"x" * (DEFAULT_MAX_PACKET + 1))):
                    assert receiver.reply(bad_peer, bad) is False
                assert (receiver.replies_sent, receiver.replies_failed) == (1, 3)
        assert receiver.reply(peer, b"late") is False

    run_bounded(main())


async def _recv_raw(sock: socket.socket, timeout: float = 2.0) -> bytes | None:
    """One datagram on a non-blocking socket, or None if none comes in ``timeout`` s."""
    try:
        return await asyncio.wait_for(asyncio.get_running_loop().sock_recv(sock, 2048),
                                      timeout)
    except asyncio.TimeoutError:
        return None


def _raw_udp() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


@pytest.mark.network
def test_udp_reply_peers_are_bounded() -> None:
    async def main() -> None:
        socks = [_raw_udp() for _ in range(4)]
        try:
            async with open_receiver("udp", LOOPBACK, reply_peers=2) as receiver:
                for sock in socks[:3]:
                    sock.sendto(b"hello", receiver.address)
                    await collect(receiver, 1)  # in order: the first is the oldest
                socks[3].sendto(b"", receiver.address)  # rejected: must not evict anyone
                peers = [format_peer(s.getsockname()) for s in socks]
                await asyncio.sleep(0.05)
                assert [receiver.reply(p, b"ack") for p in peers] == [False, True, True,
                                                                      False]
                assert [await _recv_raw(s) for s in socks[1:3]] == [b"ack", b"ack"]
                assert await _recv_raw(socks[0], 0.1) is None
        finally:
            for sock in socks:
                sock.close()

    run_bounded(main())
    with pytest.raises(InputError, match="reply_peers"):
        UdpConfig(reply_peers=0)


@pytest.mark.network
def test_udp_sender_ignores_bad_feedback() -> None:
    async def main() -> None:
        fake_receiver = _raw_udp()
        try:
            async with open_sender("udp", fake_receiver.getsockname()) as sender:
                await sender.send([b"data"])
                loop = asyncio.get_running_loop()
                _, addr = await asyncio.wait_for(loop.sock_recvfrom(fake_receiver, 2048), 2)
                for message in (b"", b"x" * (DEFAULT_MAX_PACKET + 1), b"good"):
                    fake_receiver.sendto(message, addr)
                assert await sender.wait_feedback(2) == [b"good"]
                await asyncio.sleep(0.05)
                assert sender.take_feedback() == [] and sender.feedback_rejected == 2
        finally:
            fake_receiver.close()

    run_bounded(main())
