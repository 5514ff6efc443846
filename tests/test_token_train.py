"""Training on frozen tokens: MIM continuation and the AR prior (tiny models, a few steps)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resilient_tx.app.cli import main
from resilient_tx.config import ArConfig, ModelConfig, TrainConfig
from resilient_tx.errors import InputError, ModelMismatchError
from resilient_tx.model import PQMIM
from resilient_tx.model.ar import ArPrior
from resilient_tx.training.efficiency import Efficiency
from resilient_tx.training.token_train import (
    ArTrainer,
    FrozenTokens,
    MimFinetuner,
    ar_loss,
)
from resilient_tx.zoo.checkpoint import LoadedModel, load_model, load_prior, save_model, save_prior

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)
AR = ArConfig(window=2, dim=8, depth=1, heads=2, mlp_ratio=2.0, steps=3, batch_size=2,
              warmup_steps=1)
TRAIN = TrainConfig(crop=32, mim_extra_steps=3, mim_extra_batch=2, warmup_steps=1,
                    checkpoint_every=1)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]


@pytest.fixture
def model(tmp_path: Path) -> LoadedModel:
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    save_model(path, PQMIM(TINY), torch.randint(1, 9, (2, 16)), {"note": "test"})
    return load_model(path)


def test_frozen_tokens_are_fresh_crops(model: LoadedModel, images) -> None:
    src = FrozenTokens(model, images, 32, seed=0, device=torch.device("cpu"))
    a, b = src.batch(4), src.batch(4)
    assert a.shape == (4, 2, 2, 2) and a.dtype == torch.int64
    assert not torch.equal(a, b)  # random offsets/flips: a new tokenisation every batch
    with pytest.raises(InputError, match="multiple"):
        FrozenTokens(model, images, 40, seed=0, device=torch.device("cpu"))


def test_ar_loss_of_a_uniform_prior_is_log_v() -> None:
    prior = ArPrior(AR, 2, 16)
    with torch.no_grad():
        for p in prior.heads.parameters():  # zero logits: every symbol equally likely
            p.zero_()
    tok = torch.randint(0, 16, (3, 2, 2, 2))
    loss = ar_loss(prior, tok, 0.5, torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(math.log(16), rel=1e-6)


def test_mim_finetune_changes_only_the_mim(model: LoadedModel, images, tmp_path: Path) -> None:
    res = MimFinetuner(model, images, TRAIN, tmp_path / "ft", torch.device("cpu")).run()
    assert res.steps == 3 and math.isfinite(res.final_bits)
    new = load_model(res.path)
    assert new.model_id_hex == res.model_id != model.model_id_hex
    assert torch.equal(new.marginals, model.marginals)
    old_sd, new_sd = model.net.state_dict(), new.net.state_dict()
    changed = {k for k in old_sd if not torch.equal(old_sd[k], new_sd[k])}
    assert changed and all(k.startswith("mim.") for k in changed)
    assert new.meta["finetuned_from"] == model.model_id_hex


def test_mim_only_run_can_train_a_larger_mim(model: LoadedModel, images,
                                             tmp_path: Path) -> None:
    ft = MimFinetuner(model, images, TRAIN, tmp_path / "big", torch.device("cpu"),
                      {"mim_dim": 32, "mim_depth": 2, "mim_heads": 4})
    res = ft.run()
    new = load_model(res.path)
    assert (new.cfg.mim_dim, new.cfg.mim_depth, new.cfg.mim_heads) == (32, 2, 4)
    assert new.cfg.num_subvectors == model.cfg.num_subvectors
    old_sd = model.net.state_dict()
    for k, v in new.net.state_dict().items():  # the autoencoder is the base's, unchanged
        if not k.startswith("mim."):
            assert torch.equal(v, old_sd[k]), k
    assert torch.equal(new.marginals, model.marginals)
    with pytest.raises(InputError, match="only mim_dim"):
        MimFinetuner(model, images, TRAIN, tmp_path / "x", torch.device("cpu"),
                     {"num_subvectors": 4})
    with pytest.raises(InputError, match="divisible"):
        MimFinetuner(model, images, TRAIN, tmp_path / "x", torch.device("cpu"),
                     {"mim_dim": 30, "mim_heads": 4})
    with pytest.raises(InputError, match="mim_dim"):
        MimFinetuner(model, images, TRAIN, tmp_path / "x", torch.device("cpu"),
                     {"mim_dim": "big"})


def test_ar_trainer_writes_a_prior_bound_to_its_model(model: LoadedModel, images,
                                                      tmp_path: Path) -> None:
    res = ArTrainer(model, images, AR, TRAIN, tmp_path / "ar", torch.device("cpu")).run()
    assert res.steps == 3 and math.isfinite(res.final_bits)
    int8 = TrainConfig(**{**TRAIN.__dict__, "weight_storage": "int8"})
    wide = ArConfig(**{**AR.__dict__, "dim": 32})  # layers big enough to be quantised
    small = ArTrainer(model, images, wide, int8, tmp_path / "ar8", torch.device("cpu")).run()
    stored = torch.load(small.path, weights_only=True)["state_dict"]
    assert any(v.dtype == torch.int8 for v in stored.values())
    assert load_prior(small.path, model).net.cfg == wide
    prior = load_prior(res.path, model)
    assert prior.base_model_id == model.model_id and prior.net.cfg == AR
    torch.manual_seed(1)
    other_path = tmp_path / "other.pt"
    save_model(other_path, PQMIM(TINY), model.marginals, {})
    with pytest.raises(ModelMismatchError, match="train --only ar"):
        load_prior(res.path, load_model(other_path))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a prior")
    with pytest.raises(InputError, match="not a resilient-tx AR prior"):
        load_prior(bad, model)


def test_ar_training_resumes_from_its_checkpoint(model: LoadedModel, images,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "ar"
    first = ArTrainer(model, images, AR, TRAIN, out, torch.device("cpu"))
    first.run()
    longer = ArTrainer(model, images, ArConfig(**{**AR.__dict__, "steps": 5}), TRAIN, out,
                       torch.device("cpu"))
    assert longer.try_resume() and longer.step == 3
    assert longer.run().steps == 5
    torch.manual_seed(1)
    save_model(tmp_path / "other.pt", PQMIM(TINY), model.marginals, {})
    other = ArTrainer(load_model(tmp_path / "other.pt"), images, AR, TRAIN, out,
                      torch.device("cpu"))
    with pytest.raises(InputError, match="different run"):  # a prior of another model
        other.try_resume()


def test_prior_file_round_trips_weights(model: LoadedModel, tmp_path: Path) -> None:
    net = ArPrior(AR, 2, 16)
    save_prior(tmp_path / "p.pt", net, model.model_id, {"x": 1})
    back = load_prior(tmp_path / "p.pt", model)
    for k, v in net.state_dict().items():  # stored as fp16: equal to fp16 rounding
        assert torch.equal(back.net.state_dict()[k], v.half().float())


def _image_dir(tmp_path: Path, images) -> Path:
    d = tmp_path / "data"
    d.mkdir()
    for i, a in enumerate(images):
        Image.fromarray(a).save(d / f"{i}.png")
    return d


def test_cli_trains_ar_and_mim_on_frozen_tokens(model: LoadedModel, images, tmp_path: Path,
                                                capsys) -> None:
    data = _image_dir(tmp_path, images)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {crop: 32, mim_extra_steps: 2, mim_extra_batch: 2, warmup_steps: 1}\n"
                   "ar: {window: 2, dim: 8, depth: 1, heads: 2, steps: 2, batch_size: 2}\n")
    model_file = str(tmp_path / "tiny.pt")
    base = ["train", "--data", str(data), "--config", str(cfg), "--init", model_file,
            "--threads", "1", "--device", "cpu"]
    assert main(base + ["--only", "ar", "--out", str(tmp_path / "a")]) == 0
    assert "AR prior written" in capsys.readouterr().out
    assert load_prior(tmp_path / "a" / "ar.pt", model).meta["ar_steps"] == 2
    assert main(base + ["--only", "mim", "--out", str(tmp_path / "m")]) == 0
    assert "fine-tuned model" in capsys.readouterr().out
    assert load_model(tmp_path / "m" / "model.pt").meta["mim_finetune_steps"] == 2
    bigger = tmp_path / "big.yaml"
    bigger.write_text(cfg.read_text() + "model: {mim_dim: 32, mim_heads: 4}\n")
    assert main(base[:4] + [str(bigger)] + base[5:]
                + ["--only", "mim", "--out", str(tmp_path / "b")]) == 0
    assert load_model(tmp_path / "b" / "model.pt").cfg.mim_dim == 32


def test_cli_only_and_init_go_together(tmp_path: Path, images, capsys) -> None:
    data = _image_dir(tmp_path, images)
    assert main(["train", "--data", str(data), "--only", "ar"]) == 2
    assert "--init" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--init", "low"]) == 2
    assert "--only" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--only", "mim", "--init", "low-k64"]) == 2
    assert "shares the MIM of low" in capsys.readouterr().err


def test_full_run_with_an_ar_section_trains_the_prior_too(tmp_path: Path, images,
                                                         capsys) -> None:
    data = _image_dir(tmp_path, images)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {widths: [8, 8, 8], latent_dim: 16, num_subvectors: 2, "
                   "codebook_size: 16, latent_blocks: 1, latent_heads: 2, mim_dim: 16, "
                   "mim_depth: 1, mim_heads: 2}\n"
                   "train: {steps: 2, batch_size: 2, crop: 32, warmup_steps: 1}\n"
                   "ar: {window: 2, dim: 8, depth: 1, heads: 2, steps: 2, batch_size: 2}\n")
    out = tmp_path / "run"
    assert main(["train", "--data", str(data), "--config", str(cfg), "--out", str(out),
                 "--threads", "1", "--device", "cpu"]) == 0
    assert "AR prior written" in capsys.readouterr().out
    assert load_prior(out / "ar.pt", load_model(out / "model.pt")).meta["ar_steps"] == 2


def test_token_phases_run_the_efficient_path(model: LoadedModel, images,
                                             tmp_path: Path) -> None:
    eff = Efficiency(bf16=True, device_data=True)
    cpu = torch.device("cpu")
    ft = MimFinetuner(model, images, TRAIN, tmp_path / "ft", cpu, eff=eff).run()
    assert ft.steps == 3 and math.isfinite(ft.final_bits)
    assert load_model(ft.path).model_id_hex == ft.model_id
    ar = ArTrainer(model, images, AR, TRAIN, tmp_path / "ar", cpu, eff=eff).run()
    assert ar.steps == 3 and math.isfinite(ar.final_bits)
    src = FrozenTokens(model, images, 32, seed=0, device=cpu, device_data=True)
    state = src.sampler.gen.get_state()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside a bf16 training step
        under_bf16 = src.batch(4)
    src.sampler.gen.set_state(state)
    assert torch.equal(under_bf16, src.batch(4))  # the frozen encoder stays float32
