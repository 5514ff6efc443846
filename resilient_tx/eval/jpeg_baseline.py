"""Classic-codec baseline for the loss sweep: JPEG over packets, RFC 2435 style.

Two baselines for the learned codec, compared at equal total bytes: JPEG packetised per
restart interval (restart markers) with simple concealment, and JPEG plus the same
Reed-Solomon FEC.

Encoding. Baseline JPEG from Pillow's ``save(..., "JPEG", restart_marker_blocks=...)``
(a recent Pillow option; an older Pillow ignores it and :func:`packetize_jpeg` then
raises instead of sending one giant interval): 4:2:0 (16x16
MCUs), optimised Huffman tables, one restart interval per MCU row by default (halved
until one interval fits a packet). A restart marker resets the DC predictors, so every
interval decodes on its own: the unit of loss.

Header: no header packet; every packet carries what the receiver needs, in the spirit
of RTP/JPEG (RFC 2435). All of SOI..SOS except the DHT segments depends only on (width,
height, quality, restart interval), which ride in every packet's existing 36-byte
header (width, height, rate point = quality, model id = ``b"JPEG"`` + the restart
interval in MCUs); the receiver rebuilds that part by encoding a flat-gray picture with
the same settings (:func:`reference`). The DHT segments are image-specific, so every
payload starts with ``u16 length + DHT``: any one packet that arrives brings the whole
header. Standard (Annex K) tables would make the DHT implicit too, but cost far more
than they save at the low rates of the sweep.
:func:`packetize_jpeg` checks that the rebuilt header equals the real one.

Packets. The entropy-coded scan is cut at the restart markers; whole intervals are
packed greedily, in order, into chunks that fit one packet. A chunk is ``u16 first
interval index`` followed by its intervals with the original RST markers between them.
A packet is a :class:`~resilient_tx.resilience.packet.Packet` (36-byte header with CRC, counted in
every size here) whose payload is ``u16 length | DHT | chunk or shard``, at most
``max_packet`` bytes in all.

FEC. Optional systematic Reed-Solomon across the data packets
(:func:`resilient_tx.resilience.fec.encode_shards`), in blocks of at most ``max_block`` data
packets; block b is sent as stage b + 1 with its k and n in the packet header. The
parity per block comes from a function of k: :func:`flat_parity` (a fixed fraction, the
natural choice at equal bytes) or :func:`profile_parity` (a named FEC profile's rule for
one stage; the scan has no conditioning hierarchy, so every block gets one stage's rule,
by default stage 5, the profiles' last and lightest). Shards are padded to the block's
longest chunk and parity comes in whole packets, so for a small image of few packets
the parity granularity is coarse. Without FEC the chunk follows the DHT as is (no
length prefix, no padding).

Receiving. Every interval that arrived (directly or repaired by FEC) is used; a missing
one is left empty between its RST markers. libjpeg zero-fills an interval cut short by a
marker (flat gray) and resynchronises at the next RST marker, so the other intervals
decode exactly (a test checks this). Then the pixels of lost MCUs are concealed column
by column: linear interpolation between the nearest received pixel rows above and
below, or a copy of the one that exists; gray where an MCU column received nothing.
With no packet at all the image is flat gray. The pixel row either side of a lost
interval may differ a little from the lossless decode, because libjpeg's chroma
upsampling looks one row across the interval boundary.
"""

from __future__ import annotations

import io
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TypedDict

import numpy as np
from PIL import Image

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import BitstreamError, FecError, InputError, PacketError, ResilientTxError
from resilient_tx.resilience import fec
from resilient_tx.resilience.packet import Packet, max_payload
from resilient_tx.transport.channel import ChannelConfig, transmit

ParityFn = Callable[[int], int]

MCU = 16  # 4:2:0 -> 16x16 pixel MCUs
GRAY = 128
MIN_QUALITY = 1
MAX_QUALITY = 100
DEFAULT_MAX_BLOCK = 64  # data packets per Reed-Solomon block
JPEG_TAG = b"JPEG"
_MODEL_ID = struct.Struct("<4sHH")  # tag, MCUs per restart interval, reserved
_FIRST = struct.Struct("<H")  # chunk prefix: index of its first restart interval
_RST = re.compile(rb"\xff[\xd0-\xd7]")
_SOS = 0xDA
_DHT = 0xC4
_TABLES_LEN = struct.Struct("<H")  # payload prefix: bytes of Huffman tables that follow
_EOI = b"\xff\xd9"


@dataclass(frozen=True)
class JpegPackets:
    """One JPEG, cut into wire datagrams (see the module docstring)."""

    width: int
    height: int
    quality: int
    restart_blocks: int  # MCUs per restart interval
    intervals: int  # restart intervals in the scan
    jpeg: bytes  # the JPEG the packets carry; what lossless delivery decodes to
    packets: tuple[bytes, ...]  # wire datagrams (Packet bytes) in send order
    blocks: tuple[tuple[int, int], ...]  # (k data, parity) packets per RS block

    @property
    def total_bytes(self) -> int:
        """Bytes on the wire: packet headers, chunks, parity and padding."""
        return sum(len(p) for p in self.packets)

    @property
    def data_packets(self) -> int:
        return sum(k for k, _ in self.blocks)

    @property
    def parity_packets(self) -> int:
        return sum(m for _, m in self.blocks)


# ------------------------------------------------------------------------- encoding


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or min(image.shape[:2]) < 1 or max(image.shape[:2]) > 0xFFFF:
        raise InputError("image must be a non-empty (H, W, 3) uint8 array, sides <= 65535")


def _check_quality(quality: int) -> None:
    if isinstance(quality, bool) or not isinstance(quality, int) \
            or not MIN_QUALITY <= quality <= MAX_QUALITY:
        raise InputError(f"JPEG quality must be an int in [{MIN_QUALITY}, {MAX_QUALITY}], "
                         f"got {quality!r}")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")


def mcu_grid(width: int, height: int) -> tuple[int, int]:
    """(MCU rows, MCU columns) of a 4:2:0 JPEG of this size."""
    return math.ceil(height / MCU), math.ceil(width / MCU)


def encode_jpeg(image: np.ndarray, quality: int, restart_blocks: int | None = None,
                optimize: bool = True) -> bytes:
    """Baseline 4:2:0 JPEG with a restart marker every ``restart_blocks`` MCUs (default:
    one MCU row); optimised Huffman tables unless ``optimize`` is False."""
    _check_image(image)
    _check_quality(quality)
    blocks = mcu_grid(image.shape[1], image.shape[0])[1] if restart_blocks is None \
        else restart_blocks
    _check_positive("restart_blocks", blocks)
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(
        buf, "JPEG", quality=quality, subsampling="4:2:0", optimize=optimize,
        restart_marker_blocks=blocks)
    return buf.getvalue()


def split_jpeg(jpeg: bytes) -> tuple[bytes, list[bytes]]:
    """(header SOI..SOS, restart intervals without their RST markers) of a baseline JPEG.

    Raises :class:`BitstreamError` if the stream has no SOS segment or no EOI at the end.
    """
    if not jpeg.startswith(b"\xff\xd8") or not jpeg.endswith(_EOI):
        raise BitstreamError("not a complete JPEG (SOI/EOI missing)")
    pos = 2
    while pos + 4 <= len(jpeg) and jpeg[pos] == 0xFF:
        marker = jpeg[pos + 1]
        pos += 2 + struct.unpack_from(">H", jpeg, pos + 2)[0]
        if marker == _SOS:
            return jpeg[:pos], _RST.split(jpeg[pos:-2])
    raise BitstreamError("JPEG has no SOS segment")


@lru_cache(maxsize=64)
def reference(width: int, height: int, quality: int, restart_blocks: int) -> tuple[bytes, int]:
    """Header template (standard Huffman tables) and interval count for these settings.

    Made by encoding a flat-gray picture, so the receiver can compute it from the packet
    header fields alone.
    """
    gray = np.full((height, width, 3), GRAY, dtype=np.uint8)
    header, intervals = split_jpeg(encode_jpeg(gray, quality, restart_blocks, optimize=False))
    return header, len(intervals)


def _segments(header: bytes) -> list[tuple[int, bytes]]:
    """(marker, whole segment) for each segment after SOI of a header from split_jpeg."""
    out, pos = [], 2
    while pos + 4 <= len(header):
        end = pos + 2 + struct.unpack_from(">H", header, pos + 2)[0]
        out.append((header[pos + 1], header[pos:end]))
        pos = end
    return out


def huffman_tables(header: bytes) -> bytes:
    """The DHT segments of a JPEG header, concatenated: its only picture-specific part."""
    return b"".join(seg for marker, seg in _segments(header) if marker == _DHT)


def rebuild_header(template: bytes, tables: bytes) -> bytes:
    """``template`` (from :func:`reference`) with its DHT segments replaced by ``tables``."""
    segments = _segments(template)
    at = next(i for i, (marker, _) in enumerate(segments) if marker == _DHT)
    kept = [seg for marker, seg in segments if marker != _DHT]
    return b"".join([template[:2], *kept[:at], tables, *kept[at:]])


def quality_for_bytes(image: np.ndarray, target_bytes: int) -> int:
    """Highest quality whose plain JPEG (:func:`encode_jpeg`) is at most ``target_bytes``.

    Bisection, assuming size grows with quality. Raises :class:`InputError` when even
    quality 1 is too big (the budget is unreachable).
    """
    _check_image(image)
    return _bisect_quality(lambda q: len(encode_jpeg(image, q)), target_bytes, "JPEG")


def _bisect_quality(size_at: Callable[[int], int], target: int, what: str) -> int:
    _check_positive("target bytes", target)
    low, high = MIN_QUALITY, MAX_QUALITY
    if size_at(low) > target:
        raise InputError(f"{what} budget of {target} bytes is unreachable: quality "
                         f"{low} already needs {size_at(low)} bytes")
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if size_at(mid) <= target else (low, mid - 1)
    return low


# ---------------------------------------------------------------------- packetizing


def flat_parity(fraction: float) -> ParityFn:
    """Parity = ceil(fraction * k) for a block of k data packets."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) \
            or not 0 <= fraction <= 10:
        raise InputError(f"parity fraction must be in [0, 10], got {fraction!r}")
    return lambda k: math.ceil(round(fraction * k, 9))


def profile_parity(profile: fec.FecProfile | str, stage: int = 5) -> ParityFn:
    """A named FEC profile's parity rule for one quincunx ``stage``, applied to each block."""
    prof = fec.get_profile(profile) if isinstance(profile, str) else profile
    return lambda k: prof.parity(stage, k)


def _parity_fn(parity: int | ParityFn) -> ParityFn:
    if callable(parity):
        return parity
    if isinstance(parity, bool) or not isinstance(parity, int) or parity < 0:
        raise InputError(f"parity must be an int >= 0 or a function of k, got {parity!r}")
    return lambda _k: parity


def pack_intervals(intervals: Sequence[bytes], capacity: int) -> list[bytes]:
    """Greedy: whole intervals, in order, into chunks of at most ``capacity`` bytes.

    A chunk is the u16 index of its first interval, then its intervals with RST markers
    (of the right number, first interval i -> RST(i mod 8)) between them. Raises
    :class:`InputError` if one interval alone does not fit.
    """
    chunks: list[bytes] = []
    parts: list[bytes] = []
    first, size = 0, _FIRST.size
    for i, data in enumerate(intervals):
        cost = len(data) + (2 if parts else 0)
        if parts and size + cost > capacity:
            chunks.append(_chunk(first, parts))
            first, parts, size, cost = i, [], _FIRST.size, len(data)
        if _FIRST.size + len(data) > capacity:
            raise InputError(f"restart interval {i} ({len(data)} bytes) does not fit a "
                             f"{capacity}-byte chunk")
        parts.append(data)
        size += cost
    return [*chunks, _chunk(first, parts)] if parts else chunks


def _chunk(first: int, parts: list[bytes]) -> bytes:
    out = bytearray(_FIRST.pack(first))
    for j, data in enumerate(parts):
        if j:
            out += bytes((0xFF, 0xD0 + (first + j - 1) % 8))
        out += data
    return bytes(out)


def packetize_jpeg(image: np.ndarray, quality: int, max_packet: int = DEFAULT_MAX_PACKET,
                   parity: int | ParityFn = 0, max_block: int = DEFAULT_MAX_BLOCK,
                   image_id: int = 0) -> JpegPackets:
    """Encode ``image`` and cut it into packets of at most ``max_packet`` bytes.

    ``parity``: RS parity packets per block, an int or a function of the block's k.
    The restart interval starts at one MCU row and is halved until every interval fits a
    packet. Raises :class:`InputError` for bad arguments or when one MCU cannot fit.
    """
    _check_image(image)
    _check_quality(quality)
    _check_positive("max_block", max_block)
    parity_of = _parity_fn(parity)
    uses_fec = not (isinstance(parity, int) and parity == 0)  # shards carry a length prefix
    room = max_payload(max_packet) - (fec.PREFIX_SIZE if uses_fec else 0) - _TABLES_LEN.size
    height, width = image.shape[:2]
    restart = mcu_grid(width, height)[1]
    while True:
        jpeg = encode_jpeg(image, quality, restart)
        header, intervals = split_jpeg(jpeg)
        tables = huffman_tables(header)
        capacity = room - len(tables)
        if max(len(d) for d in intervals) + _FIRST.size <= capacity or restart == 1:
            break
        restart = math.ceil(restart / 2)
    rows, cols = mcu_grid(width, height)
    if len(intervals) != math.ceil(rows * cols / restart):
        raise ResilientTxError("this Pillow ignores restart_marker_blocks: no restart markers")
    if len(intervals) > 0xFFFF:
        raise InputError(f"{len(intervals)} restart intervals exceed the u16 chunk index")
    if header != rebuild_header(reference(width, height, quality, restart)[0], tables):
        raise BitstreamError("JPEG header has picture-specific parts besides its DHT")
    chunks = pack_intervals(intervals, capacity)
    packets, blocks = _frame(chunks, parity_of, max_block, _TABLES_LEN.pack(len(tables))
                             + tables, _packet_fields(image_id, width, height, quality,
                                                      restart))
    return JpegPackets(width, height, quality, restart, len(intervals), jpeg,
                       tuple(packets), tuple(blocks))


class _PacketFields(TypedDict):
    """The header fields shared by every packet of one JPEG image."""

    image_id: int
    model_id: bytes
    width: int
    height: int
    rate_point: int


def _packet_fields(image_id: int, width: int, height: int, quality: int,
                   restart: int) -> _PacketFields:
    return {"image_id": image_id, "model_id": _MODEL_ID.pack(JPEG_TAG, restart, 0),
            "width": width, "height": height, "rate_point": quality}


def _frame(chunks: list[bytes], parity_of: ParityFn, max_block: int, prefix: bytes,
           fields: _PacketFields) -> tuple[list[bytes], list[tuple[int, int]]]:
    """Wire datagrams of every RS block (data then parity) and each block's (k, parity).

    Every payload is ``prefix`` (the Huffman tables) followed by the chunk or shard; the
    headers are version 2 like ours (seq and total), so both pay the same header bytes.
    """
    packets: list[Packet] = []
    blocks: list[tuple[int, int]] = []
    n_blocks = math.ceil(len(chunks) / max_block)
    for stage, part in enumerate(np.array_split(np.arange(len(chunks)), n_blocks), 1):
        k = len(part)
        m = parity_of(k)
        if isinstance(m, bool) or not isinstance(m, int) or m < 0 or k + m > fec.MAX_CODEWORD:
            raise InputError(f"parity {m!r} for a block of {k} packets is not an int in "
                             f"[0, {fec.MAX_CODEWORD - k}]")
        data = [chunks[i] for i in part]
        shards = fec.encode_shards(data, m) if m else data
        packets += [Packet(stage=stage, index=i, k=k, n=k + m, payload=prefix + s, **fields)
                    for i, s in enumerate(shards)]
        blocks.append((k, m))
    total = len(packets)
    return [bytes(replace(p, seq=i, total=total)) for i, p in enumerate(packets)], blocks


def jpeg_at_bytes(image: np.ndarray, total_bytes: int, parity_fn: ParityFn | None = None,
                  max_packet: int = DEFAULT_MAX_PACKET,
                  max_block: int = DEFAULT_MAX_BLOCK) -> JpegPackets:
    """The highest-quality packetisation whose total wire bytes (packet headers, parity
    and padding included) are at most ``total_bytes``.

    Raises :class:`InputError` when quality 1 already needs more.
    """
    parity: int | ParityFn = 0 if parity_fn is None else parity_fn

    def size_at(quality: int) -> int:
        return packetize_jpeg(image, quality, max_packet, parity, max_block).total_bytes

    quality = _bisect_quality(size_at, total_bytes, "packetised JPEG")
    return packetize_jpeg(image, quality, max_packet, parity, max_block)


# ------------------------------------------------------------------------ receiving


@dataclass(frozen=True)
class _Stream:
    """What the packets say about the picture (same for all packets of one image)."""

    width: int
    height: int
    quality: int
    restart_blocks: int
    tables: bytes  # the DHT segments


@dataclass(frozen=True)
class _Arrival:
    """One intact packet of ours: its place in the RS code and its chunk or shard."""

    stage: int
    index: int
    k: int
    n: int
    body: bytes


def _parse(datagram: bytes) -> tuple[_Stream, _Arrival] | None:
    """The stream parameters and contents of one datagram, or None if it is not ours."""
    try:
        p = Packet.parse(datagram)
    except PacketError:
        return None  # corrupted or foreign: a loss
    tag, restart, _ = _MODEL_ID.unpack(p.model_id)
    if tag != JPEG_TAG or restart < 1 or not MIN_QUALITY <= p.rate_point <= MAX_QUALITY \
            or len(p.payload) < _TABLES_LEN.size:
        return None
    end = _TABLES_LEN.size + _TABLES_LEN.unpack_from(p.payload)[0]
    if end > len(p.payload):
        return None
    stream = _Stream(p.width, p.height, p.rate_point, restart,
                     p.payload[_TABLES_LEN.size:end])
    return stream, _Arrival(p.stage, p.index, p.k, p.n, p.payload[end:])


def _chunks(arrivals: Iterable[_Arrival]) -> list[bytes]:
    """Every data chunk that arrived or that FEC recovered."""
    stages: dict[int, dict[int, _Arrival]] = {}
    for a in arrivals:
        stages.setdefault(a.stage, {})[a.index] = a  # duplicates collapse
    chunks: list[bytes] = []
    for shards in stages.values():
        chunks += _block_chunks(shards)
    return chunks


def _block_chunks(shards: dict[int, _Arrival]) -> list[bytes]:
    first = next(iter(shards.values()))
    k, n = first.k, first.n
    if any(a.k != k or a.n != n for a in shards.values()):
        return []  # contradictory block: a buggy sender; drop it
    data = [a.body for i, a in shards.items() if i < k]
    if n == k:
        return data
    try:
        recovered = fec.decode_shards({i: a.body for i, a in shards.items()}, k, n - k)
        return recovered if recovered is not None else [fec.strip_shard(d) for d in data]
    except FecError:
        return []


def _intervals(chunks: Iterable[bytes], count: int) -> dict[int, bytes]:
    """Interval index -> entropy-coded bytes, from the chunks (out-of-range ones ignored)."""
    out: dict[int, bytes] = {}
    for chunk in chunks:
        if len(chunk) < _FIRST.size:
            continue
        (first,) = _FIRST.unpack_from(chunk)
        for j, data in enumerate(_RST.split(chunk[_FIRST.size:])):
            if first + j < count:
                out[first + j] = data
    return out


def assemble(header: bytes, intervals: Sequence[bytes]) -> bytes:
    """A complete JPEG: header, intervals with RST0..RST7 in turn between them, EOI."""
    out = bytearray(header)
    for i, data in enumerate(intervals):
        if i:
            out += bytes((0xFF, 0xD0 + (i - 1) % 8))
        out += data
    return bytes(out + _EOI)


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    """Decode JPEG bytes to (H, W, 3) uint8 RGB with Pillow."""
    with Image.open(io.BytesIO(jpeg)) as im:
        return np.array(im.convert("RGB"), dtype=np.uint8)


def _reconstruct(stream: _Stream, received: dict[int, bytes]) -> np.ndarray:
    """Decode the received intervals (gray stand-ins elsewhere), then conceal."""
    template, count = reference(stream.width, stream.height, stream.quality,
                                stream.restart_blocks)
    # A lost interval is left empty: libjpeg zero-fills an interval cut short by a
    # marker (all coefficients 0: flat gray) and resynchronises at the next RST marker.
    full = [received.get(i, b"") for i in range(count)]
    try:
        image = decode_jpeg(assemble(rebuild_header(template, stream.tables), full))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):  # CRC: unreachable
        return _gray(stream.width, stream.height)
    if image.shape != (stream.height, stream.width, 3):
        return _gray(stream.width, stream.height)
    lost = _lost_mcus(stream, [i not in received for i in range(count)])
    return conceal(image, lost)


def _lost_mcus(stream: _Stream, lost_intervals: list[bool]) -> np.ndarray:
    """(MCU rows, MCU columns) boolean mask of MCUs whose interval was lost."""
    rows, cols = mcu_grid(stream.width, stream.height)
    per_mcu = np.repeat(np.array(lost_intervals, dtype=bool), stream.restart_blocks)
    return per_mcu[: rows * cols].reshape(rows, cols)


def conceal(image: np.ndarray, lost: np.ndarray) -> np.ndarray:
    """Fill lost MCUs (mask of MCU rows x columns) by vertical linear interpolation.

    Per MCU column, each lost pixel row becomes the linear blend of the nearest received
    pixel rows above and below (a copy of the one that exists at an edge); gray where
    the column received nothing.
    """
    height, width = image.shape[:2]
    out = image.copy()
    for col in np.flatnonzero(lost.any(axis=0)):
        known = np.repeat(~lost[:, col], MCU)[:height]
        x = slice(col * MCU, min((col + 1) * MCU, width))
        out[:, x] = _fill_rows(image[:, x], known)
    return out


def _fill_rows(strip: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Interpolate the rows of ``strip`` that are not ``known`` from those that are."""
    if not known.any():
        return np.full_like(strip, GRAY)
    height = len(known)
    y = np.arange(height)
    above = np.maximum.accumulate(np.where(known, y, -1))
    below = np.minimum.accumulate(np.where(known, y, height)[::-1])[::-1]
    a, b = np.clip(above, 0, height - 1), np.clip(below, 0, height - 1)
    span = (below - above).astype(np.float64)
    weight = np.divide(y - above, span, out=np.zeros(height), where=(above >= 0) & (below < height)
                       & (span > 0))
    weight[above < 0] = 1.0  # nothing above: copy the row below
    w = weight[:, None, None]
    blend = (1 - w) * strip[a].astype(np.float64) + w * strip[b].astype(np.float64)
    filled = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    return np.where(known[:, None, None], strip, filled)


def _gray(width: int, height: int) -> np.ndarray:
    return np.full((height, width, 3), GRAY, dtype=np.uint8)


def receive_datagrams(datagrams: Iterable[bytes], width: int, height: int) -> np.ndarray:
    """Reconstruct a (height, width, 3) uint8 picture from whatever datagrams arrived.

    Datagrams that fail the CRC, belong to another codec or describe another picture
    size are dropped. Never raises for any subset, order or duplication of the packets
    of one :class:`JpegPackets`; no packet gives flat gray.
    """
    _check_positive("width", width)
    _check_positive("height", height)
    parsed = [r for r in map(_parse, datagrams) if r is not None
              and (r[0].width, r[0].height) == (width, height)]
    if not parsed:
        return _gray(width, height)
    stream = parsed[0][0]
    arrivals = [a for s, a in parsed if s == stream]
    count = reference(width, height, stream.quality, stream.restart_blocks)[1]
    return _reconstruct(stream, _intervals(_chunks(arrivals), count))


def receive_jpeg(jp: JpegPackets, delivered: Iterable[int]) -> np.ndarray:
    """Reconstruct from the packets of ``jp`` whose indices (into ``jp.packets``) arrived."""
    indices = sorted(set(delivered))
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer))
           or not 0 <= i < len(jp.packets) for i in indices):
        raise InputError(f"delivered indices must be ints in [0, {len(jp.packets)})")
    return receive_datagrams([jp.packets[i] for i in indices], jp.width, jp.height)


def simulate(jp: JpegPackets, config: ChannelConfig, seed: int) -> np.ndarray:
    """Send ``jp`` through :func:`resilient_tx.transport.channel.transmit` and reconstruct."""
    delivered, _stats = transmit(list(jp.packets), config, seed)
    return receive_datagrams(delivered, jp.width, jp.height)
