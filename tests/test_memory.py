"""The in-memory transport (resilient_tx.transport.memory): seeded loss patterns, several
senders, refusals, pacing and its back channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from resilient_tx.errors import InputError, TransportError
from resilient_tx.transport import (
    LossPattern,
    MemoryReceiver,
    MemorySender,
    PacketReceiver,
    TransportConfig,
    memory_pair,
    open_receiver,
    open_sender,
)
from resilient_tx.transport.channel import ChannelConfig, transmit
from tests.helpers import (
    collect,
    random_packets,
    run_bounded,
)


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

    got = run_bounded(main())
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

    assert run_bounded(main()) == [p for i, p in enumerate(packets) if i not in {0, 4, 7}]


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

    got = run_bounded(main())
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

    run_bounded(main())


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

    run_bounded(main())


async def _take(receiver: PacketReceiver, n: int) -> AsyncIterator[tuple[bytes, str]]:
    for _ in range(n):
        yield await receiver.recv()


def test_pacing_lower_bound_memory() -> None:
    packets = [bytes(1000)] * 100  # 800 kbit at 8 Mbit/s: >= 0.1 s minus one burst

    async def main() -> float:
        sender, receiver = memory_pair(config=TransportConfig(pace_mbit=8.0))
        async with receiver, sender:
            return (await sender.send(packets)).seconds

    assert run_bounded(main()) >= 0.08


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

    run_bounded(main())


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

    run_bounded(main())


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
