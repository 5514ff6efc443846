"""The receive loop (resilient_tx.app.session) over the in-memory transport."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from pathlib import Path
from typing import TypeVar

import pytest
import torch

from resilient_tx.app.demo import sample_path
from resilient_tx.app.session import ReceivedImage, due_images, receive_images
from resilient_tx.config import ModelConfig, SenderConfig
from resilient_tx.errors import ModelMismatchError, ResilientTxError, TransportError
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec
from resilient_tx.resilience.collector import Collector, DueImage
from resilient_tx.resilience.endpoint import Receiver, Sender
from resilient_tx.resilience.packetizer import Packetizer
from resilient_tx.transport import LossPattern, MemorySender, memory_pair
from tests.helpers import make_codec

T = TypeVar("T")
CPU = torch.device("cpu")


def run(coro: Awaitable[T], timeout: float = 60.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def _after(delay: float, action: Callable[[], Awaitable[object]]) -> None:
    await asyncio.sleep(delay)
    await action()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shipped_packets() -> list[bytes]:
    """A 64 x 96 crop at the shipped default rate (image id 7)."""
    sender = Sender(SenderConfig(), CPU)
    return [bytes(p) for p in sender.packets(load_rgb(sample_path())[:64, :96], 7).packets]


@pytest.fixture(scope="module")
def foreign_packets(tmp_path_factory) -> list[bytes]:
    """Packets of a model no receiver here has (image id 9)."""
    cfg = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                      latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)
    codec = make_codec(Path(tmp_path_factory.mktemp("foreign")), cfg)
    sent = Packetizer(codec, fec.get_profile("light"), max_packet=150).packetize(
        load_rgb(sample_path())[:64, :64], 9)
    return [bytes(p) for p in sent.packets]


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    return Receiver("neighbor", CPU)


def test_due_images_yields_complete_at_once_and_partial_at_the_deadline(
        shipped_packets: list[bytes]) -> None:
    async def main() -> list[tuple[bool, int]]:
        # Sender a is whole; sender b vanishes after its first packet.
        a, rx = memory_pair()
        b = MemorySender(rx)  # a second sender into the same receiver
        collector = Collector(lambda model_id: 5, deadline=0.2)
        async with rx, a, b:
            await b.send(shipped_packets[:1])
            await a.send(shipped_packets)
            got: list[tuple[bool, int]] = []
            async with aclosing(due_images(rx, collector)) as images:
                async for due in images:
                    got.append((due.complete, due.assembler.packets_received))
                    if len(got) == 2:
                        break
        return got

    got = run(main())
    assert got[0][0] and not got[1][0] and got[1][1] == 1


def test_due_images_ends_when_the_transport_closes() -> None:
    async def main() -> None:
        _, rx = memory_pair()
        await rx.open()
        images = due_images(rx, Collector(lambda model_id: 5))
        closer = asyncio.ensure_future(_after(0.05, rx.close))
        with pytest.raises(TransportError, match="closed"):
            await anext(images)
        await closer

    run(main())


def test_receive_images_decodes_what_arrives(shipped_packets: list[bytes],
                                             receiver: Receiver) -> None:
    async def main() -> ReceivedImage:
        tx, rx = memory_pair(LossPattern(drop=frozenset({0})))
        async with rx, tx:
            await tx.send(shipped_packets)
            async with aclosing(receive_images(rx, receiver, deadline=0.2)) as images:
                return await anext(images)

    got = run(main())
    assert got.image.shape == (64, 96, 3) and got.image_id == 7
    assert got.sender.startswith("memory-") and got.latency() > 0
    assert got.complete and got.report.packets_recovered == 1  # FEC rebuilt packet 0


def test_undecodable_images_raise_or_go_to_on_skip(foreign_packets: list[bytes],
                                                   shipped_packets: list[bytes],
                                                   receiver: Receiver) -> None:
    async def main(skip: bool) -> tuple[list[DueImage], ReceivedImage | None]:
        skipped: list[DueImage] = []

        def on_skip(due: DueImage, exc: ResilientTxError) -> None:
            assert isinstance(exc, ModelMismatchError)
            skipped.append(due)

        tx, rx = memory_pair()
        async with rx, tx:
            await tx.send(foreign_packets)  # unknown model: released by its deadline
            later = asyncio.ensure_future(_after(0.5, lambda: tx.send(shipped_packets)))
            images = receive_images(rx, receiver, deadline=0.2,
                                    on_skip=on_skip if skip else None)
            try:
                async with aclosing(images):
                    return skipped, await anext(images)
            finally:
                later.cancel()

    skipped, got = run(main(skip=True))
    assert [d.key[1] for d in skipped] == [9] and got is not None and got.image_id == 7
    with pytest.raises(ModelMismatchError):
        run(main(skip=False))


def _due(sender: str, image_id: int) -> DueImage:
    return DueImage((sender, image_id, b"m" * 8), None, 0.0, True)  # type: ignore[arg-type]


def test_fair_queue_serves_senders_in_turn_and_drops_stale_and_excess() -> None:
    from resilient_tx.app.session import FairQueue

    q = FairQueue(max_total=4, max_per_sender=2, max_age=5.0)
    for i in range(5):
        q.push(_due("flood", i), 0.0)  # keeps only its own 2 newest
    q.push(_due("legit", 99), 0.0)
    assert len(q) == 3 and q.drops.snapshot() == {"image_over_cap": 3}
    order = [q.pop(1.0) for _ in range(3)]
    assert [d.key[1] for d in order if d is not None] == [3, 99, 4]
    q.push(_due("a", 1), 0.0)
    assert q.pop(6.0) is None and q.drops.counts["image_stale"] == 1


def test_fair_queue_when_full_lets_a_lighter_sender_in() -> None:
    from resilient_tx.app.session import FairQueue

    q = FairQueue(max_total=2, max_per_sender=2, max_age=5.0)
    q.push(_due("flood", 1), 0.0)
    q.push(_due("flood", 2), 0.0)
    q.push(_due("legit", 3), 0.0)  # the heaviest sender gives way
    assert sorted(d.key[1] for d in (q.pop(0.1), q.pop(0.1)) if d) == [2, 3]


def test_progressive_receiving_yields_a_preview_then_the_image(
        shipped_packets: list[bytes], receiver: Receiver) -> None:
    from resilient_tx.config import ReceiverConfig
    from resilient_tx.resilience.packet import Packet

    stages = [Packet.parse(b).stage for b in shipped_packets]
    first = [b for b, s in zip(shipped_packets, stages, strict=True) if s in (1, 2)]
    rest = [b for b, s in zip(shipped_packets, stages, strict=True) if s not in (1, 2)]

    async def main() -> list[ReceivedImage]:
        tx, rx = memory_pair()
        cfg = ReceiverConfig(deadline=5.0, progressive=True)
        out: list[ReceivedImage] = []
        async with rx, tx:
            await tx.send(first)
            async with aclosing(receive_images(rx, receiver, config=cfg)) as images:
                out.append(await anext(images))
                await tx.send(rest)
                out.append(await anext(images))
        return out

    preview, final = run(main())
    assert preview.preview and not preview.complete and preview.image_id == 7
    assert preview.report.tokens_inpainted > 0  # the later stages were not there yet
    assert not final.preview and final.complete and final.report.tokens_inpainted == 0
    assert preview.image.shape == final.image.shape == (64, 96, 3)


def test_a_preview_whose_image_is_done_is_not_decoded() -> None:
    from resilient_tx.app.session import FairQueue
    from resilient_tx.resilience.collector import DueImage

    key = ("a", 1, b"m")
    queue = FairQueue()
    preview = DueImage(key, None, 0.0, False, preview=True)  # type: ignore[arg-type]
    final = DueImage(key, None, 0.0, True)  # type: ignore[arg-type]
    other = DueImage(("a", 2, b"m"), None, 0.0, False, preview=True)  # type: ignore[arg-type]
    for due in (preview, other, final):
        queue.push(due, 0.0)
    assert [queue.pop(0.0), queue.pop(0.0), queue.pop(0.0)] == [other, final, None]
