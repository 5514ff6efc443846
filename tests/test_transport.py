"""Packet transports (resilient_tx.transport): memory, UDP and WebRTC over loopback.

Each test drives its own event loop with ``asyncio.run`` under an overall timeout, so a
broken transport fails instead of hanging. Real-socket tests are marked ``network``.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import pytest

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, ResilientTxError, TransportError
from resilient_tx.transport import (
    LossPattern,
    MemoryReceiver,
    MemorySender,
    PacketReceiver,
    TransportConfig,
    UdpConfig,
    format_peer,
    max_message_size,
    memory_pair,
    open_receiver,
    open_sender,
    parse_hostport,
)
from resilient_tx.transport.channel import ChannelConfig, transmit

T = TypeVar("T")
LOOPBACK = "127.0.0.1:0"


def run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run one test coroutine in a fresh loop, failing (not hanging) after ``timeout``."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def random_packets(count: int, seed: int = 0, low: int = 1,
                   high: int = DEFAULT_MAX_PACKET) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(rng.randint(low, high)) for _ in range(count)]


async def collect(receiver: PacketReceiver, count: int,
                  timeout: float = 5.0) -> list[tuple[bytes, str]]:
    """Exactly ``count`` datagrams, or TimeoutError if they do not all arrive."""
    return [await asyncio.wait_for(receiver.recv(), timeout) for _ in range(count)]


async def settle(receiver: PacketReceiver, quiet: float = 0.2) -> list[tuple[bytes, str]]:
    """Everything that arrives until the receiver has been silent for ``quiet`` s."""
    got = []
    while True:
        try:
            got.append(await asyncio.wait_for(receiver.recv(), quiet))
        except asyncio.TimeoutError:
            return got


def payloads(items: Sequence[tuple[bytes, str]]) -> Counter[bytes]:
    return Counter(data for data, _ in items)


# --- parse_hostport ----------------------------------------------------------------

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


# --- configs and factory -------------------------------------------------------------

@pytest.mark.parametrize("pace", [0, -1.0, math.nan, math.inf, True, "8"])
def test_bad_pace_is_input_error(pace: object) -> None:
    with pytest.raises(InputError, match="pace_mbit"):
        TransportConfig(pace_mbit=pace)  # type: ignore[arg-type]


def test_webrtc_config_limits() -> None:
    from resilient_tx.transport import WebRTCConfig
    with pytest.raises(InputError, match="1200"):
        WebRTCConfig(max_packet=1500)
    with pytest.raises(InputError, match="low_water"):
        WebRTCConfig(high_water=1000, low_water=1000)


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

    run(main())


def test_configured_max_packet_is_the_limit() -> None:
    async def main() -> None:
        sender, receiver = memory_pair(config=TransportConfig(max_packet=100))
        async with receiver, sender:
            with pytest.raises(TransportError, match="101 bytes"):
                await sender.send([b"x" * 101])
            await sender.send([b"x" * 100])
            assert receiver.deliver(b"y" * 101, "raw") is False  # the receiver drops it too

    run(main())


def test_constructing_opens_nothing() -> None:
    # No loop is running here: building endpoints must not touch sockets or the loop.
    open_sender("udp", "127.0.0.1:9")
    open_receiver("udp", LOOPBACK)
    open_sender("webrtc", "127.0.0.1:9")


# --- memory transport -----------------------------------------------------------------

def test_memory_seeded_channel_delivers_exactly_the_simulated_subset() -> None:
    packets = random_packets(300, seed=1)
    channel = ChannelConfig(loss_model="gilbert", loss_rate=0.3, burst_length=3.0,
                            duplicate_rate=0.05, reorder_rate=0.1)
    expected, stats = transmit(packets, channel, seed=7)
    assert 0 < stats.lost < len(packets)

    async def main() -> list[tuple[bytes, str]]:
        sender, receiver = memory_pair(LossPattern(channel=channel, seed=7))
        async with receiver, sender:
            sent = await sender.send(packets)
            assert (sent.packets, sent.bytes) == (300, sum(map(len, packets)))
            return await collect(receiver, len(expected))

    got = run(main())
    assert [data for data, _ in got] == expected


def test_memory_drop_indices_count_across_send_calls() -> None:
    packets = random_packets(10, seed=2)

    async def main() -> list[bytes]:
        sender, receiver = memory_pair(LossPattern(drop={0, 4, 7}))
        async with receiver, sender:
            await sender.send(packets[:5])
            await sender.send(packets[5:])
            await receiver.close()
            return [data async for data, _ in receiver]

    assert run(main()) == [p for i, p in enumerate(packets) if i not in {0, 4, 7}]


def test_memory_named_receiver_takes_several_senders() -> None:
    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("memory", "rx-1") as receiver:
            with pytest.raises(TransportError, match="in use"):
                await MemoryReceiver("rx-1")
            async with open_sender("memory", "rx-1", peer="a") as a, \
                    open_sender("memory", "rx-1", peer="b", pace_mbit=50) as b:
                await asyncio.gather(a.send([b"a1", b"a2"]), b.send([b"b1"]))
            got = await collect(receiver, 3)
        with pytest.raises(TransportError, match="no memory receiver"):
            await open_sender("memory", "rx-1")  # unregistered on close
        return got

    got = run(main())
    assert sorted(got) == [(b"a1", "a"), (b"a2", "a"), (b"b1", "b")]


def test_refused_packets_send_nothing() -> None:
    async def main() -> None:
        sender, receiver = memory_pair()
        async with receiver, sender:
            for bad in ([b"ok", b"x" * 1201], [b"ok", b""], [b"ok", "text"], b"raw"):
                with pytest.raises(TransportError):
                    await sender.send(bad)  # type: ignore[arg-type]
            await sender.send([b"x" * 1200])
            assert (await receiver.recv())[0] == b"x" * 1200
            assert receiver.stats.packets == 1
        with pytest.raises(TransportError, match="closed"):
            await sender.send([b"late"])
        with pytest.raises(TransportError, match="closed"):
            await receiver.recv()

    run(main())


def test_receiver_close_wakes_waiters_and_bounds_queue() -> None:
    async def main() -> None:
        config = TransportConfig(max_queue=3)
        receiver = await MemoryReceiver(config=config)
        sender = await MemorySender(receiver)
        await sender.send([b"1", b"2", b"3", b"4"])
        assert receiver.stats.overflowed == 1
        assert receiver.deliver(b"", "x") is False and receiver.stats.rejected == 1
        assert [d async for d, _ in _take(receiver, 3)] == [b"1", b"2", b"3"]
        waiter = asyncio.ensure_future(receiver.recv())
        await asyncio.sleep(0)
        await receiver.close()
        with pytest.raises(TransportError, match="closed"):
            await waiter

    run(main())


async def _take(receiver: PacketReceiver, n: int) -> AsyncIterator[tuple[bytes, str]]:
    for _ in range(n):
        yield await receiver.recv()


def test_pacing_lower_bound_memory() -> None:
    packets = [bytes(1000)] * 100  # 800 kbit at 8 Mbit/s: >= 0.1 s minus one burst

    async def main() -> float:
        sender, receiver = memory_pair(config=TransportConfig(pace_mbit=8.0))
        async with receiver, sender:
            return (await sender.send(packets)).seconds

    assert run(main()) >= 0.08


# --- UDP over loopback ----------------------------------------------------------------

@pytest.mark.network
def test_udp_loopback_delivers_all_packets() -> None:
    packets = random_packets(200, seed=3)

    async def main() -> list[tuple[bytes, str]]:
        async with open_receiver("udp", LOOPBACK) as receiver:
            async with open_sender("udp", receiver.address) as sender:
                stats = await sender.send(packets)
                assert stats.packets == 200
                return await collect(receiver, 200)

    got = run(main())
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

    got = run(main())
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

    run(main())


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

    elapsed, arrived = run(main())
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

    run(main())
    with pytest.raises(InputError):
        UdpConfig(socket_buffer=0)
    with pytest.raises(InputError, match="pair"):
        open_sender("udp", ("127.0.0.1", "80"))


# --- WebRTC over loopback -------------------------------------------------------------

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

    got = run(main())
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

    got = run(main(), timeout=30)
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

    run(main())


async def _until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@pytest.mark.network
def test_webrtc_sessions_end_with_either_side() -> None:
    async def main() -> None:
        receiver = await open_receiver("webrtc", LOOPBACK)
        async with receiver:
            async with open_sender("webrtc", receiver.address) as sender:
                await _until(lambda: receiver.peers == 1)
            await _until(lambda: receiver.peers == 0)  # a vanished sender is let go
            sender = await open_sender("webrtc", receiver.address, drain_timeout=1.0)
        assert receiver.peers == 0
        await _until(lambda: sender._channel.readyState != "open")  # type: ignore[union-attr]
        with pytest.raises(TransportError, match="closed"):
            await sender.send([b"nobody is listening"])
        await sender.close()

    run(main())


# --- back channel (receiver -> sender feedback) -------------------------------------------

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

    run(main())


def test_memory_feedback_round_trip_and_refusals() -> None:
    async def main() -> None:
        sender, receiver = memory_pair(config=TransportConfig(max_packet=100))
        assert receiver.reply(sender.peer, b"too early") is False  # receiver not open
        async with receiver, sender:
            await sender.send([b"data"])
            _, peer = await receiver.recv()
            waiter = asyncio.ensure_future(sender.wait_feedback(5))
            await asyncio.sleep(0)
            assert receiver.reply(peer, b"report-1") is True
            assert await waiter == [b"report-1"]
            assert receiver.reply(peer, b"report-2") and receiver.reply(peer, b"report-3")
            assert sender.take_feedback() == [b"report-2", b"report-3"]
            for bad_peer, bad in (("nobody", b"x"), (peer, b""), (peer, b"x" * 101),
                                  (peer, "text"), (peer, bytearray(b"x"))):
                assert receiver.reply(bad_peer, bad) is False  # type: ignore[arg-type]
            assert (receiver.replies_sent, receiver.replies_failed) == (3, 6)
        assert receiver.reply(peer, b"late") is False  # both closed
        assert sender.take_feedback() == []

    run(main())


def test_memory_feedback_loss_and_closed_sender() -> None:
    async def main() -> None:
        async with MemoryReceiver("rx-fb") as receiver:
            blocked = await open_sender("memory", "rx-fb", peer="blocked",
                                        feedback_loss=LossPattern(drop=frozenset(range(5))))
            lossy = await MemorySender(receiver, peer="lossy",
                                       feedback_loss=LossPattern(drop={1}))
            for reply in (b"r0", b"r1", b"r2"):
                assert receiver.reply("blocked", reply)  # handed over, then lost
                assert receiver.reply("lossy", reply)
            assert await blocked.wait_feedback(0.05) == []
            assert lossy.take_feedback() == [b"r0", b"r2"]
            channel = ChannelConfig(loss_rate=0.5)  # reply n goes through seed 3 + n
            async with MemorySender(receiver, feedback_loss=LossPattern(channel, 3)) as seeded:
                replies = random_packets(20, seed=9, high=50)
                assert all(receiver.reply(seeded.peer, r) for r in replies)
                expected = [r for n, r in enumerate(replies) if transmit([r], channel, 3 + n)[0]]
                assert seeded.take_feedback() == expected and 0 < len(expected) < 20
            await lossy.close()
            assert receiver.reply("lossy", b"gone") is False
            await blocked.close()
        with pytest.raises(InputError, match="feedback_loss"):
            MemorySender(receiver, feedback_loss=0.5)  # type: ignore[arg-type]

    run(main())


def test_sender_feedback_queue_is_bounded() -> None:
    async def main() -> None:
        sender, receiver = memory_pair(config=TransportConfig(feedback_queue=3))
        async with receiver, sender:
            replies = [f"report-{i}".encode() for i in range(5)]
            assert all(receiver.reply(sender.peer, r) for r in replies)
            assert sender.take_feedback() == replies[2:]  # the oldest went first
            assert (sender.feedback_received, sender.feedback_overflowed) == (5, 2)
    run(main())
    with pytest.raises(InputError, match="feedback_queue"):
        TransportConfig(feedback_queue=0)


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

    run(main())


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

    run(main())
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

    run(main())


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
            await _until(lambda: receiver.peers == 0)
            assert receiver.reply(peer, b"late") is False  # the session is over
            assert (receiver.replies_sent, receiver.replies_failed) == (1, 2)

    run(main())


def test_recv_nowait_takes_what_is_waiting_and_never_blocks() -> None:
    async def main() -> None:
        rx = MemoryReceiver()
        async with rx:
            assert rx.recv_nowait() is None
            rx.deliver(b"one", "p")
            rx.deliver(b"two", "p")
            assert rx.recv_nowait() == (b"one", "p")
            assert await rx.recv() == (b"two", "p")
            assert rx.recv_nowait() is None
        assert rx.recv_nowait() is None  # closed: the end marker stays for recv
        with pytest.raises(TransportError):
            await rx.recv()

    asyncio.run(main())
