"""The shared training loop: schedule, time budget, CSV log, checkpoint and exact resume."""

from __future__ import annotations

import csv
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from resilient_tx.config import ModelConfig
from resilient_tx.errors import InputError
from resilient_tx.model import PQMIM
from resilient_tx.training.loop import (
    LoopPlan,
    Schedule,
    Stats,
    StepBudget,
    StepFn,
    StepStats,
    TrainLoop,
    TrainState,
    descend,
    materialise,
)

SCHED = Schedule(lr=1.0, min_lr=0.1, warmup=2)
RUN_SCHED = Schedule(lr=1e-3, min_lr=1e-4, warmup=2)  # what the tiny runs train with


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # bit-identical runs, and no fight over the shared CPU


def test_schedule_warms_up_peaks_then_decays_to_min_lr() -> None:
    lrs = [SCHED.at(s, 10) for s in range(12)]
    assert lrs[0] == pytest.approx(0.5)  # warmup: (step + 1) / warmup of the peak
    assert lrs[1] == pytest.approx(1.0)  # peak at the end of the warmup
    assert lrs[2] == pytest.approx(1.0)  # cosine starts at the peak
    assert lrs[6] == pytest.approx(0.55)  # half-way through the decay: mid-point
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
    assert lrs[10] == pytest.approx(0.1) and lrs[11] == pytest.approx(0.1)  # end and after
    assert Schedule(0.5, 0.0).at(0, 4) == pytest.approx(0.5)  # no warmup: starts at the peak


def test_budget_without_deadline_is_the_cap() -> None:
    budget = StepBudget(100, None, 0)
    assert all(budget.update(s, 1e9) == 100 for s in range(1, 50))


def test_budget_shrinks_to_what_the_measured_speed_allows() -> None:
    budget = StepBudget(100, deadline=25.0, start_step=0, skip=5)
    totals = [budget.update(s, float(s)) for s in range(1, 11)]  # one step per second
    assert totals[:9] == [100] * 9  # still warming up / not yet re-estimated
    assert totals[9] == 25  # 10 done at t = 10, 15 more fit before t = 25
    assert StepBudget(20, 1e6, 0).update(10, 10.0) == 20  # never above the cap
    late = StepBudget(100, deadline=5.0, start_step=0)
    assert late.update(3, 6.0) == 3  # past the deadline: stop now


def test_train_state_round_trips(tmp_path: Path) -> None:
    st = TrainState(7, {"w": torch.arange(3.0)}, {"usage": torch.ones(2)}, {"state": {}},
                    {"g": torch.Generator().manual_seed(3).get_state()},
                    [torch.get_rng_state()], SCHED, 40, {"phase": "x", "model": {"a": (1, 2)}})
    st.save(tmp_path / "s.pt")
    back = TrainState.load(tmp_path / "s.pt")
    assert (back.step, back.schedule, back.total, back.run) == (7, SCHED, 40, st.run)
    assert torch.equal(back.weights["w"], st.weights["w"])
    assert torch.equal(back.buffers["usage"], st.buffers["usage"])
    assert torch.equal(back.rngs["g"], st.rngs["g"])
    assert not (tmp_path / "s.tmp").exists()
    torch.save({"net": {}, "step": 3}, tmp_path / "old.pt")  # the pre-loop layout
    with pytest.raises(InputError, match="older version"):
        TrainState.load(tmp_path / "old.pt")


@dataclass
class _Run:
    """A tiny joint PQ-VAE + MIM setup driven by :class:`TrainLoop`."""

    loop: TrainLoop
    net: PQMIM
    data: torch.Generator

    def step(self, step: int) -> Stats:
        x = torch.rand(2, 3, 32, 32, generator=self.data)
        out = self.net(x)
        tok = out.indices.detach()
        mask = torch.rand(tok.shape[0], *tok.shape[2:], generator=self.data) < 0.5
        mask[:, 0, 0] = True  # never an empty target set
        logits = self.net.mim(tok, mask)
        ce = F.cross_entropy(logits[mask].flatten(0, -2), tok.permute(0, 2, 3, 1)[mask].flatten())
        descend(self.loop.opt, F.mse_loss(out.recon, x) + out.pq_loss + ce,
                self.net.parameters())
        if step % 2 == 1:  # draws from torch's global generator and zeroes the usage buffer
            self.net.quantizer.restart_dead_codes(out.latent.detach())
        return {"bits": ce.item() / math.log(2)}


def _make_run(cfg: ModelConfig, out: Path, seed: int, cap: int = 6) -> _Run:
    torch.manual_seed(seed)
    net = PQMIM(cfg)
    plan = LoopPlan("test", cap, RUN_SCHED, out / "log.csv", ("phase", "step", "lr", "bits"),
                    phase="t", checkpoint_path=out / "last.pt", checkpoint_every=3)
    data = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=RUN_SCHED.lr)
    return _Run(TrainLoop(plan, net, opt, {"data": data}, {"phase": "t"}), net, data)


def _kill_at(run: _Run, at: int) -> StepFn:
    def step(i: int) -> Stats:
        if i == at:
            raise KeyboardInterrupt  # as if the process were stopped here
        return run.step(i)
    return step


def test_resume_continues_exactly_like_an_uninterrupted_run(tiny_config: ModelConfig,
                                                            tmp_path: Path) -> None:
    whole = _make_run(tiny_config, tmp_path / "whole", seed=0)
    res = whole.loop.run(whole.step)
    assert res.steps == 6 and math.isfinite(res.mean("bits"))

    first = _make_run(tiny_config, tmp_path / "cut", seed=0)
    with pytest.raises(KeyboardInterrupt):
        first.loop.run(_kill_at(first, 4))  # checkpoint at step 3, killed in step 5
    second = _make_run(tiny_config, tmp_path / "cut", seed=99)  # other weights, other rngs
    assert second.loop.try_resume() and second.loop.step == 3
    assert second.loop.run(second.step).steps == 6

    for k, v in whole.net.state_dict().items():
        assert torch.equal(v, second.net.state_dict()[k]), k
    assert torch.equal(whole.net.quantizer.usage, second.net.quantizer.usage)
    assert torch.equal(whole.data.get_state(), second.data.get_state())
    assert TrainState.load(tmp_path / "cut" / "last.pt").step == 6


def test_state_of_another_run_is_refused(tiny_config: ModelConfig, tmp_path: Path) -> None:
    run = _make_run(tiny_config, tmp_path, seed=0, cap=3)
    run.loop.run(run.step)
    other = _make_run(tiny_config, tmp_path, seed=0)
    other.loop.run_id = {"phase": "other"}
    with pytest.raises(InputError, match="different run"):
        other.loop.try_resume()
    assert not _make_run(tiny_config, tmp_path / "empty", seed=0).loop.try_resume()


def test_a_past_deadline_stops_after_one_step_and_checkpoints(tiny_config: ModelConfig,
                                                              tmp_path: Path) -> None:
    run = _make_run(tiny_config, tmp_path, seed=0, cap=1000)
    res = run.loop.run(run.step, deadline=0.0)  # perf_counter is long past 0
    assert res.steps == 1
    st = TrainState.load(tmp_path / "last.pt")
    assert (st.step, st.total) == (1, 1)  # the schedule shrank to the one step taken


def test_log_rows_every_ten_steps(tiny_config: ModelConfig, tmp_path: Path) -> None:
    run = _make_run(tiny_config, tmp_path, seed=0, cap=20)
    run.loop.run(run.step)
    rows = list(csv.DictReader((tmp_path / "log.csv").open()))
    assert [r["step"] for r in rows] == ["10", "20"]
    assert rows[0]["phase"] == "t" and math.isfinite(float(rows[0]["bits"]))
    assert float(rows[1]["lr"]) == pytest.approx(RUN_SCHED.at(19, 20), rel=1e-5)


def test_tensor_statistics_are_read_back_and_derived(tiny_config: ModelConfig,
                                                     tmp_path: Path) -> None:
    rows = materialise([{"a": torch.tensor(0.25), "b": 2.0}, {"a": torch.tensor(1.5), "b": 3}])
    assert rows == [{"a": 0.25, "b": 2.0}, {"a": 1.5, "b": 3.0}]
    assert all(type(v) is float for r in rows for v in r.values())
    run = _make_run(tiny_config, tmp_path, seed=0, cap=10)
    plan = dataclasses.replace(run.loop.plan, derive=lambda r: {"bits": 2 * r["bits"]})
    loop = TrainLoop(plan, run.net, run.loop.opt, {"data": run.data}, {"phase": "t"})

    def step(i: int) -> StepStats:
        return {"bits": torch.tensor(float(i))}  # left on the device until the log row

    res = loop.run(step)
    assert res.mean("bits") == pytest.approx(9.0)  # 2 * mean(0..9)
    row = next(csv.DictReader((tmp_path / "log.csv").open()))
    assert float(row["bits"]) == pytest.approx(9.0)
