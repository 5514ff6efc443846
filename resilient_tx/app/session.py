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
import dataclasses
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Hashable
from contextlib import aclosing
from dataclasses import dataclass, field

import numpy as np

from resilient_tx.config import ReceiverConfig
from resilient_tx.errors import ResilientTxError, TransportError
from resilient_tx.resilience.auth import PacketKey, ReplayWindow, Verifier
from resilient_tx.resilience.collector import Collector, Drops, DueImage
from resilient_tx.resilience.endpoint import Received, Receiver
from resilient_tx.resilience.feedback import FeedbackHub
from resilient_tx.resilience.reassembly import ReceiveReport
from resilient_tx.transport import PacketReceiver

SkipHandler = Callable[[DueImage, ResilientTxError], None]
YIELD_EVERY = 64  # packets taken in a row before the receive loop lets other tasks run
NoticeHandler = Callable[[str], None]


@dataclass(frozen=True)
class ReceivedImage:
    """One decoded image, with what the collector knew about its packets."""

    due: DueImage
    received: Received
    drops: dict[str, int] = field(default_factory=dict)  # dropped so far, by reason

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

    @property
    def preview(self) -> bool:
        """A preview (``progressive``): the same image comes again when it is done."""
        return self.due.preview

    def latency(self, now: float | None = None) -> float:
        """Seconds from the image's first packet to ``now`` (default: this moment)."""
        return (time.monotonic() if now is None else now) - self.due.first_seen


async def due_images(rx: PacketReceiver, collector: Collector,
                     on_notice: NoticeHandler | None = None, key: PacketKey | None = None,
                     ) -> AsyncGenerator[DueImage, None]:
    """Feed ``collector`` from ``rx``; yield each image as it becomes due (complete, or
    its deadline passed). ``on_notice`` hears the collector's one-time notices (e.g. a
    key on one side only) as soon as they arise. With a
    :class:`~resilient_tx.resilience.feedback.FeedbackHub` on the collector, its reports
    go back to each sender over ``rx`` (signed with ``key`` if given) when due. Ends
    with :class:`~resilient_tx.errors.TransportError` when ``rx`` closes."""
    taken = 0
    while True:
        # Packets already waiting are taken without an await each (a flood must cost as
        # little per datagram as possible), yielding to the other tasks now and then.
        item = rx.recv_nowait()
        if item is None:
            try:
                item = await asyncio.wait_for(rx.recv(), _next_wake(collector))
            except asyncio.TimeoutError:
                item = None
        elif (taken := taken + 1) % YIELD_EVERY == 0:
            await asyncio.sleep(0)
        data, peer = (None, "") if item is None else item
        if data is not None:
            due = collector.feed(data, peer, time.monotonic())
            if collector.drops.notices:  # said now: a misconfigured peer may never
                _notify(collector.drops, on_notice)  # complete an image at all
            if due is not None:
                yield due
        for due in collector.expired(time.monotonic()):
            yield due
        _send_reports(rx, collector, key)


def _next_wake(collector: Collector) -> float | None:
    """Seconds until the next image deadline or feedback report, None for neither."""
    times = [t for t in (collector.next_deadline(),
                         None if collector.feedback is None else collector.feedback.next_due())
             if t is not None]
    return None if not times else max(0.0, min(times) - time.monotonic())


def _send_reports(rx: PacketReceiver, collector: Collector, key: PacketKey | None) -> None:
    """Feedback reports that are due, to their senders (best effort, never raises)."""
    if collector.feedback is None:
        return
    for peer, report in collector.feedback.due_reports(time.monotonic(), key):
        rx.reply(peer, report)


@dataclass
class FairQueue:
    """Images waiting to be decoded, served round-robin across senders.

    Each sender has its own queue of at most ``max_per_sender`` images (a sender that
    outruns the decoder loses its own oldest image); all together hold at most
    ``max_total``, and when full a newcomer gets in only if its sender holds fewer images
    than the heaviest one, whose oldest image then gives way. ``pop`` takes one image from
    each sender in turn, and drops an image that waited more than ``max_age`` seconds
    (stale: its sender has moved on). Drops are counted in ``drops``.
    """

    max_total: int = ReceiverConfig.max_queued
    max_per_sender: int = ReceiverConfig.max_queued_per_sender
    max_age: float = ReceiverConfig.max_queue_age
    drops: Drops = field(default_factory=Drops)
    # Insertion order is the rotation: the first sender is served next.
    _queues: dict[Hashable, deque[tuple[float, DueImage]]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def push(self, due: DueImage, now: float) -> None:
        sender = due.key[0]
        if not due.preview:
            self._drop_preview(due)
        mine = self._queues.get(sender)
        held = 0 if mine is None else len(mine)
        if mine is not None and held >= self.max_per_sender:
            mine.popleft()
            self.drops.add("image_over_cap")
        elif len(self) >= self.max_total:
            heaviest = max(self._queues, key=lambda k: len(self._queues[k]))
            if held >= len(self._queues[heaviest]):
                self.drops.add("image_over_cap")  # no lighter than anyone: refused
                return
            self._queues[heaviest].popleft()
            self.drops.add("image_over_cap")
            if not self._queues[heaviest]:
                del self._queues[heaviest]
        self._queues.setdefault(sender, deque()).append((now, due))

    def _drop_preview(self, due: DueImage) -> None:
        """The final image is in: a preview of it not yet decoded is no use any more."""
        mine = self._queues.get(due.key[0])
        if mine is not None:
            kept = [(t, d) for t, d in mine if not (d.preview and d.key == due.key)]
            if len(kept) < len(mine):
                self._queues[due.key[0]] = deque(kept)
                if not kept:
                    del self._queues[due.key[0]]

    def pop(self, now: float) -> DueImage | None:
        while self._queues:
            sender = next(iter(self._queues))
            q = self._queues.pop(sender)
            queued_at, due = q.popleft()
            if q:
                self._queues[sender] = q  # to the back of the rotation
            if now - queued_at > self.max_age:
                self.drops.add("image_stale")
                continue
            return due
        return None


def make_collector(receiver: Receiver, cfg: ReceiverConfig,
                   key: PacketKey | None = None) -> Collector:
    """The collector ``cfg`` describes: its caps, previews, feedback, and with ``key``
    signed packets only."""
    verifier = None if key is None else Verifier(key, ReplayWindow(cfg.replay_window))
    collector = Collector.from_config(cfg, receiver.stage_count,
                                      stage_tokens=receiver.stage_tokens, verifier=verifier)
    if cfg.feedback:
        collector.feedback = FeedbackHub(cfg.feedback_interval)
    return collector


async def _feed(rx: PacketReceiver, collector: Collector, queue: FairQueue,
                wake: asyncio.Event, on_notice: NoticeHandler | None,
                key: PacketKey | None) -> None:
    """Move due images from the collector to the decode queue, for as long as ``rx``
    delivers: packets keep being read while an image decodes."""
    async with aclosing(due_images(rx, collector, on_notice, key)) as images:
        async for due in images:
            queue.push(due, time.monotonic())
            wake.set()
            _notify(collector.drops, on_notice)


def _notify(drops: Drops, on_notice: NoticeHandler | None) -> None:
    notices, drops.notices = drops.notices, []
    if on_notice is not None:
        for text in notices:
            on_notice(text)


async def _next_due(queue: FairQueue, feeder: asyncio.Future[object],
                    wake: asyncio.Event) -> DueImage:
    """The next image to decode; the feeder's error once it stopped and all is served."""
    while True:
        due = queue.pop(time.monotonic())
        if due is not None:
            return due
        if feeder.done():
            feeder.result()  # raises what stopped it (TransportError when rx closed)
            raise TransportError("receiver closed")
        wake.clear()
        waiter: asyncio.Future[object] = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait([waiter, feeder], return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()


async def receive_images(rx: PacketReceiver, receiver: Receiver, *,
                         deadline: float = ReceiverConfig.deadline,
                         on_skip: SkipHandler | None = None,
                         config: ReceiverConfig | None = None,
                         key: PacketKey | None = None,
                         drops: Drops | None = None,
                         on_notice: NoticeHandler | None = None,
                         ) -> AsyncGenerator[ReceivedImage, None]:
    """Decode every image that arrives on ``rx``, fairly across senders.

    An image the receiver cannot decode (e.g. from a model it does not have) raises, or,
    with ``on_skip``, is handed to it and skipped so the loop keeps serving. ``config``
    gives the caps (its ``deadline`` unless ``deadline`` is given otherwise), ``key``
    makes the receiver accept signed packets only, ``drops`` (shared with the caller)
    counts what was dropped and why, and ``on_notice`` hears once about drops that point
    at a misconfiguration (a key on one side only).
    """
    cfg = ReceiverConfig(deadline=deadline) if config is None else config
    if config is not None and deadline != ReceiverConfig.deadline:
        cfg = dataclasses.replace(cfg, deadline=deadline)
    collector = make_collector(receiver, cfg, key)
    if drops is not None:
        collector.drops = drops
    queue = FairQueue(cfg.max_queued, cfg.max_queued_per_sender, cfg.max_queue_age,
                      collector.drops)
    wake = asyncio.Event()
    loop = asyncio.get_running_loop()
    feeder: asyncio.Future[object] = asyncio.ensure_future(
        _feed(rx, collector, queue, wake, on_notice, key))
    try:
        while True:
            due = await _next_due(queue, feeder, wake)
            try:
                received = await loop.run_in_executor(None, receiver.finish, due)
            except ResilientTxError as exc:
                if on_skip is None:
                    raise
                on_skip(due, exc)
                continue
            yield ReceivedImage(due, received, collector.drops.snapshot())
    finally:
        feeder.cancel()
        await asyncio.gather(feeder, return_exceptions=True)
