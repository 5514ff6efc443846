"""The joint PQ-VAE + MIM trainer: a tiny run, exact resume, the speed options on the CPU."""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import ModelConfig, RunConfig, TrainConfig, load_run_config
from resilient_tx.errors import InputError
from resilient_tx.model import PQMIM
from resilient_tx.training.efficiency import Efficiency, GuardedCompile, scale_lr
from resilient_tx.training.loop import Stats, TrainState
from resilient_tx.training.trainer import Trainer, mim_loss, mim_masks
from resilient_tx.zoo.checkpoint import load_model, save_model

CPU = torch.device("cpu")
CONFIGS = Path(__file__).resolve().parents[1] / "resilient_tx" / "configs"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # bit-identical runs, and no fight over the shared CPU


@pytest.fixture
def images() -> list[np.ndarray]:
    """Four flat colours with a gentle ramp: something a tiny model learns in a few steps."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(-20, 20, 64)[None, :, None]
    out = []
    for _ in range(4):
        colour = rng.integers(30, 226, 3)[None, None, :]
        out.append(np.clip(colour + ramp + np.zeros((48, 64, 3)), 0, 255).astype(np.uint8))
    return out


def _run(model: ModelConfig, **train: object) -> RunConfig:
    base = {"steps": 6, "batch_size": 2, "crop": 32, "warmup_steps": 1, "lr": 3e-3,
            "checkpoint_every": 3, "dead_code_every": 2}
    return RunConfig(model=model, train=TrainConfig(**{**base, **train}))  # type: ignore[arg-type]


def _trainer(run: RunConfig, images: list[np.ndarray], out: Path,
             eff: Efficiency | None = None) -> Trainer:
    return Trainer(run, None, out, CPU, eff=eff, images=images)


def test_a_tiny_joint_run_learns_and_writes_a_model(tiny_config, images, tmp_path: Path) -> None:
    run = _run(tiny_config, steps=60, lr=1e-2, dead_code_every=0, checkpoint_every=100,
               mim_extra_steps=10, mim_extra_batch=4)
    res = _trainer(run, images, tmp_path).run()
    rows = [r for r in csv.DictReader((tmp_path / "log.csv").open())]
    joint = [r for r in rows if r["phase"] == "joint"]
    assert [r["step"] for r in joint] == ["10", "20", "30", "40", "50", "60"]
    # Rows average the recent steps: steps 11-60 beat the first ten.
    assert float(joint[-1]["psnr"]) > float(joint[0]["psnr"]) + 1.0
    assert float(joint[-1]["mim_bits"]) < float(joint[0]["mim_bits"]) - 0.3
    assert [r["phase"] for r in rows[len(joint):]] == ["mim"]
    assert res.steps == 60 and math.isfinite(res.final_psnr) and res.final_mim_bits < 4.0
    model = load_model(res.model_path)
    assert model.model_id_hex == res.model_id
    assert model.meta["train_steps"] == 60 and model.meta["mim_extra_steps"] == 10
    assert int(model.marginals.sum()) == 2 * 4 * 2 * 3 * 4  # mirrored images x M x 3x4 grid


def _kill_at(trainer: Trainer, at: int) -> None:
    step = trainer.train_step

    def killed(i: int):  # type: ignore[no-untyped-def]
        if i == at:
            raise KeyboardInterrupt  # as if the process were stopped here
        return step(i)

    trainer.train_step = killed  # type: ignore[method-assign]


def test_trainer_resume_continues_exactly(tiny_config, images, tmp_path: Path) -> None:
    run = _run(tiny_config)
    whole = _trainer(run, images, tmp_path / "whole")
    whole.run()
    cut = _trainer(run, images, tmp_path / "cut")
    _kill_at(cut, 4)
    with pytest.raises(KeyboardInterrupt):
        cut.run()  # checkpoint at step 3, killed in step 5
    again = _trainer(run, images, tmp_path / "cut")
    assert again.try_resume() and again.step == 3
    assert again.run().steps == 6
    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, again.net.state_dict()[k]), k
    other = _trainer(_run(dataclasses.replace(tiny_config, mim_dim=32, mim_heads=4)), images,
                     tmp_path / "cut")
    with pytest.raises(InputError, match="different run"):
        other.try_resume()


def test_efficient_options_run_on_the_cpu(tiny_config, images, tmp_path: Path) -> None:
    eff = Efficiency(bf16=True, channels_last=True, device_data=True)
    run = _run(tiny_config, steps=12, mim_extra_steps=3, mim_extra_batch=4)
    trainer = _trainer(run, images, tmp_path, eff)
    conv = trainer.net.encoder.convs[1].weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    res = trainer.run()
    assert res.steps == 12 and math.isfinite(res.final_psnr) and math.isfinite(res.final_mim_bits)
    assert load_model(res.model_path).model_id_hex == res.model_id
    resumed = _trainer(_run(tiny_config, steps=14), images, tmp_path, eff)
    assert resumed.try_resume() and resumed.run().steps == 14  # device generators resume


def test_compile_failure_falls_back_to_eager(tiny_config, images, tmp_path: Path,
                                             capsys) -> None:
    eff = Efficiency(compile=True, compile_backend="no-such-backend")
    res = _trainer(_run(tiny_config, steps=2), images, tmp_path, eff).run()
    assert res.steps == 2
    err = capsys.readouterr().err.strip().splitlines()
    notices = [line for line in err if "torch.compile" in line]
    assert len(notices) == 1 and "training uncompiled" in notices[0]


def test_guarded_compile_falls_back_when_the_first_call_fails(capsys) -> None:
    guarded = GuardedCompile(torch.nn.Linear(2, 2), backend="eager")

    def trial(fn) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("backend exploded\nsecond line")

    assert not guarded.warm_up(trial) and not guarded.active
    assert guarded(torch.ones(1, 2)).shape == (1, 2)  # runs eagerly
    assert "RuntimeError: backend exploded" in capsys.readouterr().err


def test_start_from_a_trained_model(tiny_config, images, tmp_path: Path) -> None:
    torch.manual_seed(7)
    save_model(tmp_path / "base.pt", PQMIM(tiny_config), torch.ones(2, 16), {})
    base = load_model(tmp_path / "base.pt")
    trainer = Trainer(_run(tiny_config, steps=0), None, tmp_path / "out", CPU, images=images,
                      init=base)
    res = trainer.run()
    new = load_model(res.model_path)
    for k, v in base.net.state_dict().items():  # no steps: the weights are the base's
        assert torch.equal(v, new.net.state_dict()[k]), k
    assert new.meta["init_from"] == base.model_id_hex
    other = dataclasses.replace(tiny_config, mim_depth=2)
    with pytest.raises(InputError, match="another architecture"):
        Trainer(_run(other), None, tmp_path / "x", CPU, images=images, init=base)
    with pytest.raises(InputError, match="multiple of the downsampling"):
        Trainer(_run(tiny_config, crop=40), None, tmp_path / "x", CPU, images=images)


def test_trainer_state_records_the_scaled_schedule(tiny_config, images, tmp_path: Path) -> None:
    _trainer(_run(tiny_config, steps=3), images, tmp_path).run()
    st = TrainState.load(tmp_path / "last.pt")
    assert st.step == 3 and st.schedule.lr == pytest.approx(3e-3)
    assert st.run["phase"] == "joint" and "init" not in st.run


def test_vectorised_masks_follow_the_mask_distribution() -> None:
    gen = torch.Generator().manual_seed(0)
    rnd = mim_masks(400, 6, 8, 5, 0.0, gen)
    assert rnd.shape == (400, 6, 8) and rnd.dtype == torch.bool
    assert bool(rnd.flatten(1).any(1).all())  # never an empty target set
    assert abs(float(rnd.float().mean()) - 0.5) < 0.05  # ratio ~ U(0, 1): half on average
    grid = torch.from_numpy(quincunx_stages(6, 8, 5))
    stage = [grid >= s for s in range(2, 6)]
    quin = mim_masks(200, 6, 8, 5, 1.0, gen)
    seen = [sum(torch.equal(m, st) for m in quin) for st in stage]
    assert sum(seen) == 200 and min(seen) > 20  # every stage 2..5, about equally often
    assert not mim_masks(50, 6, 8, 1, 1.0, gen).all()  # one stage: random masks only


def test_dense_mim_loss_equals_the_selected_one(tiny_config) -> None:
    net = PQMIM(tiny_config)
    tokens = torch.randint(0, 16, (3, 2, 4, 5))
    mask = mim_masks(3, 4, 5, 5, 0.5, torch.Generator().manual_seed(1))
    with torch.no_grad():
        sparse = mim_loss(net.mim, tokens, mask)
        dense = mim_loss(net.mim, tokens, mask, dense=True)
    assert float(dense) == pytest.approx(float(sparse), rel=1e-5)


def test_efficiency_defaults_keep_the_cpu_path() -> None:
    cuda = torch.device("cuda")
    assert Efficiency.from_train_config(TrainConfig(), CPU) == Efficiency.baseline()
    assert Efficiency.from_train_config(TrainConfig(), cuda) == Efficiency.fast(cuda)
    on = TrainConfig(efficient="on", compile=True)
    assert Efficiency.from_train_config(on, CPU) == Efficiency.fast(CPU, compile=True)
    off = TrainConfig(efficient="off")
    assert Efficiency.from_train_config(off, cuda) == Efficiency.baseline()
    fast = Efficiency.fast(cuda)
    assert fast.bf16 and fast.channels_last and fast.device_data and fast.fused_adamw
    assert not fast.compile


def test_gpu_config_scales_the_low_config_by_the_sqrt_rule() -> None:
    low = load_run_config(CONFIGS / "low.yaml")
    gpu = load_run_config(CONFIGS / "gpu_low.yaml")
    assert gpu.model == low.model
    t, ref = gpu.train, low.train
    assert t.batch_size >= 64 and t.weight_storage == "int8"
    assert t.lr == pytest.approx(scale_lr(ref.lr, t.batch_size, ref.batch_size))
    assert scale_lr(1.0, 64, 16) == pytest.approx(2.0)
    assert scale_lr(1.0, 64, 16, "linear") == pytest.approx(4.0)


def test_derived_statistics_are_the_logged_ones(tiny_config, images, tmp_path: Path) -> None:
    trainer = _trainer(_run(tiny_config), images, tmp_path)
    raw = trainer.train_step(0)
    assert all(isinstance(raw[k], torch.Tensor) for k in ("mse", "pq", "ce"))
    derive = trainer.loop.plan.derive
    assert derive is not None
    row: Stats = derive({"mse": 0.01, "pq": 0.5, "ce": math.log(2) * 3, "restarted": 2.0})
    assert row == pytest.approx({"psnr": 20.0, "pq": 0.5, "mim_bits": 3.0, "restarted": 2.0})


def test_a_time_budget_ends_the_run_on_time(tiny_config, images, tmp_path: Path) -> None:
    run = _run(tiny_config, steps=100_000, mim_extra_steps=100_000, mim_extra_batch=2)
    res = _trainer(run, images, tmp_path).run(time_budget=2.0)
    assert 5 < res.steps < 100_000 and res.seconds < 6.0
    assert 0 < load_model(res.model_path).meta["mim_extra_steps"] < 100_000


def test_a_state_from_other_generators_is_refused(tiny_config, images, tmp_path: Path) -> None:
    _trainer(_run(tiny_config, steps=3), images, tmp_path).run()

    class OtherGenerator(torch.Generator):
        def set_state(self, new_state: torch.Tensor) -> torch.Generator:
            raise RuntimeError("state of another generator type")

    other = _trainer(_run(tiny_config, steps=6), images, tmp_path)
    other.loop.rngs["mask"] = OtherGenerator()
    with pytest.raises(InputError, match="other speed options"):
        other.try_resume()
