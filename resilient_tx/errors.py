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
