"""The receive loop: packets from a transport in, decoded images out.

This is the production path that ``resilient-tx recv``, the demo and embedding code
share. :func:`due_images` feeds a :class:`~resilient_tx.resilience.collector.Collector`
from a :class:`~resilient_tx.transport.PacketReceiver` and yields each image as soon as
it is complete or its deadline has passed, never waiting past the next deadline.
:func:`receive_images` adds the decoding: each due image goes through
:meth:`Receiver.finish <resilient_tx.resilience.endpoint.Receiver.finish>` in a worker
thread, so the transport keeps queueing packets while an image decodes::

    async with open_receiver("udp", "0.0.0.0:5004") as rx:
        async for got in receive_images(rx, Receiver("mim", device)):
            save_rgb(got.image, f"{got.image_id:08x}.png")
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass

import numpy as np

from resilient_tx.config import ReceiverConfig
from resilient_tx.errors import ResilientTxError
from resilient_tx.resilience.collector import Collector, DueImage
from resilient_tx.resilience.endpoint import Received, Receiver
from resilient_tx.resilience.reassembly import ReceiveReport
from resilient_tx.transport import PacketReceiver

SkipHandler = Callable[[DueImage, ResilientTxError], None]


@dataclass(frozen=True)
class ReceivedImage:
    """One decoded image, with what the collector knew about its packets."""

    due: DueImage
    received: Received

    @property
    def image(self) -> np.ndarray:
        return self.received.image

    @property
    def report(self) -> ReceiveReport:
        return self.received.report

    @property
    def image_id(self) -> int:
        return self.due.key[1]

    @property
    def sender(self) -> str:
        """Who sent it, as the transport names peers (``host:port`` for UDP)."""
        return str(self.due.key[0])

    @property
    def complete(self) -> bool:
        """Every packet needed arrived before the deadline."""
        return self.received.complete

    def latency(self, now: float | None = None) -> float:
        """Seconds from the image's first packet to ``now`` (default: this moment)."""
        return (time.monotonic() if now is None else now) - self.due.first_seen


async def due_images(rx: PacketReceiver, collector: Collector) -> AsyncGenerator[DueImage, None]:
    """Feed ``collector`` from ``rx``; yield each image as it becomes due (complete, or
    its deadline passed). Ends with :class:`~resilient_tx.errors.TransportError` when
    ``rx`` closes."""
    while True:
        nxt = collector.next_deadline()
        timeout = None if nxt is None else max(0.0, nxt - time.monotonic())
        try:
            data, peer = await asyncio.wait_for(rx.recv(), timeout)
        except asyncio.TimeoutError:
            data = None
        if data is not None:
            due = collector.feed(data, peer, time.monotonic())
            if due is not None:
                yield due
        for due in collector.expired(time.monotonic()):
            yield due


async def receive_images(rx: PacketReceiver, receiver: Receiver, *,
                         deadline: float = ReceiverConfig.deadline,
                         on_skip: SkipHandler | None = None) -> AsyncGenerator[ReceivedImage, None]:
    """Decode every image that arrives on ``rx``, in the order they become due.

    An image the receiver cannot decode (e.g. from a model it does not have) raises, or,
    with ``on_skip``, is handed to it and skipped so the loop keeps serving.
    """
    loop = asyncio.get_running_loop()
    collector = Collector(receiver.stage_count, deadline=deadline)
    async with aclosing(due_images(rx, collector)) as images:
        async for due in images:
            try:
                received = await loop.run_in_executor(None, receiver.finish, due)
            except ResilientTxError as exc:
                if on_skip is None:
                    raise
                on_skip(due, exc)
                continue
            yield ReceivedImage(due, received)
