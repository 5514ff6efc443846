"""JPEG-over-packets baseline: packetising, FEC, concealment."""

from __future__ import annotations

import numpy as np
import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.errors import InputError
from resilient_tx.eval import jpeg_baseline as jb
from resilient_tx.images import load_rgb
from resilient_tx.resilience.packet import HEADER_SIZE, Packet
from resilient_tx.transport.channel import ChannelConfig

MAX_PACKET = 300  # small packets: many of them from a small crop


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    # 120 x 200: neither side a multiple of the 16-px MCU.
    return np.ascontiguousarray(load_rgb(sample_path())[100:220, 200:400])


@pytest.fixture(scope="module")
def plain(crop: np.ndarray) -> jb.JpegPackets:
    return jb.packetize_jpeg(crop, 60, max_packet=MAX_PACKET)


@pytest.fixture(scope="module")
def protected(crop: np.ndarray) -> jb.JpegPackets:
    return jb.packetize_jpeg(crop, 60, max_packet=MAX_PACKET, parity=3, max_block=6)


def test_header_is_implicit_and_stream_reassembles(plain: jb.JpegPackets) -> None:
    header, intervals = jb.split_jpeg(plain.jpeg)
    template, count = jb.reference(plain.width, plain.height, plain.quality,
                                   plain.restart_blocks)
    tables = jb.huffman_tables(header)
    assert tables and tables != jb.huffman_tables(template)  # optimised, not Annex K
    assert jb.rebuild_header(template, tables) == header
    assert len(intervals) == count == plain.intervals
    assert jb.assemble(header, intervals) == plain.jpeg


@pytest.mark.parametrize("name", ["plain", "protected"])
def test_lossless_delivery_is_the_plain_decode(name: str, request: pytest.FixtureRequest) -> None:
    jp = request.getfixturevalue(name)
    out = jb.receive_jpeg(jp, range(len(jp.packets)))
    assert np.array_equal(out, jb.decode_jpeg(jp.jpeg))
    data_only = [i for i, d in enumerate(jp.packets) if not Packet.parse(d).is_parity]
    assert np.array_equal(jb.receive_jpeg(jp, data_only), out)


@pytest.mark.parametrize("name", ["plain", "protected"])
def test_packets_fit_and_bytes_add_up(name: str, request: pytest.FixtureRequest) -> None:
    jp = request.getfixturevalue(name)
    assert all(len(p) <= MAX_PACKET for p in jp.packets)
    assert jp.total_bytes == sum(len(p) for p in jp.packets)
    assert len(jp.packets) == jp.data_packets + jp.parity_packets
    # All scan bytes travel once (markers between packets are regenerated); every packet
    # adds its header, the Huffman tables with their length, and a chunk prefix; FEC adds
    # parity and shard framing.
    header, _ = jb.split_jpeg(jp.jpeg)
    scan = len(jp.jpeg) - len(header) - 2
    per_packet = HEADER_SIZE + 2 + len(jb.huffman_tables(header))
    assert jp.total_bytes >= scan + 2 + per_packet * len(jp.packets)
    if name == "plain":
        assert jp.total_bytes == scan + 2 + per_packet * len(jp.packets)


def test_parity_blocks(protected: jb.JpegPackets) -> None:
    assert len(protected.blocks) > 1
    assert all(k <= 6 and m == 3 for k, m in protected.blocks)


@pytest.mark.parametrize("name", ["plain", "protected"])
def test_any_subset_decodes(name: str, request: pytest.FixtureRequest) -> None:
    jp = request.getfixturevalue(name)
    rng = np.random.default_rng(0)
    n = len(jp.packets)
    subsets = [[], list(range(n))] + [
        np.flatnonzero(rng.random(n) < rng.random()).tolist() for _ in range(60)]
    for subset in subsets:
        out = jb.receive_jpeg(jp, subset)
        assert out.shape == (jp.height, jp.width, 3) and out.dtype == np.uint8
    assert (jb.receive_jpeg(jp, []) == jb.GRAY).all()


def test_fec_repairs_up_to_parity_losses(protected: jb.JpegPackets) -> None:
    lossless = jb.decode_jpeg(protected.jpeg)
    rng = np.random.default_rng(1)
    starts = np.cumsum([0] + [k + m for k, m in protected.blocks])
    for _ in range(15):
        lost = set()
        for (k, m), start in zip(protected.blocks, starts, strict=False):
            lost |= {int(start + i) for i in rng.choice(k + m, size=rng.integers(0, m + 1),
                                                       replace=False)}
        kept = [i for i in range(len(protected.packets)) if i not in lost]
        assert np.array_equal(jb.receive_jpeg(protected, kept), lossless)


def test_lost_interval_is_concealed_not_gray(plain: jb.JpegPackets) -> None:
    lossless = jb.decode_jpeg(plain.jpeg)
    kept = list(range(len(plain.packets)))
    kept.remove(len(kept) // 2)
    out = jb.receive_jpeg(plain, kept)
    diff = np.any(out != lossless, axis=2)
    assert diff.any()
    rows = np.flatnonzero(diff.any(axis=1))
    assert not (out[rows] == jb.GRAY).all()


def test_conceal_interpolates_between_rows() -> None:
    image = np.zeros((48, 16, 3), dtype=np.uint8)
    image[:16] = 10
    image[32:] = 90
    lost = np.array([[False], [True], [False]])
    out = jb.conceal(image, lost)
    # Rows 16..31 blend row 15 (10) and row 32 (90) linearly.
    expected = np.rint(10 + (np.arange(16, 32) - 15) / 17 * 80).astype(np.uint8)
    assert np.array_equal(out[16:32, 0, 0], expected)
    assert np.array_equal(out[:16], image[:16]) and np.array_equal(out[32:], image[32:])
    image[16:32] = 50
    edge = jb.conceal(image, np.array([[True], [False], [True]]))
    assert (edge[:16] == 50).all() and (edge[32:] == 50).all()
    assert (jb.conceal(image, np.ones((3, 1), bool)) == jb.GRAY).all()


def test_simulate_with_impairments_and_garbage(protected: jb.JpegPackets) -> None:
    config = ChannelConfig(loss_rate=0.3, duplicate_rate=0.2, corrupt_rate=0.2,
                           reorder_rate=0.3)
    for seed in range(5):
        out = jb.simulate(protected, config, seed)
        assert out.shape == (protected.height, protected.width, 3)
    junk = [b"", b"RTXP", b"hello world" * 10, protected.packets[0][:-1] + b"\x00"]
    out = jb.receive_datagrams(junk + list(protected.packets), protected.width,
                               protected.height)
    assert np.array_equal(out, jb.decode_jpeg(protected.jpeg))
    assert (jb.receive_datagrams(junk, 5, 7) == jb.GRAY).all()


def test_restart_interval_shrinks_to_fit_small_packets(crop: np.ndarray) -> None:
    jp = jb.packetize_jpeg(crop, 90, max_packet=HEADER_SIZE + 400)
    assert jp.restart_blocks < jb.mcu_grid(jp.width, jp.height)[1]
    assert all(len(p) <= HEADER_SIZE + 400 for p in jp.packets)
    assert np.array_equal(jb.receive_jpeg(jp, range(len(jp.packets))),
                          jb.decode_jpeg(jp.jpeg))
    with pytest.raises(InputError, match="does not fit"):  # one MCU alone is too big
        jb.packetize_jpeg(crop, 95, max_packet=HEADER_SIZE + 120)


@pytest.mark.parametrize("parity_fn", [None, jb.flat_parity(0.25),
                                       jb.profile_parity("light")])
def test_jpeg_at_bytes_respects_the_budget(crop: np.ndarray, parity_fn: jb.ParityFn | None) -> None:
    budget = 3000
    jp = jb.jpeg_at_bytes(crop, budget, parity_fn, max_packet=MAX_PACKET)
    assert jp.total_bytes <= budget
    if jp.quality < jb.MAX_QUALITY:
        bigger = jb.packetize_jpeg(crop, jp.quality + 1, MAX_PACKET,
                                   0 if parity_fn is None else parity_fn)
        assert bigger.total_bytes > budget
    if parity_fn is not None:
        assert jp.parity_packets > 0


def test_quality_for_bytes(crop: np.ndarray) -> None:
    q = jb.quality_for_bytes(crop, 2500)
    assert len(jb.encode_jpeg(crop, q)) <= 2500 < len(jb.encode_jpeg(crop, q + 1))
    with pytest.raises(InputError, match="unreachable"):
        jb.quality_for_bytes(crop, 50)
    with pytest.raises(InputError, match="unreachable"):
        jb.jpeg_at_bytes(crop, 100)


@pytest.mark.parametrize("call", [
    lambda img: jb.packetize_jpeg(img, 0),
    lambda img: jb.packetize_jpeg(img, 50, parity=-1),
    lambda img: jb.packetize_jpeg(img, 50, max_packet=HEADER_SIZE),
    lambda img: jb.packetize_jpeg(img, 50, parity=lambda k: 300),
    lambda img: jb.packetize_jpeg(img[..., 0], 50),
    lambda img: jb.packetize_jpeg(img.astype(np.float32), 50),
    lambda img: jb.flat_parity(-0.1),
    lambda img: jb.jpeg_at_bytes(img, 0),
])
def test_bad_arguments_raise_input_error(crop: np.ndarray, call) -> None:
    with pytest.raises(InputError):
        call(crop)


def test_bad_delivered_indices(plain: jb.JpegPackets) -> None:
    with pytest.raises(InputError):
        jb.receive_jpeg(plain, [len(plain.packets)])
    with pytest.raises(InputError):
        jb.receive_jpeg(plain, [-1])


def test_received_intervals_decode_exactly_around_a_loss(crop: np.ndarray) -> None:
    jp = jb.packetize_jpeg(crop, 40, max_packet=400)
    assert jp.restart_blocks == jb.mcu_grid(jp.width, jp.height)[1]  # one MCU row each
    assert len(jp.packets) >= 3
    parsed = jb._parse(jp.packets[1])
    assert parsed is not None
    lost = sorted(jb._intervals([parsed[1].body], jp.intervals))
    out = jb.receive_jpeg(jp, [i for i in range(len(jp.packets)) if i != 1])
    lossless = jb.decode_jpeg(jp.jpeg)
    # Only the lost MCU rows and the pixel row either side (chroma upsampling) change.
    top, bottom = lost[0] * jb.MCU - 1, (lost[-1] + 1) * jb.MCU + 1
    assert np.array_equal(out[:top], lossless[:top])
    assert np.array_equal(out[bottom:], lossless[bottom:])
    assert not np.array_equal(out[top:bottom], lossless[top:bottom])
