"""Data-parallel training: two CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from resilient_tx.config import ModelConfig, RunConfig, TrainConfig
from resilient_tx.errors import InputError
from resilient_tx.training import distributed
from resilient_tx.training.distributed import SINGLE, DistInfo, from_env
from resilient_tx.training.trainer import Trainer
from resilient_tx.zoo.checkpoint import load_model

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)
# A time budget with large caps: the ranks must agree on when to stop, or they would hang.
RUN = RunConfig(model=TINY, train=TrainConfig(
    steps=100_000, batch_size=2, crop=32, warmup_steps=2, dead_code_every=3,
    mim_extra_steps=100_000, mim_extra_batch=2, checkpoint_every=10, time_budget=2.5,
    mim_time_share=0.3))
TIMEOUT = 120.0  # seconds before a hung run is killed and the test fails


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    """One rank of a data-parallel run; saves what it ended with to ``out/rank<N>.pt``."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    with distributed.session(torch.device("cpu")) as (info, device):
        trainer = Trainer(RUN, None, Path(out), device, images=_images(), dist=info)
        first_batch = trainer.sampler.batch(2)  # what this rank draws
        res = trainer.run()
        torch.save({"weights": trainer.net.state_dict(), "id": res.model_id,
                    "steps": res.steps, "first_batch": first_batch},
                   Path(out) / f"rank{rank}.pt")


def _spawn(world: int, out: Path) -> None:
    ctx = mp.spawn(_worker, args=(world, _free_port(), str(out)), nprocs=world, join=False)
    deadline = time.monotonic() + TIMEOUT
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("data-parallel run hung")


@pytest.mark.slow
def test_two_ranks_end_with_identical_weights(tmp_path: Path) -> None:
    _spawn(2, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["steps"] == r1["steps"] > 3  # agreed on the end of a time-budgeted run
    assert not torch.equal(r0["first_batch"], r1["first_batch"])  # each rank its own crops
    for k, v in r0["weights"].items():  # all-reduced gradients, broadcast dead-code restarts
        assert torch.equal(v, r1["weights"][k]), k
    assert r0["id"] == r1["id"] == load_model(tmp_path / "model.pt").model_id_hex
    assert (tmp_path / "log.csv").is_file() and (tmp_path / "last.pt").is_file()


@pytest.mark.slow
def test_cli_train_runs_under_torchrun(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i, a in enumerate(_images()):
        Image.fromarray(a).save(data / f"{i}.png")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {widths: [8, 8, 8], latent_dim: 16, num_subvectors: 2, "
                   "codebook_size: 16, latent_blocks: 1, latent_heads: 2, mim_dim: 16, "
                   "mim_depth: 1, mim_heads: 2}\n"
                   "train: {steps: 4, batch_size: 2, crop: 32, warmup_steps: 1, "
                   "mim_extra_steps: 2, mim_extra_batch: 2}\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(_free_port()), "-m", "resilient_tx.app.cli", "train",
           "--data", str(data), "--config", str(cfg), "--out", str(tmp_path / "run"),
           "--device", "cpu"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("written to") == 1  # rank 0 reports, rank 1 does not
    assert load_model(tmp_path / "run" / "model.pt").meta["train_steps"] == 4


def test_environment_without_torchrun_is_a_single_process() -> None:
    assert from_env({}) is SINGLE and not SINGLE.enabled and SINGLE.is_main
    assert from_env({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    info = from_env({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert info == DistInfo(2, 4, 0) and info.enabled and not info.is_main
    assert info.scale_lr(1.0) == pytest.approx(2.0)  # square-root rule over 4 ranks
    with pytest.raises(InputError, match="outside"):
        from_env({"WORLD_SIZE": "2", "RANK": "2"})
    with pytest.raises(InputError, match="torchrun"):
        from_env({"WORLD_SIZE": "two"})


def test_rank_streams_differ_and_fork_only_other_ranks() -> None:
    assert distributed.rank_seed(5, SINGLE) == 5
    assert distributed.rank_seed(5, DistInfo(1, 2, 1)) != 5
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    distributed.fork(g0, SINGLE)  # rank 0 keeps the restored stream
    distributed.fork(g1, DistInfo(1, 2, 1))
    ref = torch.Generator().manual_seed(3)
    assert torch.equal(g0.get_state(), ref.get_state())
    assert not torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=ref))
