"""Reed-Solomon erasure coding across a stage's chunks, and the FEC profiles."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import reedsolo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.config import DEFAULT_MAX_PACKET
from resilient_tx.errors import BitstreamError, ConfigError, FecError, InputError
from resilient_tx.resilience import fec, uep
from resilient_tx.resilience.packet import HEADER_SIZE

EXAMPLES = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def stages(draw: st.DrawFn) -> tuple[list[bytes], int]:
    """k chunks of unequal (possibly zero) length and a parity count."""
    k = draw(st.integers(1, 12))
    chunks = draw(st.lists(st.binary(max_size=48), min_size=k, max_size=k))
    return chunks, draw(st.integers(0, 8))


def random_chunks(rng: np.random.Generator, k: int, size: int) -> list[bytes]:
    return [rng.integers(0, 256, int(rng.integers(size // 2, size + 1)),
                         dtype=np.uint8).tobytes() for _ in range(k)]


def keep(shards: list[bytes], lost: set[int]) -> dict[int, bytes]:
    return {i: s for i, s in enumerate(shards) if i not in lost}


# ---------------------------------------------------------------------------- coding


@EXAMPLES
@given(stages(), st.data())
def test_recovers_from_any_erasures_up_to_parity(stage: tuple[list[bytes], int],
                                                 data: st.DataObject) -> None:
    chunks, parity = stage
    shards = fec.encode_shards(chunks, parity)
    n = len(chunks) + parity
    lost = data.draw(st.sets(st.integers(0, n - 1), max_size=parity))
    assert fec.decode_shards(keep(shards, lost), len(chunks), parity) == chunks


@EXAMPLES
@given(stages(), st.data())
def test_more_erasures_than_parity_fail_cleanly(stage: tuple[list[bytes], int],
                                                data: st.DataObject) -> None:
    chunks, parity = stage
    shards = fec.encode_shards(chunks, parity)
    n = len(chunks) + parity
    lost = data.draw(st.sets(st.integers(0, n - 1), min_size=parity + 1))
    assert fec.decode_shards(keep(shards, lost), len(chunks), parity) is None
    # The data shards that did arrive are still usable one by one.
    for i in set(range(len(chunks))) - lost:
        assert fec.strip_shard(shards[i]) == chunks[i]


@EXAMPLES
@given(stages())
def test_shards_are_systematic_and_equal_length(stage: tuple[list[bytes], int]) -> None:
    chunks, parity = stage
    shards = fec.encode_shards(chunks, parity)
    assert len(shards) == len(chunks) + parity
    assert {len(s) for s in shards} == {fec.PREFIX_SIZE + max(map(len, chunks))}
    assert [fec.strip_shard(s) for s in shards[: len(chunks)]] == chunks


@pytest.mark.parametrize(("k", "parity"), [(1, 1), (3, 2), (20, 8), (200, 55)])
def test_every_byte_column_is_a_reedsolo_codeword(rng: np.random.Generator, k: int,
                                                  parity: int) -> None:
    # The batched (matrix) encoder must produce exactly reedsolo's per-codeword output.
    shards = fec.encode_shards(random_chunks(rng, k, 40), parity)
    columns = np.stack([np.frombuffer(s, dtype=np.uint8) for s in shards])
    codec = reedsolo.RSCodec(parity)
    for j in range(columns.shape[1]):
        assert bytes(codec.encode(bytes(columns[:k, j]))) == columns[:, j].tobytes()


def test_realistic_stage_worst_case(rng: np.random.Generator) -> None:
    # k = 20 chunks filling 1200-byte packets, 8 parity, the 8 lost shards all data.
    size = fec.max_chunk_size(DEFAULT_MAX_PACKET)
    assert size == DEFAULT_MAX_PACKET - HEADER_SIZE - fec.PREFIX_SIZE
    chunks = random_chunks(rng, 20, size)
    shards = fec.encode_shards(chunks, 8)
    assert max(len(s) for s in shards) <= DEFAULT_MAX_PACKET - HEADER_SIZE
    for lost in ({0, 2, 4, 6, 8, 10, 12, 14}, set(rng.choice(28, 8, replace=False).tolist())):
        assert fec.decode_shards(keep(shards, lost), 20, 8) == chunks
    assert fec.decode_shards(keep(shards, set(range(9))), 20, 8) is None


def test_extra_shards_beyond_k_are_harmless(rng: np.random.Generator) -> None:
    chunks = random_chunks(rng, 5, 30)
    shards = fec.encode_shards(chunks, 4)
    assert fec.decode_shards(dict(enumerate(shards)), 5, 4) == chunks
    assert fec.decode_shards(keep(shards, {1}), 5, 4) == chunks


def test_fec_error_is_a_bitstream_error() -> None:
    assert issubclass(FecError, BitstreamError)


@pytest.mark.parametrize(
    ("shards", "k", "parity", "message"),
    [
        ({0: b"\x01\x00a", 3: b"\x01\x00b"}, 2, 1, "outside"),
        ({0: b"\x01\x00a", 1: b"\x01\x00bb"}, 2, 1, "differ in length"),
        ({0: b"\x01"}, 1, 0, "length prefix"),
        ({0: b"\x05\x00ab"}, 1, 0, "exceeds"),
        ({}, 0, 1, "k must be"),
        ({}, 2, -1, "parity must be"),
        ({}, 200, 56, "exceeds the 255"),
    ],
)
def test_contradictory_shards_raise_fec_error(shards: dict[int, bytes], k: int, parity: int,
                                              message: str) -> None:
    with pytest.raises(FecError, match=message):
        fec.decode_shards(shards, k, parity)


def test_lying_length_prefix_in_a_recovered_shard_is_caught() -> None:
    # A buggy sender wrote prefix 9 into a 4-byte shard and protected it consistently:
    # FEC faithfully rebuilds the lie, and decode must refuse it rather than return
    # padding as chunk bytes.
    rows = [b"\x09\x00ab", b"\x02\x00cd"]
    codec = reedsolo.RSCodec(1)
    parity = bytes(codec.encode(bytes(col))[2] for col in zip(*rows, strict=True))
    with pytest.raises(FecError, match="exceeds"):
        fec.decode_shards({1: rows[1], 2: parity}, 2, 1)


@pytest.mark.parametrize(
    ("chunks", "parity", "message"),
    [
        ([], 2, "k must be"),
        ([b"a"], -1, "parity must be"),
        ([b"a"] * 250, 6, "exceeds the 255"),
        ([b"a", "text"], 1, "chunk 1"),
        ([bytes(fec.MAX_CHUNK + 1)], 1, "chunk 0"),
    ],
)
def test_encode_validates_input(chunks: list[bytes], parity: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        fec.encode_shards(chunks, parity)


def test_maximal_chunk_still_fits_a_packet_payload() -> None:
    shards = fec.encode_shards([bytes(fec.MAX_CHUNK), b""], 1)
    assert {len(s) for s in shards} == {0xFFFF}
    assert fec.decode_shards({1: shards[1], 2: shards[2]}, 2, 1) == [bytes(fec.MAX_CHUNK), b""]


# ---------------------------------------------------------------------------- profiles


def test_named_profiles_load_and_protect_early_stages_more() -> None:
    profiles = fec.load_profiles()
    assert {"none", "light", "strong"} <= set(profiles)
    ks = (2, 2, 4, 8, 16)
    assert profiles["none"].parities(ks) == (0, 0, 0, 0, 0)
    light, strong = profiles["light"].parities(ks), profiles["strong"].parities(ks)
    for parities in (light, strong):
        ratios = [m / k for m, k in zip(parities, ks, strict=True)]
        assert ratios == sorted(ratios, reverse=True) and ratios[0] > ratios[-1]
    assert all(s >= m for s, m in zip(strong, light, strict=True)) and strong != light


def test_profile_parity_rule() -> None:
    profile = fec.FecProfile("t", overhead=(1.0, 0.5, 0.1), min_parity=(3, 1, 0))
    assert profile.parity(1, 1) == 3  # min_parity wins for a tiny stage
    assert profile.parity(1, 10) == 10
    assert profile.parity(2, 5) == 3  # ceil(2.5)
    assert profile.parity(3, 30) == 3  # 0.1 * 30 is 3.0000000000000004 in floats
    assert profile.parity(7, 30) == 3  # stages past the tuple reuse the last entry
    assert profile.parity(1, 200) == 55  # capped by the GF(256) codeword
    with pytest.raises(InputError):
        profile.parity(0, 5)
    with pytest.raises(InputError):
        profile.parity(1, 0)


def binomial_tail(n: int, p: float, m: int) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(m + 1, n + 1))


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
@pytest.mark.parametrize("k", [1, 4, 20])
def test_loss_parity_is_the_least_that_meets_the_target(k: int, p: float) -> None:
    target = 1e-3
    m = fec.loss_parity(k, p, target)
    assert binomial_tail(k + m, p, m) <= target
    assert m == 0 or binomial_tail(k + m - 1, p, m - 1) > target


def test_loss_rate_targets_are_a_per_stage_rule() -> None:
    profile = fec.FecProfile("t", loss_rate=0.3, targets=(1e-4, 1e-2))
    assert profile.parity(1, 8) == fec.loss_parity(8, 0.3, 1e-4)
    assert profile.parity(2, 8) == fec.loss_parity(8, 0.3, 1e-2) < profile.parity(1, 8)
    with pytest.raises(ConfigError, match="may not decrease"):
        fec.FecProfile("t", loss_rate=0.2, targets=(0.1, 0.01))


def shapes(ks: tuple[int, ...], size: int = 500) -> list[uep.StageShape]:
    return [uep.StageShape(k, size, share, s - 1 if s <= 2 else 2)
            for s, (k, share) in enumerate(zip(ks, (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2),
                                               strict=True), start=1)]


def test_for_loss_plans_unequal_parity_that_grows_with_the_loss_rate() -> None:
    stages = shapes((1, 1, 2, 4, 8))
    low, high = fec.for_loss(0.1).plan(stages), fec.for_loss(0.4).plan(stages)
    assert all(h >= lo for h, lo in zip(high, low, strict=True)) and high != low
    assert fec.for_loss(0.0).plan(stages) == (0, 0, 0, 0, 0)
    # Stages 1 and 2 condition everything: relative to their size they get the most.
    ratios = [m / st.k for m, st in zip(high, stages, strict=True)]
    assert min(ratios[:2]) > max(ratios[2:])


def test_a_rule_profile_plans_by_its_rules() -> None:
    strong = fec.get_profile("strong")
    assert strong.plan(shapes((1, 1, 2, 4, 8))) == strong.parities((1, 1, 2, 4, 8))


def test_for_loss_validates_and_reads_its_model(tmp_path: Path) -> None:
    for bad in (-0.1, 1.0, float("nan"), "0.3"):
        with pytest.raises(InputError):
            fec.for_loss(bad)  # type: ignore[arg-type]
    cheap = uep.DistortionModel(db_per_lost=1.0)  # losses hardly matter: less parity
    stages = shapes((1, 1, 2, 4, 8))
    assert sum(fec.for_loss(0.3, cheap).plan(stages)) < sum(fec.for_loss(0.3).plan(stages))


def test_unknown_profile_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="available: light, none, strong"):
        fec.get_profile("medium")
    assert fec.get_profile("strong").name == "strong"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overhead": (0.2, 0.5)}, "may not increase"),
        ({"min_parity": (1, 2)}, "may not increase"),
        ({"overhead": (-0.1,)}, "invalid entry"),
        ({"overhead": (float("inf"),)}, "invalid entry"),
        ({"min_parity": (1.5,)}, "invalid entry"),
        ({"overhead": ()}, "non-empty"),
        ({"targets": (0.0,)}, "invalid entry"),
        ({"loss_rate": 1.0}, "loss_rate"),
    ],
)
def test_profile_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fec.FecProfile("bad", **kwargs)  # type: ignore[arg-type]


def test_profiles_from_a_custom_yaml(tmp_path: Path) -> None:
    good = tmp_path / "fec.yaml"
    good.write_text("profiles:\n  mine: {overhead: [1, 0.5], min_parity: [2, 1]}\n"
                    "  lossy: {loss_rate: 0.2, targets: [1e-4, 1e-2]}\n"
                    "for_loss: {db_per_lost: 5e0, db_per_doubling: 2}\n")
    profiles = fec.load_profiles(good)
    assert profiles["mine"].parities((4, 4, 4)) == (4, 2, 2)
    assert profiles["lossy"].targets == (1e-4, 1e-2)  # '1e-4' is a string to PyYAML
    assert fec.for_loss(0.2, path=good).distortion == uep.DistortionModel(5.0, 2.0)
    bad = tmp_path / "bad.yaml"
    for text, message in [
        ("profiles: {}\nfor_loss: {}\n", "must map names"),
        ("profiles: {a: {overhead: [1]}}\n", "exactly the sections"),
        ("profiles: {a: {overhead: [1], colour: 2}}\nfor_loss: {}\n", "keys"),
        ("profiles: {a: {overhead: [0.1, 0.2]}}\nfor_loss: {}\n", "increase"),
        ("profiles: {a: {overhead: [1]}}\nfor_loss: {targets: [0.1]}\n", "db_per_doubling"),
        ("profiles: {a: {overhead: [1]}}\nfor_loss: {db_per_lost: -1}\n", "positive"),
        ("profiles: [\n", "not valid YAML"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            fec.load_profiles(bad)
    with pytest.raises(ConfigError, match="not found"):
        fec.load_profiles(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------- spec strings


def test_parse_spec_names_and_loss_rates() -> None:
    assert fec.parse_spec("strong") == fec.get_profile("strong")
    assert fec.parse_spec("none").parities((3, 3)) == (0, 0)
    plain = fec.parse_spec("for_loss:0.3")
    assert (plain.loss_rate, plain.burst, plain.guard) == (0.3, 1.0, 3.0)
    assert plain == fec.for_loss(0.3)
    bursty = fec.parse_spec("for_loss:0.3,burst:4")
    assert (bursty.loss_rate, bursty.burst) == (0.3, 4.0)
    assert bursty.channel == uep.Channel(0.3, 4.0)
    assert fec.parse_spec("for_loss:0.1,guard:1").guard == 1.0
    assert fec.parse_spec("for_loss:0.1,guard:1,burst:2").burst == 2.0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("for_loss:", "loss rate P must be a number"),
        ("for_loss:abc", "loss rate P must be a number"),
        ("for_loss:lots", "loss rate P must be a number"),
        ("for_loss:1.2", r"loss rate must be in \[0, 1\)"),
        ("for_loss:-0.1", r"loss rate must be in \[0, 1\)"),
        ("for_loss:nan", r"loss rate must be in \[0, 1\)"),
        ("for_loss:0.3,burst:0.5", "burst length must be a finite number >= 1"),
        ("for_loss:0.3,burst:inf", "burst length must be a finite number >= 1"),
        ("for_loss:0.8,burst:2", "impossible at loss rate"),
        ("for_loss:0.3,burst:", "burst must be a number"),
        ("for_loss:0.3,burst", "unknown option 'burst'"),
        ("for_loss:0.3,colour:2", "unknown option 'colour:2'"),
        ("for_loss:0.3,,burst:2", "unknown option ''"),
        ("for_loss:0.3,burst:2,burst:3", "burst given twice"),
        ("for_loss:0.3,guard:0.5", "guard must be"),
        ("medium", "unknown FEC profile 'medium'"),
        ("", "unknown FEC profile ''"),
    ],
)
def test_parse_spec_refuses_malformed_specs(text: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as caught:
        fec.parse_spec(text)
    assert "\n" not in str(caught.value)


def test_parse_spec_refuses_non_strings() -> None:
    with pytest.raises(InputError, match="must be a string"):
        fec.parse_spec(0.3)  # type: ignore[arg-type]


SPEC_ALPHABET = st.sampled_from(list("for_los:0123456789.,-+eEburstgadinf _x"))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=30),
                 st.text(SPEC_ALPHABET, max_size=30),
                 st.text(SPEC_ALPHABET, max_size=20).map(lambda t: "for_loss:" + t)))
def test_parse_spec_garbage_raises_only_input_errors(text: str) -> None:
    try:
        profile = fec.parse_spec(text)
    except InputError:  # ConfigError is one too
        return
    assert isinstance(profile, fec.FecProfile)


# ---------------------------------------------------------------------------- guard, burst


def test_guard_off_plans_exactly_as_before() -> None:
    # Plans that for_loss made before the guard existed (same shapes, same model).
    assert fec.for_loss(0.1, guard=1).plan(shapes((1, 1, 2, 4, 8))) == (2, 2, 1, 2, 3)
    assert fec.for_loss(0.1, guard=1).plan(shapes((2, 2, 3, 5, 9), 300)) == (2, 2, 1, 2, 3)
    assert fec.for_loss(0.3, guard=1).plan(shapes((2, 2, 3, 5, 9), 300)) == (5, 5, 4, 6, 9)


def test_guard_gives_stage_one_a_floor_for_three_times_the_loss() -> None:
    stages = shapes((2, 2, 3, 5, 9), 300)
    guarded, plain = fec.for_loss(0.1), fec.for_loss(0.1, guard=1)
    floor = guarded.floor(stages)
    assert floor == (fec.loss_parity(2, 0.3, 0.02), 0, 0, 0, 0)
    plan = guarded.plan(stages)
    assert plan[0] >= floor[0] > plain.plan(stages)[0]
    assert uep.binomial_tail(2 + plan[0], 0.3, plan[0]) <= 0.02
    both = fec.for_loss(0.1, guard_targets=(0.02, 0.02)).floor(stages)
    assert both[:2] == (floor[0], floor[0]) and both[2:] == (0, 0, 0)
    # Named profiles do not plan, so the guard never applies to them.
    assert fec.get_profile("light").floor(stages) == fec.get_profile("light").parities(
        (2, 2, 3, 5, 9))


def test_burst_aware_profile_plans_on_the_bursty_channel() -> None:
    stages = shapes((2, 2, 3, 5, 10), 260)
    bursty, iid = fec.for_loss(0.3, burst=4), fec.for_loss(0.3)
    channel = uep.Channel(0.3, 4.0)
    a, b = bursty.plan(stages), iid.plan(stages)
    assert bursty.score(stages, a) <= bursty.score(stages, b)
    assert uep.expected_lost(stages, a, channel) <= uep.expected_lost(stages, b, channel)
    assert bursty.name == "for_loss(0.3,burst:4)"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_rate": 0.3, "burst": 0.5}, "burst"),
        ({"loss_rate": 0.8, "burst": 2.0}, "impossible"),
        ({"guard": 0.5}, "guard must be"),
        ({"guard": float("inf")}, "guard must be"),
        ({"guard_targets": (0.0,)}, "invalid entry"),
        ({"guard_targets": (0.1, 0.01)}, "may not decrease"),
    ],
)
def test_burst_and_guard_validation(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fec.FecProfile("bad", **kwargs)  # type: ignore[arg-type]


def test_for_loss_takes_burst_and_guard_from_the_yaml(tmp_path: Path) -> None:
    path = tmp_path / "fec.yaml"
    path.write_text("profiles:\n  none: {overhead: [0]}\n"
                    "for_loss: {guard: 2, guard_targets: [0.05]}\n")
    profile = fec.for_loss(0.2, path=path, burst=3)
    assert (profile.guard, profile.guard_targets, profile.burst) == (2.0, (0.05,), 3.0)
    assert fec.parse_spec("for_loss:0.2,guard:1", path).guard == 1.0
    path.write_text("profiles:\n  none: {overhead: [0]}\nfor_loss: {}\n")
    assert fec.for_loss(0.2, path=path).guard == 1.0  # no guard key: no guard
    with pytest.raises(InputError, match="burst"):
        fec.for_loss(0.3, burst=0.5)
    for text, message in [("for_loss: {guard: 0.5}\n", "guard must be"),
                          ("for_loss: {guard_targets: [2]}\n", "invalid entry"),
                          ("for_loss: {guard: yes}\n", "guard")]:
        path.write_text("profiles:\n  none: {overhead: [0]}\n" + text)
        with pytest.raises(ConfigError, match=message):
            fec.load_profiles(path)
