"""The .rtx container (resilient_tx.codec.container)."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.codec.container import MAGIC, MAX_SIDE, VERSION, EncodedImage, StageStream
from resilient_tx.errors import BitstreamError

HEAD_SIZE = 4 + 1 + 1 + 8 + 4 + 4 + 1  # magic, version, flags, model id, width, height, stages
STAGE_SIZE = 12
CRC_SIZE = 4

u32 = st.integers(0, 0xFFFFFFFF)
stage_streams = st.builds(
    StageStream, data=st.binary(max_size=64), symbols=u32, crc=u32
)
images = st.builds(
    EncodedImage,
    model_id=st.binary(min_size=8, max_size=8),
    width=st.integers(1, MAX_SIDE),
    height=st.integers(1, MAX_SIDE),
    stages=st.lists(stage_streams, min_size=0, max_size=7).map(tuple),
)


def header_size(img: EncodedImage) -> int:
    return HEAD_SIZE + STAGE_SIZE * len(img.stages) + CRC_SIZE


def example() -> EncodedImage:
    return EncodedImage(
        model_id=bytes(range(8)),
        width=640,
        height=480,
        stages=(
            StageStream(b"\x01\x02\x03", 20, 0xDEADBEEF),
            StageStream(b"", 0, 0),
            StageStream(b"payload-bytes", 1200, 0x12345678),
        ),
    )


def reheader(blob: bytes, n_stages: int, **fields: int) -> bytes:
    """Rewrite header fields of a valid blob and fix its header CRC (to reach later checks)."""
    magic, version, flags, mid, width, height, n = struct.unpack_from("<4sBB8sIIB", blob)
    vals = dict(version=version, flags=flags, width=width, height=height)
    vals.update(fields)
    head = struct.pack("<4sBB8sIIB", magic, vals["version"], vals["flags"], mid, vals["width"],
                       vals["height"], n)
    end = HEAD_SIZE + STAGE_SIZE * n_stages
    head += blob[HEAD_SIZE:end]
    return head + struct.pack("<I", zlib.crc32(head)) + blob[end + CRC_SIZE :]


# --------------------------------------------------------------------------- round trip


@settings(max_examples=100, deadline=None)
@given(images)
def test_round_trip(img: EncodedImage) -> None:
    blob = bytes(img)
    assert len(blob) == header_size(img) + img.payload_bytes
    assert blob[:4] == MAGIC and blob[4] == VERSION
    parsed = EncodedImage.parse(blob)
    assert parsed == img
    assert bytes(parsed) == blob


def test_layout_is_little_endian() -> None:
    img = example()
    blob = bytes(img)
    assert blob[:6] == b"RTXF\x01\x00"
    assert blob[6:14] == bytes(range(8))
    assert blob[14:18] == (640).to_bytes(4, "little")
    assert blob[18:22] == (480).to_bytes(4, "little")
    assert blob[22] == 3
    assert blob[23:35] == struct.pack("<III", 20, 3, 0xDEADBEEF)
    end = HEAD_SIZE + 3 * STAGE_SIZE
    assert blob[end : end + 4] == struct.pack("<I", zlib.crc32(blob[:end]))
    assert blob[end + 4 :] == b"\x01\x02\x03payload-bytes"
    assert img.payload_bytes == 16


def test_extreme_sizes_round_trip() -> None:
    for w, h in [(1, 1), (MAX_SIDE, MAX_SIDE), (1, MAX_SIDE)]:
        img = EncodedImage(b"\xff" * 8, w, h, ())
        assert EncodedImage.parse(bytes(img)) == img


# --------------------------------------------------------------------------- truncation


def test_every_strict_prefix_raises() -> None:
    blob = bytes(example())
    for k in range(len(blob)):
        with pytest.raises(BitstreamError):
            EncodedImage.parse(blob[:k])


@settings(max_examples=50, deadline=None)
@given(img=images, data=st.data())
def test_every_strict_prefix_raises_hypothesis(img: EncodedImage, data: st.DataObject) -> None:
    blob = bytes(img)
    k = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(BitstreamError):
        EncodedImage.parse(blob[:k])


def test_prefix_messages() -> None:
    blob = bytes(example())
    with pytest.raises(BitstreamError, match="bad magic"):
        EncodedImage.parse(b"")
    with pytest.raises(BitstreamError, match="truncated"):
        EncodedImage.parse(blob[:3])
    with pytest.raises(BitstreamError, match="truncated"):
        EncodedImage.parse(blob[: HEAD_SIZE + 5])
    with pytest.raises(BitstreamError, match="stage data missing"):
        EncodedImage.parse(blob[:-1])


# --------------------------------------------------------------------------- corruption


def test_every_header_byte_flip_raises() -> None:
    img = example()
    blob = bytes(img)
    for pos in range(header_size(img)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(blob)
            damaged[pos] ^= mask
            with pytest.raises(BitstreamError):
                EncodedImage.parse(bytes(damaged))


@settings(max_examples=100, deadline=None)
@given(img=images, data=st.data())
def test_header_byte_flip_raises_hypothesis(img: EncodedImage, data: st.DataObject) -> None:
    blob = bytearray(bytes(img))
    pos = data.draw(st.integers(0, header_size(img) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(BitstreamError):
        EncodedImage.parse(bytes(blob))


@settings(max_examples=50, deadline=None)
@given(img=images, extra=st.binary(min_size=1, max_size=32))
def test_trailing_bytes_raise(img: EncodedImage, extra: bytes) -> None:
    with pytest.raises(BitstreamError, match="trailing"):
        EncodedImage.parse(bytes(img) + extra)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_raises_only_bitstream_error(blob: bytes) -> None:
    try:
        img = EncodedImage.parse(blob)
    except BitstreamError:
        return
    # Accepting random bytes needs a matching header CRC; if it happens, it must be consistent.
    assert len(img.model_id) == 8 and 1 <= img.width <= MAX_SIDE


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(0, 255),
    n=st.integers(0, 255),
    rest=st.binary(max_size=200),
    width=st.integers(0, 2**32 - 1),
    height=st.integers(0, 2**32 - 1),
)
def test_garbage_with_valid_magic_raises_only_bitstream_error(
    version: int, n: int, rest: bytes, width: int, height: int
) -> None:
    # Drive the parser past the magic check with a plausible header and random content.
    blob = struct.pack("<4sBB8sIIB", MAGIC, version, 0, b"m" * 8, width, height, n) + rest
    try:
        EncodedImage.parse(blob)
    except BitstreamError:
        return


@pytest.mark.parametrize("magic", [b"RTXG", b"rtxf", b"\x00\x00\x00\x00", b"PK\x03\x04"])
def test_wrong_magic_message(magic: bytes) -> None:
    blob = magic + bytes(example())[4:]
    with pytest.raises(BitstreamError, match=r"not an \.rtx file \(bad magic\)"):
        EncodedImage.parse(blob)
    with pytest.raises(BitstreamError, match="bad magic"):
        EncodedImage.parse(magic)  # a short blob too


def test_png_is_rejected_as_bad_magic() -> None:
    with pytest.raises(BitstreamError, match="bad magic"):
        EncodedImage.parse(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_wrong_version_message(version: int) -> None:
    blob = bytearray(bytes(example()))
    blob[4] = version
    with pytest.raises(BitstreamError, match=f"unsupported .rtx version {version}") as info:
        EncodedImage.parse(bytes(blob))
    assert f"reads {VERSION}" in str(info.value)
    # ...even when the header CRC is made to match: the version is checked first anyway.
    with pytest.raises(BitstreamError, match="unsupported"):
        EncodedImage.parse(reheader(bytes(example()), 3, version=version))


def test_header_crc_mismatch_message() -> None:
    blob = bytearray(bytes(example()))
    blob[15] ^= 0x10  # width
    with pytest.raises(BitstreamError, match="header CRC mismatch"):
        EncodedImage.parse(bytes(blob))


@pytest.mark.parametrize(
    "width,height", [(0, 10), (10, 0), (MAX_SIDE + 1, 5), (5, MAX_SIDE + 1), (2**32 - 1, 1)]
)
def test_out_of_range_size_with_valid_crc(width: int, height: int) -> None:
    blob = reheader(bytes(example()), 3, width=width, height=height)
    with pytest.raises(BitstreamError, match="image size"):
        EncodedImage.parse(blob)


def test_nonzero_flags_are_ignored() -> None:
    # The flags byte is reserved: a header that sets it (with a matching CRC) still parses.
    img = EncodedImage.parse(reheader(bytes(example()), 3, flags=0x5A))
    assert img == example()
