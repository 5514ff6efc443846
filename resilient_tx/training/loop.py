"""The one training loop every phase runs: LR schedule, time budget, CSV log, checkpoints.

A phase (joint PQ-VAE + MIM, MIM on frozen tokens, MIM continuation, AR prior) supplies a
*step function* that draws a batch, computes its loss and updates the weights (see
:func:`descend`), returning the batch's statistics. :class:`TrainLoop` does the rest:

* sets the learning rate of every step from a :class:`Schedule`: linear warmup, then a
  cosine decay to ``min_lr`` (PQ-MIM paper, Sec. 4.1);
* with a wall-clock deadline, lets a :class:`StepBudget` shrink the planned number of steps
  to what the measured speed allows, and the cosine decay with it, so a run still ends its
  schedule on time;
* appends the mean statistics of the recent steps to a CSV log; a step may return its
  statistics as device tensors, which are read back ten steps at a time (one host-device
  sync per log row instead of one per statistic and step);
* writes a :class:`TrainState` every ``checkpoint_every`` steps and at the end, and resumes
  from one. A resumed run restores the weights, the optimizer, the step and every random
  generator, so, on the same machine with the same config, it continues exactly as if it
  had never stopped. The schedule is recorded but the resumed run follows its own config:
  a longer cap extends the run, a new time budget re-plans it.

Under ``torchrun`` (:mod:`resilient_tx.training.distributed`) every rank runs the loop; the
ranks agree on the planned total every ten steps (rank 0's estimate decides), only rank 0
logs (its own batches' statistics), checkpoints and shows progress, and after a resume
every other rank re-derives its generators from rank 0's.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from resilient_tx.errors import InputError
from resilient_tx.training import distributed
from resilient_tx.training.distributed import SINGLE, DistInfo
from resilient_tx.zoo.checkpoint import read_payload

#: Statistics of one step (or their means over the recent steps), by name.
Stats = dict[str, float]
#: What a step returns: statistics as floats or as 0-dim tensors (read back lazily).
StepStats = Mapping[str, float | torch.Tensor]
#: One optimisation step; gets the index of the step it performs (0-based).
StepFn = Callable[[int], StepStats]

STATE_FORMAT = "resilient-tx-train-state/1"
LOG_EVERY = 10  # steps between CSV rows and progress-bar updates
RECENT = 50  # steps the logged and returned statistics average over
LN2 = math.log(2)


@dataclass(frozen=True)
class Schedule:
    """Linear warmup to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr``."""

    lr: float
    min_lr: float
    warmup: int = 0

    def at(self, step: int, total: int) -> float:
        """Learning rate of ``step`` (0-based) in a run of ``total`` steps; ``min_lr`` after."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = min(1.0, (step - self.warmup) / max(1, total - self.warmup))
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1 + math.cos(math.pi * t))


class StepBudget:
    """How many steps fit before a wall-clock deadline, re-estimated as training runs.

    The first ``skip`` steps (CUDA start-up, allocator warm-up) are not timed. Until the
    speed is known the total is the planned ``cap``; after that it shrinks to what the
    measured speed allows (never below the steps already done), so the cosine schedule
    still reaches its end on time.
    """

    def __init__(self, cap: int, deadline: float | None, start_step: int, skip: int = 5) -> None:
        self.cap = cap
        self.deadline = deadline
        self.total = cap
        self._skip_until = start_step + skip
        self._t_ref: float | None = None
        self._step_ref = 0

    def update(self, step: int, now: float) -> int:
        """The total after ``step`` steps are done at time ``now``."""
        if self.deadline is None:
            return self.total
        if step == self._skip_until:
            self._t_ref, self._step_ref = now, step
        elif self._t_ref is not None and step > self._step_ref and step % 10 == 0:
            per_step = (now - self._t_ref) / (step - self._step_ref)
            fits = step + int(max(0.0, self.deadline - now) / per_step)
            self.total = max(step, min(self.cap, fits))
        if now >= self.deadline:
            self.total = step
        return self.total


def descend(opt: torch.optim.Optimizer, loss: torch.Tensor,
            params: Iterable[torch.nn.Parameter], max_norm: float = 1.0) -> None:
    """One optimizer step on ``loss``; gradients clipped to ``max_norm`` for stability."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


def _global_rng() -> list[torch.Tensor]:
    """Torch's global CPU generator, then one per CUDA device once CUDA is in use (the
    models draw from them, e.g. when they re-seed dead codebook entries)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return [torch.get_rng_state(), *cuda]


def _set_global_rng(states: list[torch.Tensor]) -> None:
    torch.set_rng_state(states[0].cpu())
    cuda = [s.cpu() for s in states[1:]]
    # A state from another GPU count cannot be mapped; such a resume is merely not exact.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


@dataclass(frozen=True)
class TrainState:
    """A resumable snapshot of a phase: the one checkpoint format of every training loop.

    ``run`` identifies what was being trained (phase name, model config or base model id);
    a state only resumes a loop with the same ``run``. ``buffers`` are the module's
    non-persistent buffers, which its ``state_dict`` leaves out (e.g. the quantizer's usage
    counts since its last dead-code restart) but a run continues from. ``rngs`` are the
    phase's own generators by name, ``global_rng`` torch's (see :func:`_global_rng`).
    ``schedule`` and ``total`` (the planned steps when it was written) record where the
    run stood.
    """

    step: int
    weights: dict[str, torch.Tensor]
    buffers: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rngs: dict[str, torch.Tensor]
    global_rng: list[torch.Tensor]
    schedule: Schedule
    total: int
    run: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        # Field by field, not dataclasses.asdict: that would deep-copy every tensor.
        payload = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        payload.update(format=STATE_FORMAT, schedule=dataclasses.asdict(self.schedule))
        tmp = path.with_suffix(".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)  # atomic: a kill mid-save never loses the previous state

    @classmethod
    def load(cls, path: Path) -> TrainState:
        """Read a state onto the CPU (loading it into a module moves it to its device)."""
        what = "resilient-tx training state (one from an older version cannot resume; " \
               "use a new --out)"
        p = read_payload(path, STATE_FORMAT, what)
        try:
            return cls(int(p["step"]), p["weights"], p["buffers"], p["optimizer"], p["rngs"],
                       list(p["global_rng"]), Schedule(**p["schedule"]), int(p["total"]),
                       dict(p["run"]))
        except (KeyError, TypeError) as exc:
            raise InputError(f"{path}: damaged training state ({exc})") from exc


@dataclass(frozen=True)
class LoopPlan:
    """What a loop runs: its label, step cap, schedule and where it logs and checkpoints.

    ``log_fields`` are the CSV columns (any of ``phase``, ``step``, ``lr`` and the step
    function's statistics); ``phase`` fills the ``phase`` column, so phases can share a log.
    ``checkpoint_path`` None: the phase is not resumable. ``show``: statistics on the
    progress bar. ``derive`` turns a step's statistics, once read back as floats, into
    the logged ones (e.g. a mean squared error into a PSNR); None keeps them.
    """

    desc: str
    cap: int
    schedule: Schedule
    log_path: Path
    log_fields: tuple[str, ...]
    phase: str = ""
    checkpoint_path: Path | None = None
    checkpoint_every: int = 500
    show: tuple[str, ...] = ()
    derive: Callable[[Stats], Stats] | None = None


@dataclass(frozen=True)
class LoopResult:
    steps: int  # the step count reached (including steps before a resume)
    stats: Stats  # means over the last RECENT steps of this run; empty if it ran none
    seconds: float

    def mean(self, key: str, default: float = math.nan) -> float:
        return self.stats.get(key, default)


def materialise(rows: list[StepStats]) -> list[Stats]:
    """``rows`` with every tensor read back as a float, in one transfer per device."""
    tensors = [v for r in rows for v in r.values() if isinstance(v, torch.Tensor)]
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach().float().reshape(()))
    values = {d: iter(torch.stack(ts).tolist()) for d, ts in by_device.items()}
    return [{k: next(values[v.device]) if isinstance(v, torch.Tensor) else float(v)
             for k, v in r.items()} for r in rows]


def _mean(recent: Iterable[Stats]) -> Stats:
    rows = list(recent)
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}


def _append_csv(path: Path, fields: tuple[str, ...], row: Mapping[str, object]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
        if new:
            wr.writeheader()
        wr.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})


class TrainLoop:
    """Runs a step function under a :class:`LoopPlan`; owns the step count and the state.

    ``module`` holds every trained weight (it is what a checkpoint stores and what is put
    in training mode), ``opt`` its optimizer, ``rngs`` the generators the step function
    draws from, ``run`` what a checkpoint must match to be resumed here, ``dist`` this
    process's rank (see the module doc).
    """

    def __init__(self, plan: LoopPlan, module: torch.nn.Module, opt: torch.optim.Optimizer,
                 rngs: Mapping[str, torch.Generator] | None = None,
                 run: Mapping[str, Any] | None = None, dist: DistInfo = SINGLE) -> None:
        self.plan, self.module, self.opt = plan, module, opt
        self.rngs = dict(rngs or {})
        self.run_id = dict(run or {})
        self.dist = dist
        self.step = 0

    def state(self, total: int) -> TrainState:
        weights = self.module.state_dict()
        extra = {k: b for k, b in self.module.named_buffers() if k not in weights}
        return TrainState(self.step, weights, extra, self.opt.state_dict(),
                          {k: g.get_state() for k, g in self.rngs.items()}, _global_rng(),
                          self.plan.schedule, total, self.run_id)

    def restore(self, st: TrainState, source: Path) -> None:
        """Continue from ``st``; :class:`InputError` if it belongs to another run."""
        if st.run != self.run_id or set(st.rngs) != set(self.rngs):
            raise InputError(f"{source} belongs to a different run; use a new --out")
        try:
            self.module.load_state_dict(st.weights)
        except RuntimeError as exc:  # same run name, other shapes: e.g. another MIM size
            raise InputError(f"{source} belongs to a different setup; use a new --out") from exc
        with torch.no_grad():
            for name, buf in self.module.named_buffers():
                if name in st.buffers:
                    buf.copy_(st.buffers[name])
        self.opt.load_state_dict(st.optimizer)
        for name, g in self.rngs.items():
            try:
                g.set_state(st.rngs[name].cpu())
            except RuntimeError as exc:  # e.g. a CUDA generator's state into a CPU one
                raise InputError(f"{source} was written with other speed options or on "
                                 "another device; use a new --out") from exc
            distributed.fork(g, self.dist)
        _set_global_rng(st.global_rng)
        self.step = st.step

    def try_resume(self) -> bool:
        """Restore the plan's checkpoint if there is one; False if there is none."""
        p = self.plan.checkpoint_path
        if p is None or not p.is_file():
            return False
        self.restore(TrainState.load(p), p)
        return True

    def run(self, step_fn: StepFn, deadline: float | None = None) -> LoopResult:
        """Step from the current step to the cap, or until ``deadline`` (perf_counter time)."""
        plan, t0 = self.plan, time.perf_counter()
        if self.dist.is_main:
            plan.log_path.parent.mkdir(parents=True, exist_ok=True)
        budget = StepBudget(plan.cap, deadline, self.step)
        total = plan.cap
        recent: deque[Stats] = deque(maxlen=RECENT)
        pending: list[StepStats] = []
        self.module.train()
        bar = tqdm(total=plan.cap, initial=self.step, desc=plan.desc, unit="step",
                   disable=not self.dist.is_main)
        while self.step < total:
            for g in self.opt.param_groups:
                g["lr"] = plan.schedule.at(self.step, total)
            pending.append(step_fn(self.step))
            self.step += 1
            total = self._next_total(budget, total)
            if total != bar.total:
                bar.total = total
            bar.update(1)
            if self.step % LOG_EVERY == 0:
                recent.extend(self._read(pending))
                self._log(bar, _mean(recent))
            if self._checkpoint_due(total):
                self.save(total)
        recent.extend(self._read(pending))
        bar.close()
        self.module.eval()
        return LoopResult(self.step, _mean(recent), time.perf_counter() - t0)

    def _next_total(self, budget: StepBudget, total: int) -> int:
        """The planned total after this step; with several ranks, rank 0's, agreed every
        LOG_EVERY steps (between agreements it stays as it was)."""
        new = budget.update(self.step, time.perf_counter())
        if not self.dist.enabled:
            return new
        if self.step % LOG_EVERY:
            return total
        return max(self.step, distributed.agree(self.dist, new))

    def _read(self, pending: list[StepStats]) -> list[Stats]:
        rows = materialise(pending)
        pending.clear()
        derive = self.plan.derive
        return [derive(r) for r in rows] if derive else rows

    def save(self, total: int) -> None:
        if self.plan.checkpoint_path is not None and self.dist.is_main:
            self.state(total).save(self.plan.checkpoint_path)

    def _checkpoint_due(self, total: int) -> bool:
        return self.step % self.plan.checkpoint_every == 0 or self.step == total

    def _log(self, bar: tqdm, avg: Stats) -> None:
        if not self.dist.is_main:
            return
        bar.set_postfix({k: f"{avg[k]:.3f}" for k in self.plan.show if k in avg})
        row = {"phase": self.plan.phase, "step": self.step,
               "lr": float(self.opt.param_groups[0]["lr"]), **avg}
        _append_csv(self.plan.log_path, self.plan.log_fields, row)
