"""Classical image files over a lossy packet channel, with an erasure code across the file.

The fair classical baseline for AVIF and WebP (and a JPEG without restart markers): such a
file has no resynchronisation points, so losing any byte of it loses the whole picture
unless the erasure code gives it back. The whole file is therefore cut into equal packets
with systematic Reed-Solomon parity across them, and either all of it arrives (directly or
repaired) or nothing useful does.

Packets. A file of L bytes is cut into k chunks of ceil(L / k) bytes (the last one
shorter), k the fewest whose shard fits one ``max_packet`` packet.
:func:`resilient_tx.resilience.fec.encode_shards` frames each chunk with its u16 length
prefix, pads the shards to one length and adds ``parity`` parity shards: n = k + parity
<= 255, one RS codeword over GF(256) per byte position. Every packet is counted as
:data:`~resilient_tx.resilience.packet.HEADER_SIZE` bytes of header (the size of the
header our own packets carry, so the comparison with our transmission is at equal bytes
on the wire) plus its shard. The header's fields are not modelled: which packets arrive
is all that matters to the receiver of one RS codeword.

Receiving. The code is MDS: the file comes back exactly iff at least k of the n packets
arrive, and then decodes to the encoder's picture. Otherwise the receiver shows flat
mid-grey (:data:`GRAY`, the same picture :mod:`~resilient_tx.eval.jpeg_baseline` shows
when no packet of a JPEG arrives). Not the image's mean colour: a receiver only knows it
from a packet, and nothing in these packets but the file describes the picture.
:func:`receive` really decodes the shards that arrived (:func:`fec.decode_shards`) and
the recovered file.

Choosing the operating point. :func:`at_bytes` picks the highest quality whose total
wire bytes fit a budget, by bisection over :data:`classical.QUALITY_RANGE` (assuming size
grows with quality; encodes are cached per quality). :func:`tuned_for_loss` also picks the
parity fraction and packet size, for an assumed loss rate: the plan with the highest
expected PSNR, P(decode) x PSNR(file) + (1 - P(decode)) x PSNR(grey). P(decode) is exact
(:func:`decode_probability`): binomial for i.i.d. loss, and a forward recursion over the
two-state chain of :mod:`resilient_tx.transport.channel` for Gilbert loss.

Channel. :func:`simulate` draws the seeded loss mask that
:func:`resilient_tx.transport.channel.transmit` applies (:func:`channel.loss_pattern`).
Duplicates and reordering change nothing for one codeword across the whole file;
corruption is refused, since a CRC-dropped packet would need the header this module only
counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import InputError, ResilientTxError
from resilient_tx.eval import classical, jpeg_baseline, metrics
from resilient_tx.resilience import fec
from resilient_tx.resilience.packet import HEADER_SIZE
from resilient_tx.transport.channel import ChannelConfig, loss_pattern

GRAY = jpeg_baseline.GRAY  # what a total loss shows, as for the packetised JPEG
#: Parity fractions (parity / k) that :func:`tuned_for_loss` tries: dense where i.i.d. loss
#: of 5-50 % puts the optimum, up to the 4x that Gilbert bursts at high loss may need.
PARITY_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0,
                    2.5, 3.0, 4.0)
#: Packet sizes :func:`tuned_for_loss` tries: ``max_packet // d``. Smaller packets average
#: the loss over more of them, at the price of more headers.
PACKET_DIVISORS = (1, 2, 3, 4)


@dataclass(frozen=True)
class FilePackets:
    """One image file cut into ``k`` equal data packets plus ``parity`` RS parity packets."""

    codec: str  # "AVIF", "WEBP" or "JPEG"
    quality: int
    k: int
    parity: int
    packet_size: int  # wire bytes of every packet: header, length prefix, chunk, padding
    total_bytes: int  # n x packet_size: what the transmission costs on the wire
    data: bytes = field(repr=False)  # the file
    shards: tuple[bytes, ...] = field(repr=False, compare=False)  # data then parity
    decoded: np.ndarray = field(repr=False, compare=False)  # the picture when it all arrives

    @property
    def n(self) -> int:
        return self.k + self.parity

    @property
    def width(self) -> int:
        return int(self.decoded.shape[1])

    @property
    def height(self) -> int:
        return int(self.decoded.shape[0])


@dataclass(frozen=True)
class _Layout:
    """How a file of some length is cut: k, parity, chunk bytes and wire bytes per packet."""

    k: int
    parity: int
    chunk: int
    packet_size: int

    @property
    def total_bytes(self) -> int:
        return (self.k + self.parity) * self.packet_size


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 \
            or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise InputError("image must be a non-empty (H, W, 3) uint8 array")


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{name} must be an int >= 1, got {value!r}")


def _parity_count(k: int, parity_fraction: float | None, parity: int | None) -> int:
    """Parity packets for k data packets: exactly one of a fraction or a count is given."""
    if parity_fraction is not None and parity is None:
        return jpeg_baseline.flat_parity(parity_fraction)(k)  # checks the fraction
    if parity is None or parity_fraction is not None:
        raise InputError("give exactly one of parity_fraction and parity")
    if isinstance(parity, bool) or not isinstance(parity, int) or parity < 0:
        raise InputError(f"parity must be an int >= 0, got {parity!r}")
    return parity


def _layout(file_bytes: int, max_packet: int, parity_fraction: float | None,
            parity: int | None) -> _Layout | None:
    """The cut of a ``file_bytes`` file into packets of at most ``max_packet`` bytes; None
    when it needs more than one RS codeword (n > 255)."""
    capacity = fec.max_chunk_size(max_packet)  # InputError when no payload fits
    k = max(1, math.ceil(file_bytes / capacity))
    m = _parity_count(k, parity_fraction, parity)
    if k + m > fec.MAX_CODEWORD:
        return None
    chunk = math.ceil(file_bytes / k)
    return _Layout(k, m, chunk, HEADER_SIZE + fec.PREFIX_SIZE + chunk)


def _file(image: np.ndarray, codec: str, quality: int,
          cache: metrics.EncodeCache | None) -> bytes:
    """The encoded file, from ``cache`` (quality -> bytes) when it has it."""
    if cache is not None and quality in cache:
        return cache[quality]
    data = classical.encode(image, codec, quality)
    if cache is not None:
        cache[quality] = data
    return data


def _build(image: np.ndarray, codec: str, quality: int, lay: _Layout,
           cache: metrics.EncodeCache | None) -> FilePackets:
    data = _file(image, codec, quality, cache)
    chunks = [data[i * lay.chunk: (i + 1) * lay.chunk] for i in range(lay.k)]
    shards = tuple(fec.encode_shards(chunks, lay.parity))
    return FilePackets(codec=codec, quality=quality, k=lay.k, parity=lay.parity,
                       packet_size=lay.packet_size, total_bytes=lay.total_bytes, data=data,
                       shards=shards, decoded=classical.decode(data))


def packetize_file(image: np.ndarray, codec: str, quality: int, *,
                   parity_fraction: float | None = None, parity: int | None = None,
                   max_packet: int = DEFAULT_MAX_PACKET,
                   cache: metrics.EncodeCache | None = None) -> FilePackets:
    """Encode ``image`` with ``codec`` at ``quality`` and cut the file into packets.

    Parity is ``parity`` packets, or ``ceil(parity_fraction * k)`` (exactly one of the
    two). ``cache`` (quality -> bytes, for this image and codec) is read and filled.
    Raises :class:`InputError` for bad arguments, an unavailable codec
    (:class:`classical.CodecUnavailableError`), or a file that needs n > 255 packets.
    """
    c = classical.check_codec(codec)
    _check_image(image)
    lay = _layout(len(_file(image, c, quality, cache)), max_packet, parity_fraction, parity)
    if lay is None:
        raise InputError(f"{c} quality {quality} needs more than {fec.MAX_CODEWORD} packets "
                         f"of {max_packet} bytes with that parity: use larger packets")
    return _build(image, c, quality, lay, cache)


def _fit(image: np.ndarray, codec: str, budget_bytes: int, parity_fraction: float,
         max_packet: int, cache: metrics.EncodeCache) -> tuple[int, _Layout] | None:
    """(quality, layout) of the highest quality whose wire bytes fit the budget."""
    def layout_at(quality: int) -> _Layout | None:
        size = len(_file(image, codec, quality, cache))
        lay = _layout(size, max_packet, parity_fraction, None)
        return lay if lay is not None and lay.total_bytes <= budget_bytes else None

    low, high = classical.QUALITY_RANGE[codec]
    if layout_at(low) is None:
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if layout_at(mid) is not None else (low, mid - 1)
    lay = layout_at(low)
    return None if lay is None else (low, lay)


def at_bytes(image: np.ndarray, codec: str, budget_bytes: int, parity_fraction: float,
             max_packet: int = DEFAULT_MAX_PACKET,
             cache: metrics.EncodeCache | None = None) -> FilePackets | None:
    """The highest-quality packetisation whose total wire bytes fit ``budget_bytes``, with
    ``ceil(parity_fraction * k)`` parity packets; None when even the lowest quality does
    not fit (or would need n > 255 packets)."""
    c = classical.check_codec(codec)
    _check_image(image)
    _check_positive("budget_bytes", budget_bytes)
    enc: metrics.EncodeCache = {} if cache is None else cache
    found = _fit(image, c, budget_bytes, parity_fraction, max_packet, enc)
    return None if found is None else _build(image, c, found[0], found[1], enc)


# ------------------------------------------------------------------------ probability


def assumed_channel(loss_rate: float, burst: float = 1.0) -> ChannelConfig:
    """The channel a plan assumes: i.i.d. (Bernoulli) loss at ``burst`` = 1, else Gilbert
    loss with that mean burst length (in packets)."""
    if burst == 1.0:
        return ChannelConfig(loss_model="bernoulli", loss_rate=loss_rate)
    return ChannelConfig(loss_model="gilbert", loss_rate=loss_rate, burst_length=burst)


def decode_probability(k: int, n: int, config: ChannelConfig) -> float:
    """P(at least k of n packets arrive) over ``config``'s loss model, exactly."""
    _check_positive("k", k)
    if isinstance(n, bool) or not isinstance(n, int) or n < k:
        raise InputError(f"n must be an int >= k = {k}, got {n!r}")
    m, p = n - k, config.loss_rate
    if p == 0:
        return 1.0
    if config.loss_model == "bernoulli":
        return min(1.0, sum(math.comb(n, j) * p ** j * (1 - p) ** (n - j)
                            for j in range(m + 1)))
    return _gilbert_decode(n, m, config)


def _gilbert_decode(n: int, m: int, config: ChannelConfig) -> float:
    """P(at most m of n losses) on the simple Gilbert chain, started stationary.

    ``good[j]``, ``bad[j]``: probability of being in that state before the next packet
    with j packets lost so far; j = m + 1 collects every count beyond m.
    """
    q, r = config.transitions
    good = np.zeros(m + 2)
    bad = np.zeros(m + 2)
    good[0], bad[0] = 1 - config.loss_rate, config.loss_rate
    for _ in range(n):
        lost = np.zeros(m + 2)  # the Bad state loses this packet: its count moves up one
        lost[1:] = bad[:-1]
        lost[-1] += bad[-1]
        good, bad = good * (1 - q) + lost * r, good * q + lost * (1 - r)
    return float(min(1.0, (good + bad)[: m + 1].sum()))


def fallback(width: int, height: int) -> np.ndarray:
    """What the receiver shows when the file does not come back: flat mid-grey."""
    return np.full((height, width, 3), GRAY, dtype=np.uint8)


def expected_psnr(fp: FilePackets, image: np.ndarray, config: ChannelConfig) -> float:
    """Expected PSNR of ``fp`` against ``image`` over ``config``'s loss (exact)."""
    _check_image(image)
    return _expected(decode_probability(fp.k, fp.n, config), metrics.psnr(image, fp.decoded),
                     metrics.psnr(image, fallback(fp.width, fp.height)))


def _expected(p_decode: float, psnr_file: float, psnr_fallback: float) -> float:
    return p_decode * psnr_file + (1 - p_decode) * psnr_fallback


def tuned_for_loss(image: np.ndarray, codec: str, budget_bytes: int, loss_rate: float,
                   max_packet: int = DEFAULT_MAX_PACKET, burst: float = 1.0,
                   cache: metrics.EncodeCache | None = None,
                   fractions: Sequence[float] = PARITY_FRACTIONS,
                   divisors: Sequence[int] = PACKET_DIVISORS) -> FilePackets | None:
    """The plan planned once for an assumed loss: within ``budget_bytes`` on the wire, the
    parity fraction (of ``fractions``) and packet size (``max_packet // d`` for d in
    ``divisors``) whose highest fitting quality has the best expected PSNR under
    :func:`assumed_channel` (``loss_rate``, ``burst``). None when nothing fits.

    Ties go to the first candidate found (larger packets, less parity): the cheaper plan.
    """
    c = classical.check_codec(codec)
    _check_image(image)
    _check_positive("budget_bytes", budget_bytes)
    config = assumed_channel(loss_rate, burst)
    enc: metrics.EncodeCache = {} if cache is None else cache
    psnr_at: dict[int, float] = {}
    grey = metrics.psnr(image, fallback(image.shape[1], image.shape[0]))
    best: tuple[float, int, _Layout] | None = None
    for size in _packet_sizes(max_packet, divisors):
        for frac in fractions:
            found = _fit(image, c, budget_bytes, frac, size, enc)
            if found is None:
                continue
            quality, lay = found
            if quality not in psnr_at:
                psnr_at[quality] = metrics.psnr(image, classical.decode(enc[quality]))
            score = _expected(decode_probability(lay.k, lay.k + lay.parity, config),
                              psnr_at[quality], grey)
            if best is None or score > best[0]:
                best = (score, quality, lay)
    return None if best is None else _build(image, c, best[1], best[2], enc)


def _packet_sizes(max_packet: int, divisors: Sequence[int]) -> list[int]:
    """The distinct packet sizes ``max_packet // d`` that leave room for a chunk byte."""
    fec.max_chunk_size(max_packet)  # InputError for a max_packet with no room at all
    smallest = HEADER_SIZE + fec.PREFIX_SIZE + 1
    sizes = []
    for d in divisors:
        _check_positive("packet divisor", d)
        if (size := max_packet // d) >= smallest and size not in sizes:
            sizes.append(size)
    return sizes


# ------------------------------------------------------------------------ receiving


def receive(fp: FilePackets, arrived: Iterable[int]) -> np.ndarray:
    """The picture from the packets of ``fp`` whose indices (0..n-1) arrived: the file's
    picture when RS gives the file back, else :func:`fallback`."""
    got = sorted(set(arrived))
    if any(isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < fp.n
           for i in got):
        raise InputError(f"arrived indices must be ints in [0, {fp.n})")
    chunks = fec.decode_shards({int(i): fp.shards[i] for i in got}, fp.k, fp.parity)
    if chunks is None:
        return fallback(fp.width, fp.height)
    data = b"".join(chunks)
    if data != fp.data:  # RS is exact on erasures: a difference is a bug, not a loss
        raise ResilientTxError(f"RS gave back a different {fp.codec} file")
    return classical.decode(data)


def arrivals(fp: FilePackets, config: ChannelConfig, seed: int) -> list[int]:
    """Indices of the packets of ``fp`` that arrive over ``config`` with ``seed``."""
    if config.corrupt_rate > 0:
        raise InputError("file_fec models loss only: a corrupted packet needs the CRC of a "
                         "real header (set corrupt_rate to 0)")
    return [int(i) for i in np.flatnonzero(~loss_pattern(fp.n, config, seed))]


def simulate(fp: FilePackets, config: ChannelConfig, seed: int) -> np.ndarray:
    """The received picture for one seeded loss pattern (the mask that
    :func:`resilient_tx.transport.channel.transmit` would apply to ``fp``'s packets)."""
    return receive(fp, arrivals(fp, config, seed))
