"""Model files and model ids (resilient_tx.zoo.checkpoint)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resilient_tx.config import ModelConfig
from resilient_tx.errors import InputError, ModelNotFoundError, ResilientTxError
from resilient_tx.model import PQMIM
from resilient_tx.zoo.checkpoint import (
    FORMAT,
    LoadedModel,
    compute_model_id,
    load_model,
    save_model,
)

META = {"steps": 3, "dataset": "unit-test", "psnr": 21.5}


def make_net(cfg: ModelConfig, seed: int = 0) -> PQMIM:
    torch.manual_seed(seed)
    net = PQMIM(cfg)
    # Give zero-initialised layers non-zero weights so that every tensor is exercised.
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return net.eval()


def make_marginals(cfg: ModelConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (cfg.num_subvectors, cfg.codebook_size), generator=g)


def fp16_state(net: PQMIM) -> dict[str, torch.Tensor]:
    return {k: v.detach().half().float() if v.is_floating_point() else v.detach()
            for k, v in net.state_dict().items()}


def save(
    tmp_path: Path, net: PQMIM, marginals: torch.Tensor, name: str = "m.pt"
) -> tuple[Path, bytes]:
    path = tmp_path / name
    return path, save_model(path, net, marginals, META)


def test_round_trip(tmp_path: Path, tiny_config: ModelConfig) -> None:
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    path, model_id = save(tmp_path, net, marg)
    assert isinstance(model_id, bytes) and len(model_id) == 8
    loaded = load_model(path)
    assert isinstance(loaded, LoadedModel)
    assert loaded.model_id == model_id
    assert loaded.model_id_hex == model_id.hex() and len(loaded.model_id_hex) == 16
    assert loaded.cfg == tiny_config
    assert loaded.name == "m"
    assert loaded.meta == META
    assert not loaded.net.training
    assert loaded.marginals.dtype == torch.int64
    torch.testing.assert_close(loaded.marginals, marg, rtol=0, atol=0)
    expected = fp16_state(net)
    got = loaded.net.state_dict()
    assert set(got) == set(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype, k
        torch.testing.assert_close(got[k], v, rtol=0, atol=0, msg=k)


def test_loaded_model_computes_like_rounded_original(
    tmp_path: Path, tiny_config: ModelConfig
) -> None:
    net = make_net(tiny_config)
    path, _ = save(tmp_path, net, make_marginals(tiny_config))
    loaded = load_model(path)
    net.load_state_dict(fp16_state(net))
    x = torch.rand(1, 3, 32, 48)
    tok = net.tokens(x)
    torch.testing.assert_close(loaded.net.tokens(x), tok, rtol=0, atol=0)
    torch.testing.assert_close(loaded.net.reconstruct(tok), net.reconstruct(tok), rtol=0, atol=0)


def test_name_override(tmp_path: Path, tiny_config: ModelConfig) -> None:
    path, _ = save(tmp_path, make_net(tiny_config), make_marginals(tiny_config), "file.pt")
    assert load_model(path, name="pretty").name == "pretty"
    assert load_model(str(path)).name == "file"


def test_model_id_is_deterministic_and_idempotent(tmp_path: Path, tiny_config: ModelConfig) -> None:
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    _, id1 = save(tmp_path, net, marg, "a.pt")
    _, id2 = save(tmp_path, net, marg, "b.pt")
    assert id1 == id2
    # Re-saving a loaded model (weights already fp16-exact) keeps its id.
    loaded = load_model(tmp_path / "a.pt")
    _, id3 = save(tmp_path, loaded.net, loaded.marginals, "c.pt")
    assert id3 == id1
    assert load_model(tmp_path / "c.pt").model_id == id1


def test_changing_one_weight_changes_id(tmp_path: Path, tiny_config: ModelConfig) -> None:
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    _, base = save(tmp_path, net, marg, "a.pt")
    with torch.no_grad():
        net.quantizer.codebooks[0, 0, 0] += 0.5
    path, changed = save(tmp_path, net, marg, "b.pt")
    assert changed != base
    assert load_model(path).model_id == changed


def test_fp16_invisible_change_keeps_id(tmp_path: Path, tiny_config: ModelConfig) -> None:
    # The id hashes what is stored: a change lost in fp16 rounding does not change it.
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    _, base = save(tmp_path, net, marg, "a.pt")
    with torch.no_grad():
        w = net.quantizer.codebooks
        w.copy_(w.half().float())
        w[0, 0, 0] += float(w[0, 0, 0].abs()) * 1e-6  # far below fp16 resolution
    _, same = save(tmp_path, net, marg, "b.pt")
    assert same == base


def test_marginals_and_config_are_part_of_id(tmp_path: Path, tiny_config: ModelConfig) -> None:
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    _, base = save(tmp_path, net, marg, "a.pt")
    marg2 = marg.clone()
    marg2[0, 0] += 1
    _, other_marg = save(tmp_path, net, marg2, "b.pt")
    assert other_marg != base
    state = {k: v.detach().half() if v.is_floating_point() else v.detach()
             for k, v in net.state_dict().items()}
    assert compute_model_id(tiny_config, state, marg) == base
    other_cfg = dataclasses.replace(tiny_config, stages=4)  # same weights, other coding
    assert compute_model_id(other_cfg, state, marg) != base


def test_float32_storage(tmp_path: Path, tiny_config: ModelConfig) -> None:
    net, marg = make_net(tiny_config), make_marginals(tiny_config)
    path = tmp_path / "f32.pt"
    model_id = save_model(path, net, marg, META, storage="fp32")
    loaded = load_model(path)
    assert loaded.model_id == model_id
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.net.state_dict()[k], v, rtol=0, atol=0, msg=k)


def test_int8_storage_quarters_the_weights_and_loads_identically(tmp_path: Path) -> None:
    cfg = ModelConfig(widths=(16, 16, 16), latent_dim=32, num_subvectors=2, codebook_size=16,
                      latent_blocks=1, latent_heads=2, mim_dim=32, mim_depth=1, mim_heads=2)
    net, marg = make_net(cfg), make_marginals(cfg)
    fp16, int8 = tmp_path / "a.pt", tmp_path / "b.pt"
    save_model(fp16, net, marg, META)
    model_id = save_model(int8, net, marg, META, storage="int8")
    assert int8.stat().st_size < 0.7 * fp16.stat().st_size
    a, b = load_model(int8), load_model(int8)
    assert a.model_id == b.model_id == model_id != load_model(fp16).model_id
    for k, v in net.state_dict().items():
        got = a.net.state_dict()[k]
        assert torch.equal(got, b.net.state_dict()[k])  # the same float32 weights every load
        if v.is_floating_point():  # within half a quantisation step of each row's range
            rows = v.reshape(v.shape[0], -1) if v.ndim >= 2 else v.reshape(1, -1)
            step = rows.abs().amax(1, keepdim=True) / 127
            err = (got.reshape(rows.shape) - rows).abs()
            assert bool((err <= step * 0.51 + 1e-3 * rows.abs() + 1e-6).all()), k
    with pytest.raises(InputError, match="weight storage"):
        save_model(tmp_path / "c.pt", net, marg, META, storage="int4")


def test_save_creates_parent_directories(tmp_path: Path, tiny_config: ModelConfig) -> None:
    path = tmp_path / "deep" / "er" / "m.pt"
    save_model(path, make_net(tiny_config), make_marginals(tiny_config), {})
    assert path.is_file()
    assert load_model(path).meta == {}


# --------------------------------------------------------------------------- bad files


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="model file not found"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(ModelNotFoundError):
        load_model(tmp_path)  # a directory is not a model file


def test_random_bytes(tmp_path: Path) -> None:
    p = tmp_path / "junk.pt"
    p.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(InputError, match="not a resilient-tx model file") as info:
        load_model(p)
    assert not isinstance(info.value, ModelNotFoundError)


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.pt"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="not a resilient-tx model file"):
        load_model(p)


def test_png(tmp_path: Path) -> None:
    p = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(p)
    with pytest.raises(InputError, match="not a resilient-tx model file"):
        load_model(p)


@pytest.mark.parametrize(
    "payload",
    [torch.zeros(3), {"format": "something-else/1"}, {"config": {}}, [1, 2, 3]],
    ids=["tensor", "other-format", "no-format", "list"],
)
def test_other_torch_files(tmp_path: Path, payload: object) -> None:
    p = tmp_path / "other.pt"
    torch.save(payload, p)
    with pytest.raises(InputError, match="format resilient-tx-model/1 expected"):
        load_model(p)


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickled code ran",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": _Evil()}, p)
    with pytest.raises(InputError, match="not a resilient-tx model file"):
        load_model(p)
    assert "pickled code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("broken", ["no-config", "empty-state"])
def test_incomplete_model_file(tmp_path: Path, tiny_config: ModelConfig, broken: str) -> None:
    payload: dict[str, object] = {
        "format": FORMAT,
        "config": dataclasses.asdict(tiny_config),
        "state_dict": {},
        "marginals": make_marginals(tiny_config),
        "meta": {},
    }
    if broken == "no-config":
        del payload["config"]
    p = tmp_path / "broken.pt"
    torch.save(payload, p)
    with pytest.raises(ResilientTxError):
        load_model(p)
