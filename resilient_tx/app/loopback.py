"""A sender and a receiver in one process over loopback UDP, with simulated loss.

The second half of ``resilient-tx demo`` (issue 4, item 7): the real packetizer, the real
UDP transport, the channel simulator dropping packets at the sender, and the real receiver
path (collector, exact partial decoding, inpainting). One image, one event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from resilient_tx.resilience.collector import Collector, DueImage
from resilient_tx.resilience.endpoint import Received, Receiver, Sender
from resilient_tx.transport import open_receiver, open_sender
from resilient_tx.transport.channel import ChannelConfig, ChannelStats, transmit


@dataclass(frozen=True)
class LoopbackResult:
    received: Received
    channel: ChannelStats
    packets_sent: int
    bytes_sent: int
    latency_s: float  # from the start of encoding to the decoded image


async def due_images(rx, collector: Collector) -> AsyncIterator[DueImage]:
    """Feed ``collector`` from receiver ``rx``; yield each image as it becomes due
    (complete, or its deadline passed). Waits no longer than the next deadline."""
    while True:
        nxt = collector.next_deadline()
        timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
        try:
            data, peer = await asyncio.wait_for(rx.recv(), timeout)
        except TimeoutError:
            data = None
        if data is not None:
            due = collector.feed(data, peer, time.monotonic())
            if due is not None:
                yield due
        for due in collector.expired(time.monotonic()):
            yield due


async def _run(image: np.ndarray, sender: Sender, receiver: Receiver, channel: ChannelConfig,
               seed: int, deadline: float) -> LoopbackResult:
    async with open_receiver("udp", ("127.0.0.1", 0)) as rx:
        t0 = time.monotonic()
        sent = sender.packets(image, image_id=seed)
        kept, stats = transmit([bytes(p) for p in sent.packets], channel, seed)
        async with open_sender("udp", rx.address) as tx:
            if kept:
                await tx.send(kept)
            images = due_images(rx, Collector(deadline=deadline))
            due = await anext(images)  # one image was sent: the first due one is it
            await images.aclose()
        rec = await asyncio.get_running_loop().run_in_executor(None, receiver.finish, due)
        latency = time.monotonic() - t0
    return LoopbackResult(rec, stats, len(sent.packets), sent.total_bytes, latency)


def run_loopback(image: np.ndarray, sender: Sender, receiver: Receiver, loss: float,
                 seed: int = 1, deadline: float = 0.5) -> LoopbackResult:
    """Send ``image`` to ourselves with ``loss`` Bernoulli packet loss; return what arrived.

    If every packet is lost the collector never sees the image; the receiver then has
    nothing to inpaint from, so at least one packet must survive (``seed`` picks which).
    """
    return asyncio.run(_run(image, sender, receiver, ChannelConfig(loss_rate=loss), seed,
                            deadline))
