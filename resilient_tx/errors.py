"""One exception tree for the whole library, rooted in :class:`ResilientTxError`.

Callers (the CLI, the receiver) catch the root and turn it into a one-line message;
anything else escaping is a bug.
"""

from __future__ import annotations


class ResilientTxError(Exception):
    """Root of every error this library raises on purpose."""


class InputError(ResilientTxError):
    """User input is unusable: a missing file, a non-image, a bad option value."""


class ConfigError(InputError):
    """A YAML config or a config field is invalid."""


class BitstreamError(ResilientTxError):
    """A coded stream or container is truncated, malformed or corrupted."""


class ChecksumError(BitstreamError):
    """Decoded symbols do not match the CRC32 the sender computed.

    This is how a sender/receiver probability mismatch (desync) is detected: the
    arithmetic decoder itself never fails, it just produces other symbols.
    """


class ModelMismatchError(ResilientTxError):
    """A stream was made by a different model than the one asked to decode it."""


class ModelNotFoundError(InputError):
    """No model of that name or path exists."""


class PacketError(BitstreamError):
    """A received datagram is not a well-formed, intact packet.

    Raised by ``Packet.parse`` for anything malformed: truncated, wrong magic or version,
    length mismatch, CRC mismatch, inconsistent header fields. The receiver drops such a
    datagram and counts it as lost, which is exactly the erasure FEC knows how to repair.
    """


class FecError(BitstreamError):
    """Received FEC shards of one stage contradict each other.

    Unequal shard lengths, a shard index outside the stage, or a length prefix that does
    not fit its shard: a buggy or hostile sender, never an ordinary loss (losses make
    ``decode_shards`` return ``None``).
    """


class TransportError(ResilientTxError):
    """A packet transport failed: unreachable peer, failed handshake, refused message.

    Raised by ``resilient_tx.transport``. Losses are never errors: datagram
    transports drop silently and the layers above treat a missing packet as an erasure.
    """


class BackendBuildError(ResilientTxError):
    """torchac's C++ backend could not be built here (no compiler, a failed build)."""


class MissingDependencyError(ResilientTxError):
    """A feature needs an optional dependency (an extra) that is not installed."""


class AuthenticationError(PacketError):
    """A datagram failed packet authentication (``--key-file``), or carried a tag the
    receiver did not expect.

    ``reason`` names the check for the drop counters: ``unauthenticated`` (no tag where
    one is required), ``bad_tag`` (forged, truncated, or another key's), ``replay`` (a
    sequence number already seen or outside the replay window), ``unexpected_tag`` (a
    keyed packet at a receiver without a key).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class FeedbackError(PacketError):
    """A feedback report from a receiver is malformed, corrupted, or fails its tag.

    The sender ignores such a report (and keeps planning from what it knew), exactly as
    the receiver drops a bad packet.
    """
