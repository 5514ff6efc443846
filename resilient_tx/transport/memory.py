"""In-memory transport for tests: senders push straight into a receiver's queue.

A :class:`MemoryReceiver` is addressed either directly (pass the object as the sender's
target) or by name: ``MemoryReceiver("rx")`` registers itself under ``"rx"`` while open,
so ``open_sender("memory", "rx")`` finds it, like a port. Any number of senders may feed
one receiver; each names itself with a distinct peer string.

Losses are scripted by a :class:`LossPattern`: explicit packet indices to drop and/or a
seeded :class:`~resilient_tx.transport.channel.ChannelConfig` run through
:func:`~resilient_tx.transport.channel.transmit` (loss, duplication, corruption, reordering),
so a test knows exactly which packets arrive.

Back channel (see :mod:`.base`). While a sender is open it is attached to its receiver
under its peer string, so :meth:`MemoryReceiver.reply` hands a message straight to that
sender's feedback queue; a closed (or garbage-collected) sender is gone and replies to it
fail. The sender's ``feedback_loss`` scripts the losses of replies the way ``loss`` does
for packets, counting replies instead of packets (each reply is its own one-message
``send`` call), and ``LossPattern(drop=range(n))`` blocks the first ``n`` of them. If
two open senders use the same peer string, replies go to the one attached last.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field

from resilient_tx.errors import InputError, TransportError
from resilient_tx.transport.base import (
    DEFAULT_CONFIG,
    PacketSender,
    QueuedReceiver,
    TransportConfig,
)
from resilient_tx.transport.channel import ChannelConfig, transmit

_REGISTRY: dict[str, MemoryReceiver] = {}
_PEER_IDS = itertools.count(1)


@dataclass(frozen=True)
class LossPattern:
    """Which packets a :class:`MemorySender` loses.

    ``drop``: indices, counted over everything this sender was asked to send since it
    opened (0 = its first packet), that never arrive. ``channel``: then the surviving
    packets of the n-th ``send`` call (n = 0, 1, ...) go through
    ``transmit(packets, channel, seed + n)``.
    """

    channel: ChannelConfig | None = None
    seed: int = 0
    drop: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.channel is not None and not isinstance(self.channel, ChannelConfig):
            raise InputError(f"channel must be a ChannelConfig, got {self.channel!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InputError(f"seed must be a non-negative int, got {self.seed!r}")
        object.__setattr__(self, "drop", _index_set(self.drop))

    def apply(self, packets: list[bytes], first_index: int, call_index: int) -> list[bytes]:
        """The packets that arrive, in arrival order, for one ``send`` call."""
        kept = [p for i, p in enumerate(packets, first_index) if i not in self.drop]
        if self.channel is None:
            return kept
        delivered, _ = transmit(kept, self.channel, self.seed + call_index)
        return delivered


def _index_set(indices: Iterable[int]) -> frozenset[int]:
    try:
        out = frozenset(indices)
    except TypeError:
        raise InputError(f"drop must be a collection of packet indices, got {indices!r}") \
            from None
    bad = [i for i in out if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if bad:
        raise InputError(f"drop indices must be non-negative ints, got {sorted(map(str, bad))}")
    return out


class MemoryReceiver(QueuedReceiver):
    """A receiver living in this process, optionally registered under ``name``."""

    def __init__(self, name: str | None = None,
                 config: TransportConfig = DEFAULT_CONFIG) -> None:
        if name is not None and not isinstance(name, str):
            raise InputError(f"a memory receiver's name must be a str or None, got {name!r}")
        super().__init__(config)
        self.name = name
        # Weak: a sender dropped without close() must not be kept alive by its receiver.
        self._senders: weakref.WeakValueDictionary[str, MemorySender] = \
            weakref.WeakValueDictionary()

    @property
    def address(self) -> MemoryReceiver | str:
        """Its registered name, or the receiver itself when it has none."""
        return self if self.name is None else self.name

    async def _open(self) -> None:
        if self.name is None:
            return
        if self.name in _REGISTRY:
            raise TransportError(f"memory address {self.name!r} is already in use")
        _REGISTRY[self.name] = self

    async def _close(self) -> None:
        self._senders.clear()
        if self.name is not None and _REGISTRY.get(self.name) is self:
            del _REGISTRY[self.name]

    def _attach(self, sender: MemorySender) -> None:
        """Make ``sender`` reachable by :meth:`reply` under its peer string."""
        if not self._closed:
            self._senders[sender.peer] = sender

    def _detach(self, sender: MemorySender) -> None:
        if self._senders.get(sender.peer) is sender:
            del self._senders[sender.peer]

    def _reply(self, peer: str, data: bytes) -> bool:
        sender = self._senders.get(peer)
        if sender is None or sender.closed:
            return False
        sender._feedback_arrives(data)
        return True


class MemorySender(PacketSender):
    """Delivers into a :class:`MemoryReceiver` (object or registered name), losing per
    ``loss``; the receiver's replies reach it losing per ``feedback_loss``. Sending to a
    closed receiver silently loses the packets, as UDP would."""

    def __init__(self, target: MemoryReceiver | str,
                 config: TransportConfig = DEFAULT_CONFIG,
                 loss: LossPattern | None = None, peer: str | None = None,
                 feedback_loss: LossPattern | None = None) -> None:
        super().__init__(config)
        for name, pattern in (("loss", loss), ("feedback_loss", feedback_loss)):
            if pattern is not None and not isinstance(pattern, LossPattern):
                raise InputError(f"{name} must be a LossPattern or None, got {pattern!r}")
        if peer is not None and not isinstance(peer, str):
            raise InputError(f"peer must be a str or None, got {peer!r}")
        self._target = target
        self._receiver: MemoryReceiver | None = None
        self.loss = loss
        self.feedback_loss = feedback_loss
        self.peer = peer if peer is not None else f"memory-{next(_PEER_IDS)}"
        self._sent = 0
        self._calls = 0
        self._reply_count = 0

    async def _open(self) -> None:
        if isinstance(self._target, MemoryReceiver):
            self._receiver = self._target
        elif self._target in _REGISTRY:
            self._receiver = _REGISTRY[self._target]
        else:
            raise TransportError(f"no memory receiver is listening on {self._target!r}")
        self._receiver._attach(self)

    async def _close(self) -> None:
        if self._receiver is not None:
            self._receiver._detach(self)
        self._receiver = None

    def _feedback_arrives(self, data: bytes) -> None:
        """One reply from the receiver, through ``feedback_loss`` into the queue."""
        index = self._reply_count
        self._reply_count += 1
        arrived = [data] if self.feedback_loss is None else \
            self.feedback_loss.apply([data], index, index)
        for message in arrived:
            self._feedback_received(message)

    def _on_wire(self, batch: list[bytes]) -> list[bytes]:
        first, call = self._sent, self._calls
        self._sent += len(batch)
        self._calls += 1
        return batch if self.loss is None else self.loss.apply(batch, first, call)

    async def _send_one(self, packet: bytes) -> None:
        if self._receiver is not None:
            self._receiver.deliver(packet, self.peer)


def memory_pair(loss: LossPattern | None = None,
                config: TransportConfig = DEFAULT_CONFIG
                ) -> tuple[MemorySender, MemoryReceiver]:
    """A sender wired to a fresh unnamed receiver (neither opened yet)."""
    receiver = MemoryReceiver(config=config)
    return MemorySender(receiver, config=config, loss=loss), receiver
