"""The packet wire format: round trip, limits, and parse's contract."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.errors import BitstreamError, InputError, PacketError, ResilientTxError
from resilient_tx.resilience.packet import (
    DEFAULT_MAX_PACKET,
    HEADER_SIZE,
    HEADER_SIZE_V1,
    HEADER_SIZE_V2,
    HEADER_SIZES,
    KEYED_FLAG,
    MAGIC,
    TRAILER_SIZE,
    VERSION,
    Packet,
    Trailer,
    check_size,
    max_payload,
)

FIELDS = struct.Struct("<4sBBI8sHHBBHHHH")  # versions 1 and 2, up to the payload length
FIELDS_V3 = struct.Struct("<4sBBI8sHHBBBBBHH")  # version 3, up to the CRC
EXAMPLES = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def packets(draw: st.DrawFn, max_payload_size: int = 256, keyed: bool = False) -> Packet:
    version = draw(st.sampled_from((1, 2, 3)))
    top = 0xFF if version == 3 else 0xFFFF  # version 3 holds k and n in a byte
    k = draw(st.integers(1, min(300, top)))
    n = draw(st.integers(k, top))
    total = None if version == 1 else draw(st.integers(1, 0xFFFF))
    seq = None if total is None else draw(st.integers(0, total - 1))
    return Packet(
        image_id=draw(st.integers(0, 0xFFFFFFFF)),
        model_id=draw(st.binary(min_size=8, max_size=8)),
        width=draw(st.integers(1, 0xFFFF)),
        height=draw(st.integers(1, 0xFFFF)),
        rate_point=draw(st.integers(0, 0xFF)),
        stage=draw(st.integers(1 if total is None else 0, 0xFF)),
        index=draw(st.integers(0, n - 1)),
        k=k,
        n=n,
        payload=draw(st.binary(max_size=max_payload_size)),
        flags=draw(st.integers(0, 0xFF).map(lambda f: f & ~KEYED_FLAG)),
        trailer=draw(st.builds(Trailer, st.binary(min_size=8, max_size=8),
                               st.integers(0, (1 << 64) - 1), st.binary(min_size=16,
                                                                        max_size=16)))
        if keyed else None,
        seq=seq,
        total=total,
        wire_version=2 if version == 2 else None,
    )


def example(**overrides: object) -> Packet:
    fields = dict(image_id=7, model_id=bytes(range(8)), width=768, height=512, rate_point=1,
                  stage=2, index=3, k=4, n=6, payload=b"shard bytes", flags=0)
    fields.update(overrides)
    return Packet(**fields)  # type: ignore[arg-type]


def raw(values: dict[str, object], payload: bytes = b"xy", crc_ok: bool = True) -> bytes:
    """Hand-built datagram with a VALID CRC over arbitrary header values."""
    base = dict(magic=MAGIC, version=1, flags=0, image_id=1, model_id=b"m" * 8,
                width=16, height=16, rate_point=0, stage=1, index=0, k=1, n=1,
                length=len(payload))
    base.update(values)
    fields = FIELDS.pack(*base.values())
    crc = zlib.crc32(payload, zlib.crc32(fields)) ^ (0 if crc_ok else 1)
    return fields + struct.pack("<I", crc) + payload


@EXAMPLES
@given(packets())
def test_round_trip(packet: Packet) -> None:
    data = bytes(packet)
    assert len(data) == packet.header_size + len(packet.payload) == packet.size
    assert packet.header_size == HEADER_SIZES[packet.version]
    assert data[4] == packet.version
    assert Packet.parse(data) == packet
    assert Packet.parse(bytearray(data)) == packet
    assert Packet.parse(memoryview(data)) == packet


def test_version_1_header_layout_is_36_bytes_with_every_field_in_place() -> None:
    packet = example(image_id=0x01020304, flags=0x80, payload=b"abc")
    data = bytes(packet)
    assert HEADER_SIZE_V1 == 36
    assert data[:4] == b"RTXP" and data[4] == 1 and data[5] == 0x80
    values = FIELDS.unpack_from(data)
    assert values[3:] == (0x01020304, bytes(range(8)), 768, 512, 1, 2, 3, 4, 6, 3)
    assert struct.unpack_from("<I", data, 32)[0] == zlib.crc32(data[:32] + b"abc")
    assert data[36:] == b"abc"


def test_version_2_header_adds_seq_and_total_before_the_crc() -> None:
    packet = example(image_id=0x01020304, payload=b"abc", seq=5, total=0x0102, wire_version=2)
    data = bytes(packet)
    assert HEADER_SIZE_V2 == 40 and data[4] == 2
    assert FIELDS.unpack_from(data)[3:] == (0x01020304, bytes(range(8)), 768, 512, 1, 2, 3,
                                            4, 6, 3)
    assert struct.unpack_from("<HH", data, 32) == (5, 0x0102)
    assert struct.unpack_from("<I", data, 36)[0] == zlib.crc32(data[:36] + b"abc")
    assert data[40:] == b"abc"


def test_version_3_header_is_35_bytes_with_byte_sized_k_and_n_and_no_length() -> None:
    packet = example(image_id=0x01020304, payload=b"abc", seq=5, total=0x0102)
    data = bytes(packet)
    assert HEADER_SIZE == 35 and VERSION == 3 and data[4] == 3 and packet.version == 3
    assert FIELDS_V3.unpack_from(data)[3:] == (0x01020304, bytes(range(8)), 768, 512, 1, 2,
                                               3, 4, 6, 5, 0x0102)
    assert struct.unpack_from("<I", data, 31)[0] == zlib.crc32(data[:31] + b"abc")
    assert data[35:] == b"abc" and len(data) == 38


def test_version_3_cannot_hold_more_than_255_packets_in_a_stage() -> None:
    with pytest.raises(InputError, match="n must be in"):
        example(k=4, n=256, seq=0, total=1)
    assert example(k=4, n=256, seq=0, total=1, wire_version=2).n == 256


def test_seq_and_total_come_together_and_in_range() -> None:
    for bad in (dict(seq=1), dict(total=3), dict(seq=3, total=3), dict(seq=0, total=0),
                dict(wire_version=2), dict(seq=0, total=1, wire_version=1),
                dict(seq=0, total=1, wire_version=3)):
        with pytest.raises(InputError):
            example(**bad)
    with pytest.raises(InputError, match="version 2"):
        example(stage=0)
    assert example(stage=0, seq=0, total=1).is_meta


@pytest.mark.parametrize(("wire_version", "seq_at", "crc_at"), [(2, 32, 36), (None, 27, 31)])
def test_a_header_with_seq_past_total_is_rejected(wire_version: int | None, seq_at: int,
                                                  crc_at: int) -> None:
    data = bytearray(bytes(example(seq=1, total=2, payload=b"", wire_version=wire_version)))
    struct.pack_into("<HH", data, seq_at, 2, 2)  # seq 2 of 2 packets
    struct.pack_into("<I", data, crc_at, zlib.crc32(bytes(data[:crc_at])))
    with pytest.raises(PacketError, match="seq 2 of 2"):
        Packet.parse(bytes(data))


def test_a_version_3_datagram_shorter_than_its_header_and_trailer_is_rejected() -> None:
    data = bytes(example(seq=0, total=1, payload=b"x" * 10))
    keyed = bytearray(data)
    keyed[5] |= KEYED_FLAG  # says a 32-byte trailer follows: 11 bytes cannot hold it
    struct.pack_into("<I", keyed, 31, zlib.crc32(bytes(keyed[:31])))
    with pytest.raises(PacketError, match="truncated"):
        Packet.parse(bytes(keyed))


def test_parity_flag_follows_index() -> None:
    assert not example(index=3, k=4, n=6).is_parity
    assert example(index=4, k=4, n=6).is_parity


def test_packet_error_is_a_bitstream_error() -> None:
    assert issubclass(PacketError, BitstreamError)
    assert issubclass(PacketError, ResilientTxError)


# Plain random bytes rarely get past the magic; also try ones that start like a packet.
datagrams = st.one_of(st.binary(max_size=120),
                      st.binary(max_size=120).map(lambda b: MAGIC + bytes([VERSION]) + b))


@EXAMPLES
@given(datagrams)
def test_arbitrary_bytes_raise_only_packet_error(data: bytes) -> None:
    try:
        packet = Packet.parse(data)
    except PacketError:
        return
    # Reaching here needs a valid magic, version, length and CRC by chance: re-encoding
    # must then give the same bytes.
    assert bytes(packet) == data


@EXAMPLES
@given(packets(max_payload_size=64), st.data())
def test_any_single_byte_change_is_rejected(packet: Packet, data: st.DataObject) -> None:
    # CRC-32 catches every burst error of up to 32 bits, so one changed byte never passes.
    wire = bytearray(bytes(packet))
    pos = data.draw(st.integers(0, len(wire) - 1))
    wire[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(PacketError):
        Packet.parse(bytes(wire))


@EXAMPLES
@given(packets(max_payload_size=64), st.data())
def test_truncated_or_extended_is_rejected(packet: Packet, data: st.DataObject) -> None:
    wire = bytes(packet)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(PacketError):
        Packet.parse(wire[:cut])
    with pytest.raises(PacketError):
        Packet.parse(wire + data.draw(st.binary(min_size=1, max_size=8)))


@EXAMPLES
@given(packets(max_payload_size=64), st.lists(st.tuples(st.integers(0, 10**6),
                                                        st.integers(0, 255)), max_size=8))
def test_mutations_raise_only_packet_error(packet: Packet,
                                           edits: list[tuple[int, int]]) -> None:
    wire = bytearray(bytes(packet))
    for pos, value in edits:
        wire[pos % len(wire)] = value
    try:
        parsed = Packet.parse(bytes(wire))
    except PacketError:
        return
    assert bytes(parsed) == bytes(wire)  # only an unchanged (or CRC-colliding) packet parses


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"magic": b"RTXF"}, "bad magic"),
        ({"version": 4}, "version"),
        ({"width": 0}, "image size"),
        ({"height": 0}, "image size"),
        ({"stage": 0}, "stage 0"),
        ({"k": 0}, "k=0"),
        ({"k": 5, "n": 4}, "k=5, n=4"),
        ({"index": 4, "k": 2, "n": 4}, "index 4"),
        ({"length": 3}, "length mismatch"),
    ],
)
def test_crc_valid_but_inconsistent_headers_are_rejected(values: dict[str, object],
                                                         message: str) -> None:
    with pytest.raises(PacketError, match=message):
        Packet.parse(raw(values))


def test_bad_crc_and_non_bytes_are_rejected() -> None:
    assert Packet.parse(raw({})).payload == b"xy"
    with pytest.raises(PacketError, match="CRC"):
        Packet.parse(raw({}, crc_ok=False))
    with pytest.raises(PacketError, match="truncated"):
        Packet.parse(b"")
    for junk in ("RTXP text message", None, 1200, [1, 2]):
        with pytest.raises(PacketError, match="not a packet"):
            Packet.parse(junk)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"model_id": b"short"},
        {"payload": "text"},
        {"image_id": -1},
        {"width": 0},
        {"height": 1 << 16},
        {"rate_point": 256},
        {"stage": 0},
        {"k": 0},
        {"n": 3, "k": 4},
        {"index": 6},
        {"flags": 256},
        {"flags": KEYED_FLAG},  # the keyed bit is set by giving a trailer
        {"trailer": b"x" * TRAILER_SIZE},
        {"k": True},
        {"payload": bytes(1 << 16)},
    ],
)
def test_construction_validates_fields(overrides: dict[str, object]) -> None:
    with pytest.raises(InputError):
        example(**overrides)


def test_size_limits_default_to_1200_and_are_configurable() -> None:
    assert DEFAULT_MAX_PACKET == 1200
    assert max_payload() == 1200 - HEADER_SIZE
    assert max_payload(1500) == 1500 - HEADER_SIZE
    assert max_payload(10**6) == 0xFFFF  # the u16 length field caps it
    assert max_payload(header_size=HEADER_SIZE_V1) == 1200 - HEADER_SIZE_V1
    v2 = dict(seq=0, total=1)
    fits = example(payload=bytes(max_payload()), **v2)
    assert check_size(fits) == 1200
    with pytest.raises(InputError, match="over the 1200-byte limit"):
        check_size(example(payload=bytes(max_payload() + 1), **v2))
    assert check_size(example(payload=bytes(max_payload() + 1), **v2), limit=1201) == 1201
    for bad in (HEADER_SIZE, 0, 1.5):
        with pytest.raises(InputError):
            max_payload(bad)  # type: ignore[arg-type]


@EXAMPLES
@given(packets(keyed=True))
def test_keyed_round_trip_sets_bit_3_and_appends_the_trailer(packet: Packet) -> None:
    data = bytes(packet)
    assert data[5] & KEYED_FLAG and data[5] & ~KEYED_FLAG == packet.flags
    assert len(data) == packet.header_size + len(packet.payload) + TRAILER_SIZE == packet.size
    assert packet.trailer is not None and data[-TRAILER_SIZE:] == bytes(packet.trailer)
    assert Packet.parse(data) == packet


@EXAMPLES
@given(packets(keyed=True, max_payload_size=64), st.data())
def test_keyed_packet_cut_anywhere_is_rejected(packet: Packet, data: st.DataObject) -> None:
    wire = bytes(packet)
    cut = data.draw(st.integers(0, len(wire) - 1))
    with pytest.raises(PacketError):
        Packet.parse(wire[:cut])


def test_unkeyed_bytes_do_not_change_with_a_trailer_field() -> None:
    # The v1 layout test above pins the bytes; a packet without trailer is exactly that.
    plain = example(payload=b"abc")
    assert bytes(plain)[5] & KEYED_FLAG == 0 and plain.size == HEADER_SIZE_V1 + 3
    keyed = example(payload=b"abc", trailer=Trailer(b"s" * 8, 5))
    assert bytes(keyed)[: 5] == bytes(plain)[: 5]
    assert bytes(keyed)[HEADER_SIZE_V1:-TRAILER_SIZE] == b"abc"
