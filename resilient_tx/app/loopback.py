"""A sender and a receiver in one process over loopback UDP, with simulated loss.

The second half of ``resilient-tx demo``: the real packetizer, the real UDP transport,
the channel simulator dropping packets at the sender, and the production receive loop
(:mod:`resilient_tx.app.session`: collector, exact partial decoding, inpainting). One
image, one event loop.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from resilient_tx.app.session import receive_images
from resilient_tx.config import ReceiverConfig
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


async def _run(image: np.ndarray, sender: Sender, receiver: Receiver, channel: ChannelConfig,
               seed: int, deadline: float) -> LoopbackResult:
    async with open_receiver("udp", ("127.0.0.1", 0)) as rx:
        t0 = time.monotonic()
        sent = sender.packets(image, image_id=seed)
        kept, stats = transmit([bytes(p) for p in sent.packets], channel, seed)
        async with open_sender("udp", rx.address) as tx:
            if kept:
                await tx.send(kept)
        # One image was sent: the first one out of the receive loop is it.
        async with aclosing(receive_images(rx, receiver, deadline=deadline)) as images:
            got = await anext(images)
        latency = time.monotonic() - t0
    return LoopbackResult(got.received, stats, len(sent.packets), sent.total_bytes, latency)


def run_loopback(image: np.ndarray, sender: Sender, receiver: Receiver, loss: float,
                 seed: int = 1, deadline: float = ReceiverConfig.deadline) -> LoopbackResult:
    """Send ``image`` to ourselves with ``loss`` Bernoulli packet loss; return what arrived.

    If every packet is lost the collector never sees the image; the receiver then has
    nothing to inpaint from, so at least one packet must survive (``seed`` picks which).
    """
    return asyncio.run(_run(image, sender, receiver, ChannelConfig(loss_rate=loss), seed,
                            deadline))
