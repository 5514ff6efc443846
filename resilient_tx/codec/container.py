"""The ``.rtx`` file: a small header and one entropy-coded bitstream per quincunx stage.

Layout (all integers little-endian)::

    magic "RTXF" | version u8 | flags u8 | model id 8 bytes | width u32 | height u32
    | stages u8 | per stage: symbols u32, bytes u32, symbol CRC32 u32 | header CRC32 u32
    | stage 1 bytes | stage 2 bytes | ...

The header CRC catches a corrupted header; each stage's symbol CRC catches a corrupted
payload (or any encoder/decoder probability mismatch) after decoding.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from resilient_tx.errors import BitstreamError

MAGIC = b"RTXF"
VERSION = 1
_HEAD = struct.Struct("<4sBB8sIIB")
_STAGE = struct.Struct("<III")
_CRC = struct.Struct("<I")
MAX_SIDE = 1 << 16


@dataclass(frozen=True)
class StageStream:
    """One stage's arithmetic-coded bytes, its symbol count and the CRC32 of its symbols."""

    data: bytes
    symbols: int
    crc: int


@dataclass(frozen=True)
class EncodedImage:
    model_id: bytes
    width: int
    height: int
    stages: tuple[StageStream, ...]

    @property
    def payload_bytes(self) -> int:
        return sum(len(s.data) for s in self.stages)

    def __bytes__(self) -> bytes:
        head = _HEAD.pack(MAGIC, VERSION, 0, self.model_id, self.width, self.height,
                          len(self.stages))
        head += b"".join(_STAGE.pack(s.symbols, len(s.data), s.crc) for s in self.stages)
        head += _CRC.pack(zlib.crc32(head) & 0xFFFFFFFF)
        return head + b"".join(s.data for s in self.stages)

    @classmethod
    def parse(cls, blob: bytes) -> EncodedImage:
        if len(blob) < _HEAD.size:
            if not blob.startswith(MAGIC[: len(blob)]) or not blob:
                raise BitstreamError("not an .rtx file (bad magic)")
            raise BitstreamError("truncated .rtx file (header incomplete)")
        magic, version, _flags, model_id, width, height, n = _HEAD.unpack_from(blob)
        if magic != MAGIC:
            raise BitstreamError("not an .rtx file (bad magic)")
        if version != VERSION:
            raise BitstreamError(f"unsupported .rtx version {version} (this build reads {VERSION})")
        end = _HEAD.size + n * _STAGE.size
        if len(blob) < end + _CRC.size:
            raise BitstreamError("truncated .rtx file (header incomplete)")
        (crc,) = _CRC.unpack_from(blob, end)
        if zlib.crc32(blob[:end]) & 0xFFFFFFFF != crc:
            raise BitstreamError("corrupted .rtx file (header CRC mismatch)")
        if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
            raise BitstreamError(f"corrupted .rtx file (image size {width}x{height})")
        metas = [_STAGE.unpack_from(blob, _HEAD.size + i * _STAGE.size) for i in range(n)]
        pos = end + _CRC.size
        stages = []
        for count, length, scrc in metas:
            if pos + length > len(blob):
                raise BitstreamError("truncated .rtx file (stage data missing)")
            stages.append(StageStream(blob[pos : pos + length], count, scrc))
            pos += length
        if pos != len(blob):
            raise BitstreamError(f"corrupted .rtx file ({len(blob) - pos} trailing bytes)")
        return cls(model_id, width, height, tuple(stages))
