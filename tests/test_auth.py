"""Packet authentication (resilient_tx.resilience.auth): keys, tags, the replay window."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.errors import AuthenticationError, InputError, PacketError
from resilient_tx.resilience.auth import (
    PacketKey,
    ReplayWindow,
    Signer,
    Verifier,
    load_key,
)
from resilient_tx.resilience.packet import TAG_SIZE, Packet, Trailer

EXAMPLES = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
NOW = 1_800_000_000.0  # a fixed wall clock for sender and receiver
KEY = PacketKey.from_secret(b"k" * 32)


def clock() -> float:
    return NOW


def packet(index: int = 0, **overrides: object) -> Packet:
    fields = dict(image_id=7, model_id=bytes(range(8)), width=64, height=48, rate_point=0,
                  stage=1, index=index, k=2, n=4, payload=b"shard-%d" % index, flags=2)
    fields.update(overrides)
    return Packet(**fields)  # type: ignore[arg-type]


def reason(verifier: Verifier, data: bytes) -> str:
    with pytest.raises(AuthenticationError) as info:
        verifier.open(data)
    return info.value.reason


def test_signed_packets_are_accepted_and_round_trip() -> None:
    signer, verifier = Signer(KEY, clock=clock), Verifier(KEY, clock=clock)
    for i in range(4):
        got = verifier.open(signer.sign(packet(i)))
        assert got.payload == b"shard-%d" % i and got.flags == 2
        assert got.trailer is not None and got.trailer.sender_id == signer.sender_id


def test_unsigned_forged_truncated_and_other_key_are_rejected() -> None:
    signer, verifier = Signer(KEY, clock=clock), Verifier(KEY, clock=clock)
    good = signer.sign(packet())
    assert reason(verifier, bytes(packet())) == "unauthenticated"
    forged = bytearray(good)
    forged[40] ^= 1  # a payload byte: the CRC would catch it too, the tag first
    assert reason(verifier, bytes(forged)) == "bad_tag"
    assert reason(verifier, good[:-TAG_SIZE] + bytes(TAG_SIZE)) == "bad_tag"
    assert reason(verifier, good[:-1]) == "bad_tag"  # truncated tag
    assert reason(verifier, good[:40]) == "bad_tag"
    other = Signer(PacketKey.from_secret(b"o" * 32), clock=clock)
    assert reason(verifier, other.sign(packet())) == "bad_tag"
    # A forger who recomputes the CRC still has no tag.
    trailer = Packet.parse(good).trailer
    assert trailer is not None
    rebuilt = bytes(Packet(**{**Packet.parse(good).__dict__, "image_id": 8}))
    assert reason(verifier, rebuilt) == "bad_tag"
    assert verifier.open(good).image_id == 7  # the genuine one still passes


def test_replays_are_rejected_within_and_across_senders() -> None:
    signer, verifier = Signer(KEY, clock=clock), Verifier(KEY, clock=clock)
    first = [signer.sign(packet(i)) for i in range(3)]
    for d in first:
        verifier.open(d)
    assert [reason(verifier, d) for d in first] == ["replay"] * 3
    # A second sender (its own id) is independent of the first.
    assert verifier.open(Signer(KEY, clock=clock).sign(packet())).index == 0


def test_old_captures_are_rejected_even_by_a_fresh_receiver() -> None:
    old = Signer(KEY, clock=lambda: NOW - 3600).sign(packet())
    assert reason(Verifier(KEY, clock=clock), old) == "replay"
    future = Signer(KEY, clock=lambda: NOW + 3600).sign(packet())
    assert reason(Verifier(KEY, clock=clock), future) == "replay"


def test_window_memory_is_bounded_and_forgetting_never_reopens_a_replay() -> None:
    window = ReplayWindow(max_age=60, depth=4, max_senders=2)
    ids = [bytes([i]) * 8 for i in range(3)]
    base = int(NOW * 1e6)
    for seq in range(base, base + 10):
        window.check(Trailer(ids[0], seq), NOW)
    with pytest.raises(AuthenticationError):
        window.check(Trailer(ids[0], base + 2), NOW)  # forgotten, so refused
    window.check(Trailer(ids[1], base), NOW)
    window.check(Trailer(ids[2], base), NOW)  # evicts ids[0]
    assert len(window._senders) == 2 and all(len(s.order) <= 4 for s in window._senders.values())
    with pytest.raises(AuthenticationError):
        window.check(Trailer(ids[0], base + 9), NOW)


@EXAMPLES
@given(st.binary(max_size=200), st.booleans())
def test_arbitrary_bytes_raise_only_packet_error(data: bytes, signed_prefix: bool) -> None:
    verifier = Verifier(KEY, clock=clock)
    if signed_prefix:
        data = Signer(KEY, clock=clock).sign(packet())[: len(data) % 120] + data
    try:
        verifier.open(data)
    except PacketError:
        return


def test_sequence_numbers_grow_even_with_a_stuck_clock() -> None:
    signer = Signer(KEY, clock=clock)
    seqs = [signer.next_seq() for _ in range(5)]
    assert seqs == sorted(set(seqs)) and seqs[0] == int(NOW * 1e6)


def test_key_files(tmp_path: Path) -> None:
    warnings: list[str] = []
    with pytest.raises(InputError, match="does not exist"):
        load_key(tmp_path / "missing", warnings.append)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="is empty"):
        load_key(empty)
    short = tmp_path / "short"
    short.write_bytes(b"x" * 15)
    with pytest.raises(InputError, match="at least 16"):
        load_key(short)
    good = tmp_path / "good"
    good.write_bytes(b"s" * 32)
    os.chmod(good, 0o600)
    assert load_key(good, warnings.append) == PacketKey.from_secret(b"s" * 32)
    assert warnings == []
    os.chmod(good, 0o644)
    load_key(good, warnings.append)
    assert len(warnings) == 1 and "readable by group or others" in warnings[0]
    assert "s" * 16 not in repr(load_key(good))  # the key never shows in a repr


def test_derived_key_differs_from_the_secret() -> None:
    assert KEY.key != b"k" * 32 and len(KEY.key) == 32
    with pytest.raises(InputError):
        PacketKey.from_secret(b"short")
