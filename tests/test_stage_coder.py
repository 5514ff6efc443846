"""The stage coder: context rule, hidden masks, shared trunk passes, chunk round trips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.stage_coder import (
    CHUNK_HEADER,
    MAX_CONTEXT_DEPTH,
    StageCoder,
    check_depth,
    context_stages,
    depth_from_flags,
)
from resilient_tx.config import ModelConfig
from resilient_tx.errors import ChecksumError, InputError
from tests.helpers import make_codec


@pytest.fixture
def codec(tmp_path, tiny_config: ModelConfig) -> Codec:
    return make_codec(tmp_path, tiny_config)


def _tokens(codec: Codec, h: int, w: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, codec.cfg.codebook_size, (codec.cfg.num_subvectors, h, w),
                         generator=g)


def test_context_rule() -> None:
    assert [context_stages(s, 0) for s in range(1, 6)] == [0, 1, 2, 3, 4]
    assert [context_stages(s, 2) for s in range(1, 6)] == [0, 1, 2, 2, 2]
    assert [context_stages(s, 1) for s in range(1, 6)] == [0, 1, 1, 1, 1]


@pytest.mark.parametrize("bad", [-1, MAX_CONTEXT_DEPTH + 1, 1.5, True, "2"])
def test_depth_outside_the_flag_bits_is_refused(bad) -> None:
    with pytest.raises(InputError):
        check_depth(bad)


def test_depth_travels_in_the_low_flag_bits() -> None:
    assert all(depth_from_flags(d) == d for d in range(MAX_CONTEXT_DEPTH + 1))
    assert depth_from_flags(0xF8 | 3) == 3


def test_hidden_mask_is_everything_beyond_the_context(codec: Codec) -> None:
    coder = codec.stage_coder(8, 8, depth=2)
    grid = codec.stage_map(8, 8)
    for s in range(1, 6):
        assert torch.equal(coder.hidden(s), grid > min(s - 1, 2))


def test_decodable_needs_only_the_context(codec: Codec) -> None:
    chain, shallow = codec.stage_coder(8, 8, 0), codec.stage_coder(8, 8, 2)
    complete = [True, True, False, True]  # stage 3 lost
    assert not chain.decodable(5, complete)
    assert shallow.decodable(5, complete)
    assert not shallow.decodable(3, [True, False])


def test_shared_trunk_gives_the_uncached_cdfs(codec: Codec) -> None:
    tokens = _tokens(codec, 8, 12)
    coder = codec.stage_coder(8, 12, depth=2)
    for s in range(1, 6):
        cached = coder.cdfs(s, tokens)
        plain = codec.stage_cdfs(tokens, s, coder.positions[s - 1], coder.hidden(s))
        assert torch.equal(cached, plain)


def test_hidden_token_values_do_not_change_the_cdfs(codec: Codec) -> None:
    tokens = _tokens(codec, 8, 8)
    coder = codec.stage_coder(8, 8)
    other = torch.where(coder.hidden(3), _tokens(codec, 8, 8, seed=9), tokens)
    assert torch.equal(coder.cdfs(3, tokens), codec.stage_coder(8, 8).cdfs(3, other))


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 9), seed=st.integers(0, 255), stage=st.integers(1, 5),
       depth=st.integers(0, 3))
def test_chunks_decode_to_exactly_their_tokens(tmp_path_factory, k: int, seed: int,
                                               stage: int, depth: int) -> None:
    codec = make_codec(tmp_path_factory.mktemp("c"), ModelConfig(
        widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16, latent_blocks=1,
        latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2))
    tokens = _tokens(codec, 8, 8, seed)
    coder = codec.stage_coder(8, 8, depth)
    sym, cdf = coder.symbols(tokens, stage), coder.cdfs(stage, tokens)
    chunks = coder.encode_chunks(sym, cdf, k, seed)
    assert len(chunks) == k
    seen = torch.zeros(8 * 8, dtype=torch.bool)
    for j, chunk in enumerate(chunks):
        got = coder.decode_chunk(stage, cdf, k, j, chunk)
        assert got is not None
        where = torch.from_numpy(got.positions)
        assert torch.equal(got.symbols.T, tokens.reshape(2, -1)[:, where])
        assert not seen[where].any()
        seen[where] = True
    assert torch.equal(seen, (codec.stage_map(8, 8) == stage).reshape(-1))


def test_damaged_chunks_are_rejected_not_guessed(codec: Codec) -> None:
    tokens = _tokens(codec, 8, 8)
    coder = codec.stage_coder(8, 8)
    sym, cdf = coder.symbols(tokens, 5), coder.cdfs(5, tokens)
    (chunk,) = coder.encode_chunks(sym, cdf, 1, 0)
    flipped = chunk[:-1] + bytes([chunk[-1] ^ 0x55])
    assert coder.decode_chunk(5, cdf, 1, 0, flipped) is None
    assert coder.decode_chunk(5, cdf, 1, 0, chunk[: CHUNK_HEADER.size - 1]) is None
    wrong_crc = CHUNK_HEADER.pack(0, 0) + chunk[CHUNK_HEADER.size:]
    assert coder.decode_chunk(5, cdf, 1, 0, wrong_crc) is None


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (5, 7), (8, 8)])
def test_compress_is_one_chunk_per_stage_and_round_trips(codec: Codec, hw) -> None:
    tokens = _tokens(codec, *hw)
    coder: StageCoder = codec.stage_coder(*hw)
    streams = coder.compress(tokens)
    assert len(streams) == codec.cfg.stages
    assert [s.symbols for s in streams] == [len(p) for p in coder.positions]
    assert torch.equal(codec.stage_coder(*hw).decompress(streams), tokens)


def test_decompress_reports_a_corrupted_stage(codec: Codec) -> None:
    tokens = _tokens(codec, 8, 8)
    streams = list(codec.stage_coder(8, 8).compress(tokens))
    s = streams[4]
    streams[4] = type(s)(s.data, s.symbols, s.crc ^ 1)
    with pytest.raises(ChecksumError):
        codec.stage_coder(8, 8).decompress(streams)


def test_progress_is_reported_once_per_step(codec: Codec) -> None:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    calls: list[str] = []
    enc = codec.encode(image, progress=lambda: calls.append("e"))
    codec.decode(enc, progress=lambda: calls.append("d"))
    assert calls == ["e"] * codec.steps() + ["d"] * codec.steps()


def test_only_stages_after_a_nonzero_depth_keep_a_shared_trunk(codec: Codec) -> None:
    chain, shallow = codec.stage_coder(8, 8, 0), codec.stage_coder(8, 8, 2)
    assert not any(chain.shares_trunk(s) for s in range(1, 6))
    assert [shallow.shares_trunk(s) for s in range(1, 6)] == [False, False, True, True, True]


@pytest.mark.parametrize("depth", [0, 2])
def test_cdfs_in_chunks_and_as_int16_are_the_same_integers(codec: Codec, depth: int,
                                                           monkeypatch) -> None:
    from resilient_tx.codec import entropy, stage_coder

    tokens = _tokens(codec, 12, 16)
    whole = [codec.stage_coder(12, 16, depth).cdfs(s, tokens) for s in range(1, 6)]
    monkeypatch.setattr(stage_coder, "CDF_CHUNK", 7)  # stages of 12..96 tokens: many chunks
    coder = codec.stage_coder(12, 16, depth)
    for s in range(1, 6):
        assert torch.equal(coder.cdfs(s, tokens), whole[s - 1])
        assert torch.equal(coder.cdfs(s, tokens, torch.int16), entropy.to_torchac(whole[s - 1]))
