"""Inpainters (PQ-MIM Sec. 4.3): fill exactly the unknown tokens, deterministically.

Property-style checks run on a tiny random model; one test uses the shipped model on the
bundled sample to check that MIM inpainting actually helps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.app.demo import sample_path
from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.inpaint import (
    INPAINTERS,
    ArInpainter,
    Inpainter,
    MimInpainter,
    NeighborInpainter,
    NoInpainter,
    ar_waves,
    cosine_left,
    default_device,
    get_inpainter,
    nearest_known,
)
from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import ArConfig, ModelConfig
from resilient_tx.errors import InputError, ModelMismatchError, ModelNotFoundError
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import load_rgb
from resilient_tx.model import PQMIM
from resilient_tx.model.ar import ArPrior, window_origin
from resilient_tx.zoo.checkpoint import LoadedModel, LoadedPrior
from resilient_tx.zoo.registry import get_model

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)
GRIDS = [(1, 1), (1, 7), (7, 1), (5, 3), (8, 8), (6, 11)]
KINDS = ["mim-quincunx", "mim-confidence", "mim-argmax", "ar", "ar-argmax", "neighbor", "none"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Tiny ops on a busy 2-core box run ~100x slower with 2 threads (conftest restores)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    torch.manual_seed(0)
    net = PQMIM(TINY).eval()
    marg = torch.randint(0, 50, (TINY.num_subvectors, TINY.codebook_size))
    return LoadedModel(net=net, marginals=marg, model_id=b"\0" * 8, name="tiny", meta={})


def tiny_prior(model: LoadedModel, window: int = 4) -> LoadedPrior:
    """A seeded random AR prior for ``model`` with a window smaller than most GRIDS."""
    torch.manual_seed(1)
    net = ArPrior(ArConfig(window=window, dim=8, depth=1, heads=2, mlp_ratio=2.0),
                  model.cfg.num_subvectors, model.cfg.codebook_size).eval()
    return LoadedPrior(net=net, base_model_id=model.model_id, meta={})


def make(kind: str, model: LoadedModel) -> Inpainter:
    if kind == "ar":
        return ArInpainter(model, tiny_prior(model), "cpu")
    if kind == "ar-argmax":
        return ArInpainter(model, tiny_prior(model), "cpu", window=3, decision="argmax")
    if kind == "mim-quincunx":
        return MimInpainter(model, "cpu", order="quincunx")
    if kind == "mim-confidence":
        return MimInpainter(model, "cpu", order="confidence", steps=3)
    if kind == "mim-argmax":
        return MimInpainter(model, "cpu", order="quincunx", decision="argmax")
    return get_inpainter(kind, model, "cpu")


def masks(h: int, w: int, seed: int) -> list[torch.Tensor]:
    """All-known, all-unknown and a few seeded random masks of an h x w grid."""
    gen = torch.Generator().manual_seed(seed)
    out = [torch.ones(h, w, dtype=torch.bool), torch.zeros(h, w, dtype=torch.bool)]
    out += [torch.rand(h, w, generator=gen) < p for p in (0.2, 0.5, 0.8)]
    return out


def garbage_at_unknown(tokens: torch.Tensor, known: torch.Tensor, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randint(-10**6, 10**6, tokens.shape, generator=gen)
    return torch.where(known, tokens, noise)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hw", GRIDS)
def test_fills_exactly_the_unknown_positions(tiny: LoadedModel, kind: str,
                                             hw: tuple[int, int]) -> None:
    inp = make(kind, tiny)
    h, w = hw
    gen = torch.Generator().manual_seed(h * 100 + w)
    tokens = torch.randint(0, TINY.codebook_size, (TINY.num_subvectors, h, w), generator=gen)
    for i, known in enumerate(masks(h, w, seed=h * 31 + w)):
        a = garbage_at_unknown(tokens, known, 2 * i)
        b = garbage_at_unknown(tokens, known, 2 * i + 1)
        a_before = a.clone()
        out = inp.fill(a, known)
        assert out.shape == tokens.shape and out.dtype == torch.int64
        assert torch.equal(a, a_before)  # input untouched
        assert out.data_ptr() != a.data_ptr()  # a new tensor, even with nothing unknown
        assert torch.equal(out[:, known], tokens[:, known])  # known: bit-identical
        assert int(out.min()) >= 0 and int(out.max()) < TINY.codebook_size  # unknown: filled
        assert torch.equal(inp.fill(b, known), out)  # garbage ignored, deterministic
        assert torch.equal(inp.fill(a, known), out)


def test_nothing_unknown_makes_no_model_call(tiny: LoadedModel, monkeypatch) -> None:
    inp = MimInpainter(tiny, "cpu")
    monkeypatch.setattr(inp, "_predict", lambda *a: pytest.fail("model called"))
    tokens = torch.randint(0, TINY.codebook_size, (TINY.num_subvectors, 4, 5))
    out = inp.fill(tokens, torch.ones(4, 5, dtype=torch.bool))
    assert torch.equal(out, tokens) and out.data_ptr() != tokens.data_ptr()


@pytest.mark.parametrize("kind", ["none", "neighbor"])
def test_nothing_known_gives_most_frequent_token(tiny: LoadedModel, kind: str) -> None:
    out = make(kind, tiny).fill(torch.zeros(TINY.num_subvectors, 3, 4, dtype=torch.int64),
                                torch.zeros(3, 4, dtype=torch.bool))
    expect = tiny.marginals.argmax(dim=1)
    assert torch.equal(out, expect[:, None, None].expand(-1, 3, 4))


def test_neighbor_copies_nearest_known_token(tiny: LoadedModel) -> None:
    known = torch.tensor([[True, False, False, False, False, False, True]])
    tokens = torch.zeros(TINY.num_subvectors, 1, 7, dtype=torch.int64)
    tokens[:, 0, 0], tokens[:, 0, 6] = 3, 9
    out = NeighborInpainter(tiny).fill(tokens, known)
    # Cell 3 is equidistant: ties go to the known cell first in raster order.
    assert out[0, 0].tolist() == [3, 3, 3, 3, 9, 9, 9]
    known2d = torch.zeros(5, 5, dtype=torch.bool)
    known2d[0, 0] = known2d[4, 4] = known2d[0, 4] = True
    src = nearest_known(known2d).reshape(5, 5)
    assert src[1, 1] == 0 and src[3, 3] == 24 and src[1, 3] == 4 and src[2, 2] == 0


def count_passes(inp: MimInpainter, monkeypatch) -> list[int]:
    calls: list[int] = []
    real = inp._predict

    def spy(tokens: torch.Tensor, unknown: torch.Tensor,
            positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(int(unknown.sum()))
        return real(tokens, unknown, positions)

    monkeypatch.setattr(inp, "_predict", spy)
    return calls


def test_quincunx_order_one_pass_per_stage_with_unknowns(tiny: LoadedModel,
                                                         monkeypatch) -> None:
    inp = MimInpainter(tiny, "cpu", order="quincunx")
    calls = count_passes(inp, monkeypatch)
    grid = torch.from_numpy(quincunx_stages(8, 8, TINY.stages))
    known = ~((grid == 2) | (grid == 5))
    inp.fill(torch.zeros(TINY.num_subvectors, 8, 8, dtype=torch.int64), known)
    # Stage 2 first, with stage 5 still hidden; then stage 5 alone.
    assert calls == [int((grid == 2).sum() + (grid == 5).sum()), int((grid == 5).sum())]


@pytest.mark.parametrize("order", ["quincunx", "confidence"])
def test_mim_fill_is_the_same_a_few_positions_at_a_time(tiny: LoadedModel, monkeypatch,
                                                        order: str) -> None:
    # Large photos have their probabilities computed in chunks of positions: the chunk
    # size must not change a single filled token.
    import resilient_tx.codec.inpaint as inpaint

    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, TINY.codebook_size, (TINY.num_subvectors, 9, 11), generator=gen)
    known = torch.rand(9, 11, generator=gen) < 0.4
    inp = MimInpainter(tiny, "cpu", order=order, steps=3)
    whole = inp.fill(tokens, known)
    monkeypatch.setattr(inpaint, "PREDICT_CHUNK", 5)
    chunked = inp.fill(tokens, known)
    assert torch.equal(chunked, whole) and torch.equal(whole[:, known], tokens[:, known])
    assert not torch.equal(whole, tokens)  # something was filled


def test_confidence_order_follows_cosine_schedule(tiny: LoadedModel, monkeypatch) -> None:
    inp = MimInpainter(tiny, "cpu", order="confidence", steps=4)
    calls = count_passes(inp, monkeypatch)
    known = torch.zeros(6, 7, dtype=torch.bool)
    inp.fill(torch.zeros(TINY.num_subvectors, 6, 7, dtype=torch.int64), known)
    assert calls == [42] + [cosine_left(42, t, 4) for t in (1, 2, 3)]
    assert cosine_left(42, 4, 4) == 0


def test_get_inpainter_names_and_errors(tiny: LoadedModel) -> None:
    assert {"mim", "neighbor", "none"} <= set(INPAINTERS)
    for name in ("mim", "neighbor", "none"):
        inp = get_inpainter(name, tiny, "cpu")
        assert isinstance(inp, Inpainter) and inp.name == name
    with pytest.raises(InputError, match="mim.*neighbor.*none"):
        get_inpainter("magic", tiny, "cpu")
    with pytest.raises(InputError, match="order"):
        MimInpainter(tiny, "cpu", order="raster")
    with pytest.raises(InputError, match="steps"):
        MimInpainter(tiny, "cpu", order="confidence", steps=0)
    with pytest.raises(InputError, match="decision"):
        MimInpainter(tiny, "cpu", decision="sample")
    assert default_device().type in ("cpu", "cuda")


def test_ar_inpainter_arguments(tiny: LoadedModel) -> None:
    assert "ar" in INPAINTERS
    with pytest.raises(ModelNotFoundError, match="train --only ar"):
        get_inpainter("ar", tiny, "cpu")  # no prior is shipped for the tiny model
    for window in (1, 5, "3", 2.5, True):
        with pytest.raises(InputError, match="window"):
            ArInpainter(tiny, tiny_prior(tiny, window=4), "cpu", window=window)
    with pytest.raises(InputError, match="decision"):
        ArInpainter(tiny, tiny_prior(tiny), "cpu", decision="sample")
    other = LoadedPrior(tiny_prior(tiny).net, b"\1" * 8, {})
    with pytest.raises(ModelMismatchError):
        ArInpainter(tiny, other, "cpu")


def test_get_inpainter_passes_the_ar_window() -> None:
    low = get_model("low")
    inp = get_inpainter("ar", low, "cpu", ar_window=8)
    assert isinstance(inp, ArInpainter) and inp.window == 8
    assert get_inpainter("ar", low, "cpu").window == 16  # the shipped prior's window
    assert isinstance(get_inpainter("mim", low, "cpu", ar_window=8), MimInpainter)


def test_ar_fills_in_raster_order_from_the_window_before(tiny: LoadedModel) -> None:
    """A token after every unknown one cannot change the fill; one before it can."""
    inp = ArInpainter(tiny, tiny_prior(tiny, window=4), "cpu", decision="argmax")
    h, w = 6, 6
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, TINY.codebook_size, (TINY.num_subvectors, h, w), generator=gen)
    known = torch.ones(h, w, dtype=torch.bool)
    known[1, 2] = known[2, 3] = False
    out = inp.fill(tokens, known)
    later = tokens.clone()
    later[:, 5, 5] = (later[:, 5, 5] + 1) % TINY.codebook_size  # after both holes
    assert torch.equal(inp.fill(later, known)[:, ~known], out[:, ~known])
    changed = 0
    for v in range(TINY.codebook_size):  # some value of the token just before the first hole
        before = tokens.clone()
        before[:, 1, 1] = v
        changed += int(not torch.equal(inp.fill(before, known)[:, 1, 2], out[:, 1, 2]))
    assert changed > 0


def _sequential_ar_fill(inp: ArInpainter, tokens: torch.Tensor,
                        known: torch.Tensor) -> torch.Tensor:
    """The definition the batched fill must match: one hole at a time, raster order."""
    out = tokens.clone()
    _, h, w = tokens.shape
    for p in torch.nonzero(~known.reshape(-1)).squeeze(1).tolist():
        r, c = divmod(p, w)
        top, left, wh, ww = window_origin(r, c, h, w, inp.window)
        i = (r - top) * ww + (c - left)
        win = out[None, :, top:top + wh, left:left + ww]
        logits = inp.net(win, torch.zeros(1, wh, ww, dtype=torch.bool), length=i + 1)[0, i]
        out[:, r, c] = logits.argmax(-1)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 9), w=st.integers(1, 9), window=st.integers(2, 6),
       loss=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_batched_ar_fill_equals_one_hole_at_a_time(tiny: LoadedModel, h: int, w: int,
                                                   window: int, loss: float, seed: int) -> None:
    inp = ArInpainter(tiny, tiny_prior(tiny, window=6), "cpu", window=window,
                      decision="argmax")
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, TINY.codebook_size, (TINY.num_subvectors, h, w), generator=gen)
    known = torch.rand(h, w, generator=gen) >= loss
    with torch.no_grad():
        assert torch.equal(inp.fill(tokens, known), _sequential_ar_fill(inp, tokens, known))


def test_ar_waves_only_read_earlier_waves() -> None:
    gen = torch.Generator().manual_seed(3)
    known = torch.rand(12, 20, generator=gen) >= 0.4
    waves = ar_waves(known, 6)
    wave_of = {rc: k for k, wave in enumerate(waves) for rc in wave}
    assert sorted(wave_of) == [tuple(p) for p in torch.nonzero(~known).tolist()]
    for (r, c), k in wave_of.items():
        top, left, wh, ww = window_origin(r, c, 12, 20, 6)
        for (r2, c2), k2 in wave_of.items():
            inside = top <= r2 < top + wh and left <= c2 < left + ww
            if inside and (r2 - top) * ww + (c2 - left) < (r - top) * ww + (c - left):
                assert k2 < k  # a hole it reads was filled by an earlier wave
    assert len(waves) < len(wave_of)  # batching actually happens


@pytest.mark.parametrize("tokens, known", [
    (torch.zeros(2, 3, 4, dtype=torch.int32), torch.ones(3, 4, dtype=torch.bool)),
    (torch.zeros(2, 3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.int64)),
    (torch.zeros(3, 3, 4, dtype=torch.int64), torch.ones(3, 4, dtype=torch.bool)),
    (torch.zeros(2, 3, 4, dtype=torch.int64), torch.ones(4, 3, dtype=torch.bool)),
    (torch.zeros(2, 0, 4, dtype=torch.int64), torch.ones(0, 4, dtype=torch.bool)),
    (torch.full((2, 3, 4), 16, dtype=torch.int64), torch.ones(3, 4, dtype=torch.bool)),
    (torch.full((2, 3, 4), -1, dtype=torch.int64), torch.ones(3, 4, dtype=torch.bool)),
])
def test_bad_arguments_raise_input_error(tiny: LoadedModel, tokens: torch.Tensor,
                                         known: torch.Tensor) -> None:
    with pytest.raises(InputError):
        NoInpainter(tiny).fill(tokens, known)


def test_shipped_model_mim_beats_no_inpainting_at_30_percent_loss() -> None:
    model = get_model("low")
    codec = Codec(model)
    img = load_rgb(sample_path())
    height, width = img.shape[:2]
    tokens = codec.image_to_tokens(img)
    known = torch.from_numpy(np.random.default_rng(0).random(tokens.shape[1:]) >= 0.3)
    score = {name: psnr(img, codec.tokens_to_image(
        get_inpainter(name, model, "cpu").fill(tokens, known), width, height))
        for name in ("mim", "neighbor", "none")}
    print("\n30% random token loss, low model, sample: "
          + ", ".join(f"{k} {v:.2f} dB" for k, v in score.items()))
    # The target: the MIM fills 30 % lost tokens at least 1 dB better than leaving them.
    assert score["mim"] > score["none"] + 1.0


@pytest.mark.slow
def test_shipped_ar_prior_beats_no_inpainting_at_30_percent_loss() -> None:
    model = get_model("low")
    codec = Codec(model)
    img = load_rgb(sample_path())[:256, :384]  # 16 x 24 tokens: a few seconds on a CPU
    tokens = codec.image_to_tokens(img)
    known = torch.from_numpy(np.random.default_rng(0).random(tokens.shape[1:]) >= 0.3)
    score = {name: psnr(img, codec.tokens_to_image(
        get_inpainter(name, model, "cpu").fill(tokens, known), img.shape[1], img.shape[0]))
        for name in ("ar", "none")}
    print(f"\n30% token loss, low model, sample crop: ar {score['ar']:.2f} dB, "
          f"none {score['none']:.2f} dB")
    assert score["ar"] > score["none"] + 1.0
