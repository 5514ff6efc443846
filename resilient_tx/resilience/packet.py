"""One network packet: a fixed binary header and one FEC shard of one quincunx stage.

Every packet is self-describing, so a receiver can start decoding from whatever subset
of packets arrives, in any order, without a session handshake. Layout (all integers
little-endian; version 3, which this build writes, has :data:`HEADER_SIZE` = 35 bytes)::

    offset  size  field
    0       4     magic "RTXP"
    4       1     version (this build writes 3 and reads 1, 2 and 3)
    5       1     flags: bits 0-2 = context depth c (0: stage s is coded given all stages < s;
                  c > 0: given stages 1..min(s-1, c) only, see packetizer.py); bit 3 =
                  keyed (an authentication trailer follows the payload); others 0
    6       4     image id u32 (tells packets of consecutive images apart)
    10      8     model id (the first 8 bytes of the model hash, as in the .rtx file)
    18      2     image width u16
    20      2     image height u16
    22      1     rate point id u8
    23      1     stage u8 (1-based quincunx stage; 0: the image's metadata)
    24      1     chunk index u8 (0 <= index < n; index >= k means a parity shard)
    25      1     k u8 = data chunks in the stage (k >= 1)
    26      1     n u8 = packets in the stage (k <= n <= 255: one GF(256) codeword)
    27      2     seq u16: the packet's position in its image's send order
    29      2     total u16: packets sent for the image, all stages
    31      4     CRC32 of bytes 0..30 followed by the payload
    35      ...   payload: the rest of the datagram (less the trailer, if keyed)
    ...     32    keyed packets only (flag bit 3): the trailer, see :class:`Trailer`

Version 3 is version 2 made smaller, field for field the same information: chunk index,
k and n shrink to one byte each (a stage is one Reed-Solomon codeword over GF(256), so
none of them can pass 255), and the payload length goes, because a datagram (UDP, or a
WebRTC data-channel message) keeps its own length. Small images are cut into small
packets, and their heavily protected first stage into the smallest, so a header byte
saved is worth more there than the arithmetic suggests.

Version 2 (40 bytes) has u16 chunk index, k and n at offsets 24, 26 and 28, the payload
length u16 at 30, seq and total at 32 and 34, and the CRC at 36 (over bytes 0..35 and the
payload). ``Packet(..., wire_version=2)`` writes it byte for byte, for version-2 receivers.

Version 1 (36 bytes) is version 2 without ``seq`` and ``total``: its CRC sits at offset 32
and covers bytes 0..31 and the payload. A version-1 receiver counts the packets of only the
stages it saw, so a stage lost whole went unreported; ``total`` makes the true loss known,
and ``seq`` lets the receiver measure loss runs (bursts) for its feedback reports
(:mod:`.feedback`). Version 2 also defines stage 0: a metadata packet (k = 1, sent twice, at
the start and the end of the image) whose payload is the sender's file name, UTF-8, at
most :data:`MAX_NAME_BYTES` bytes; it counts in ``total`` like any packet.
``Packet(seq=None, total=None)`` writes version 1 byte for byte, for old receivers.

A keyed packet adds :data:`TRAILER_SIZE` bytes after the payload: sender id (8 bytes),
sequence number u64 and a 16-byte tag; the payload length field (versions 1 and 2) still
counts the payload only, and the CRC still covers the header fields and the payload. The
tag is made and checked by :mod:`resilient_tx.resilience.auth`; this module only frames it.

Width and height are u16, not u32 as in the ``.rtx`` container: they are repeated in
every packet, and 4 bytes per packet buy nothing for images up to 65535 px a side.

The CRC covers header and payload, so a receiver drops a corrupted packet as a loss
(an erasure FEC can repair) instead of feeding wrong bytes to the arithmetic decoder.
CRC-32 detects every error of up to 3 flipped bits and every burst of up to 32 bits at
these lengths; anything else slips through with probability 2**-32.

Building a packet with out-of-range fields is a sender bug and raises
:class:`~resilient_tx.errors.InputError`; parsing received bytes raises only
:class:`~resilient_tx.errors.PacketError`.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, PacketError

MAGIC = b"RTXP"
VERSION = 3  # written; 1 and 2 are still read (and written on request)
VERSIONS = (1, 2, 3)
MODEL_ID_SIZE = 8
_FIELDS = struct.Struct("<4sBBI8sHHBBHHHH")  # versions 1 and 2, up to the payload length
_POSITION = struct.Struct("<HH")  # version 2: seq, total
_FIELDS_V3 = struct.Struct("<4sBBI8sHHBBBBBHH")  # version 3, everything before the CRC
_CRC = struct.Struct("<I")
HEADER_SIZE_V1 = _FIELDS.size + _CRC.size
HEADER_SIZE_V2 = _FIELDS.size + _POSITION.size + _CRC.size
HEADER_SIZE = _FIELDS_V3.size + _CRC.size
MIN_HEADER_SIZE = min(HEADER_SIZE, HEADER_SIZE_V1, HEADER_SIZE_V2)
HEADER_SIZES = {1: HEADER_SIZE_V1, 2: HEADER_SIZE_V2, 3: HEADER_SIZE}
META_STAGE = 0  # version 2: the stage number of the image's metadata packets
MAX_NAME_BYTES = 255
KEYED_FLAG = 0x08  # flags bit 3: the packet ends with an authentication trailer
SENDER_ID_SIZE = 8
TAG_SIZE = 16
_TRAILER = struct.Struct(f"<{SENDER_ID_SIZE}sQ{TAG_SIZE}s")
TRAILER_SIZE = _TRAILER.size
MAX_U64 = (1 << 64) - 1
MAX_U8 = 0xFF
MAX_U16 = 0xFFFF
MAX_U32 = 0xFFFFFFFF


def max_payload(max_packet: int = DEFAULT_MAX_PACKET, header_size: int = HEADER_SIZE) -> int:
    """Largest payload that keeps a whole packet within ``max_packet`` bytes
    (``header_size``: :data:`HEADER_SIZE_V1` for version-1 packets)."""
    if isinstance(max_packet, bool) or not isinstance(max_packet, int):
        raise InputError(f"max packet size must be an int, got {type(max_packet).__name__}")
    if max_packet <= header_size:
        raise InputError(f"max packet size {max_packet} leaves no room for a payload after "
                         f"the {header_size}-byte header")
    # A u16 caps the payload whatever the path allows: the length field of versions 1-2,
    # and a UDP datagram (65507 bytes) is about as large.
    return min(max_packet - header_size, MAX_U16)


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InputError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise InputError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class Trailer:
    """What a keyed packet adds after its payload: who sent it, its place in that sender's
    sequence, and the truncated HMAC tag over everything before the tag."""

    sender_id: bytes
    seq: int
    tag: bytes = bytes(TAG_SIZE)

    def __post_init__(self) -> None:
        if not isinstance(self.sender_id, bytes) or len(self.sender_id) != SENDER_ID_SIZE:
            raise InputError(f"sender_id must be {SENDER_ID_SIZE} bytes")
        if not isinstance(self.tag, bytes) or len(self.tag) != TAG_SIZE:
            raise InputError(f"tag must be {TAG_SIZE} bytes")
        _check_int("seq", self.seq, 0, MAX_U64)

    def __bytes__(self) -> bytes:
        return _TRAILER.pack(self.sender_id, self.seq, self.tag)

    @classmethod
    def parse(cls, data: bytes) -> Trailer:
        if len(data) != TRAILER_SIZE:
            raise PacketError(f"truncated trailer ({len(data)} bytes, need {TRAILER_SIZE})")
        return cls(*_TRAILER.unpack(data))


@dataclass(frozen=True)
class Packet:
    """The decoded header fields and payload of one packet (see the module docstring)."""

    image_id: int
    model_id: bytes
    width: int
    height: int
    rate_point: int
    stage: int
    index: int
    k: int
    n: int
    payload: bytes
    flags: int = 0  # the header byte without KEYED_FLAG, which ``trailer`` stands for
    trailer: Trailer | None = None
    seq: int | None = None  # position in the image's send order (None: version 1)
    total: int | None = None  # packets sent for the image (None: version 1)
    # The layout to write with ``seq`` and ``total``: None for this build's (version 3), 2
    # for a version-2 receiver; version 1 is chosen by leaving ``seq`` and ``total`` out.
    wire_version: int | None = None

    def __post_init__(self) -> None:
        # Programmer errors at construction: a sender must never build an unencodable packet.
        if not isinstance(self.model_id, bytes) or len(self.model_id) != MODEL_ID_SIZE:
            raise InputError(f"model_id must be {MODEL_ID_SIZE} bytes, got {self.model_id!r}")
        if not isinstance(self.payload, bytes):
            raise InputError(f"payload must be bytes, got {type(self.payload).__name__}")
        _check_int("image_id", self.image_id, 0, MAX_U32)
        _check_int("width", self.width, 1, MAX_U16)
        _check_int("height", self.height, 1, MAX_U16)
        _check_int("rate_point", self.rate_point, 0, MAX_U8)
        _check_int("stage", self.stage, 0, MAX_U8)
        self._check_position()  # before k and n: it settles the version their range needs
        _check_int("k", self.k, 1, MAX_U16)
        # Version 3 holds n in a byte: one GF(256) codeword per stage, as the FEC needs.
        _check_int("n", self.n, self.k, MAX_U8 if self.version == 3 else MAX_U16)
        _check_int("index", self.index, 0, self.n - 1)
        _check_int("flags", self.flags, 0, MAX_U8)
        if self.flags & KEYED_FLAG:
            raise InputError("flags bit 3 is the keyed bit: give a trailer instead")
        if self.trailer is not None and not isinstance(self.trailer, Trailer):
            raise InputError(f"trailer must be a Trailer, got {type(self.trailer).__name__}")
        _check_int("payload length", len(self.payload), 0, MAX_U16)

    def _check_position(self) -> None:
        if self.wire_version not in (None, 2):
            raise InputError(f"wire_version must be None (version {VERSION}) or 2, got "
                             f"{self.wire_version!r}")
        if (self.seq is None) != (self.total is None):
            raise InputError("seq and total come together (version 2 and later) or not at all")
        if self.seq is None or self.total is None:
            if self.wire_version is not None:
                raise InputError("a version-2 packet needs seq and total")
            if self.stage == META_STAGE:
                raise InputError("metadata packets (stage 0) exist from version 2 on")
            return
        _check_int("total", self.total, 1, MAX_U16)
        _check_int("seq", self.seq, 0, self.total - 1)

    @property
    def version(self) -> int:
        """The layout written: 1 without ``seq``/``total``, else ``wire_version`` or 3."""
        if self.seq is None:
            return 1
        return VERSION if self.wire_version is None else self.wire_version

    @property
    def header_size(self) -> int:
        return HEADER_SIZES[self.version]

    @property
    def is_meta(self) -> bool:
        """A metadata packet (the sender's file name), not a stage's shard."""
        return self.stage == META_STAGE

    @property
    def is_parity(self) -> bool:
        """True for a Reed-Solomon parity shard, False for a systematic (data) shard."""
        return self.index >= self.k

    @property
    def size(self) -> int:
        """Encoded size in bytes, header (and trailer, if keyed) included."""
        return (self.header_size + len(self.payload)
                + (0 if self.trailer is None else TRAILER_SIZE))

    def _fields(self) -> bytes:
        flags = self.flags | (0 if self.trailer is None else KEYED_FLAG)
        common = (self.image_id, self.model_id, self.width, self.height, self.rate_point,
                  self.stage, self.index, self.k, self.n)
        if self.version == 3:
            return _FIELDS_V3.pack(MAGIC, 3, flags, *common, self.seq, self.total)
        head = _FIELDS.pack(MAGIC, self.version, flags, *common, len(self.payload))
        if self.seq is None or self.total is None:
            return head
        return head + _POSITION.pack(self.seq, self.total)

    def __bytes__(self) -> bytes:
        fields = self._fields()
        crc = zlib.crc32(self.payload, zlib.crc32(fields)) & MAX_U32
        tail = b"" if self.trailer is None else bytes(self.trailer)
        return fields + _CRC.pack(crc) + self.payload + tail

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Packet:
        """Decode one datagram; raise :class:`PacketError` (only) for anything malformed.

        Anything else escaping from here would be a bug: the receiver feeds it whatever
        the network delivers (a WebRTC data channel may even deliver ``str``).
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise PacketError(f"not a packet (got {type(data).__name__}, expected bytes)")
        data = bytes(data)
        version, head, end = _check_framing(data)
        seq: int | None = None
        total: int | None = None
        if version == 3:
            (_magic, _version, flags, image_id, model_id, width, height, rate_point, stage,
             index, k, n, seq, total) = _FIELDS_V3.unpack_from(data)
        else:
            (_magic, _version, flags, image_id, model_id, width, height, rate_point, stage,
             index, k, n, _length) = _FIELDS.unpack_from(data)
            if version == 2:
                seq, total = _POSITION.unpack_from(data, _FIELDS.size)
        (crc,) = _CRC.unpack_from(data, head - _CRC.size)
        payload = data[head:end]
        if zlib.crc32(payload, zlib.crc32(data[: head - _CRC.size])) & MAX_U32 != crc:
            raise PacketError("corrupted packet (CRC mismatch)")
        _check_consistent(width, height, stage, index, k, n, seq, total)
        trailer = Trailer.parse(data[end:]) if flags & KEYED_FLAG else None
        try:
            return cls(image_id, model_id, width, height, rate_point, stage, index, k, n,
                       payload, flags & ~KEYED_FLAG, trailer, seq, total,
                       2 if version == 2 else None)
        except InputError as exc:  # unreachable after the checks above; keeps the contract
            raise PacketError(f"inconsistent packet ({exc})") from exc


def is_keyed(data: bytes) -> bool:
    """Whether a datagram's header says it carries a trailer (without parsing it)."""
    return len(data) > 5 and bool(data[5] & KEYED_FLAG)


def header_size_of(data: bytes) -> int | None:
    """The header size the datagram's version byte announces; None for a version this
    build does not read (or a datagram too short to say)."""
    return HEADER_SIZES.get(data[4]) if len(data) > 4 else None


def _check_framing(data: bytes) -> tuple[int, int, int]:
    """Magic, version and lengths: everything needed before the CRC can be checked.

    Returns (version, header size, where the payload ends); the trailer, if any, follows."""
    if not data.startswith(MAGIC[: len(data)]):
        raise PacketError("not a packet (bad magic)")
    if len(data) < MIN_HEADER_SIZE:
        raise PacketError(f"truncated packet ({len(data)} bytes, the shortest header is "
                          f"{MIN_HEADER_SIZE})")
    version, flags = data[4], data[5]
    head = header_size_of(data)
    if head is None:
        raise PacketError(f"unsupported packet version {version} (this build reads "
                          f"{', '.join(map(str, VERSIONS))})")
    extra = TRAILER_SIZE if flags & KEYED_FLAG else 0
    if version == 3:  # no length field: the payload is what the datagram holds
        if len(data) < head + extra:
            raise PacketError(f"truncated packet ({len(data)} bytes, header"
                              f"{' and trailer are' if extra else ' is'} {head + extra})")
        return version, head, len(data) - extra
    if len(data) < head:
        raise PacketError(f"truncated packet ({len(data)} bytes, header is {head})")
    length = _FIELDS.unpack_from(data)[-1]
    if len(data) != head + length + extra:
        raise PacketError(f"payload length mismatch (header says {length}"
                          f"{' + trailer' if extra else ''}, got {len(data) - head})")
    return version, head, head + length


def _check_consistent(width: int, height: int, stage: int, index: int, k: int, n: int,
                      seq: int | None, total: int | None) -> None:
    """Field ranges a CRC-valid packet can still violate (a buggy or hostile sender)."""
    if width == 0 or height == 0:
        raise PacketError(f"inconsistent packet (image size {width}x{height})")
    if stage == META_STAGE and seq is None:
        raise PacketError("inconsistent packet (stage 0; stages count from 1)")
    if not 1 <= k <= n:
        raise PacketError(f"inconsistent packet (k={k}, n={n}; need 1 <= k <= n)")
    if index >= n:
        raise PacketError(f"inconsistent packet (chunk index {index} >= n={n})")
    if total is not None and (total == 0 or seq is None or seq >= total):
        raise PacketError(f"inconsistent packet (seq {seq} of {total} packets)")


def check_size(packet: Packet, limit: int = DEFAULT_MAX_PACKET) -> int:
    """Return the packet's encoded size; raise InputError if it exceeds ``limit`` bytes.

    A sender bug, not a channel event: the packetizer must size shards with
    :func:`max_payload`, because an oversized datagram is fragmented or dropped on the path.
    """
    max_payload(limit)  # validates ``limit`` itself
    if packet.size > limit:
        raise InputError(f"packet is {packet.size} bytes, over the {limit}-byte limit "
                         f"(payload {len(packet.payload)} > {max_payload(limit)})")
    return packet.size
