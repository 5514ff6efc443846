"""Training on the frozen tokens of a trained model: MIM continuation and the AR prior.

Both learn distributions over the token grid of a fixed PQ-VAE, so they share one data
path: random crops of the training images (at random pixel offsets and flips, so every
batch is a fresh tokenisation, not a replay of a fixed token set) go through the frozen
encoder and quantizer under ``no_grad``.

* :class:`MimFinetuner` continues training a model's MIM entropy model (PQ-MIM paper,
  Sec. 3.3: the MIM never feeds gradient back into the encoder, so training it on frozen
  tokens is the same objective). The autoencoder, codebooks and marginals are untouched;
  the weights change, so the result gets a new model id.
* :class:`ArTrainer` trains the autoregressive inpainting prior (VQGAN extreme-compression
  paper, Sec. 2.3) with the paper's masking: a share U(0, ``max_mask_ratio``) of each
  window's input tokens is replaced by the lost token; targets are the true tokens.

Both run the shared loop of :mod:`resilient_tx.training.loop` through :class:`TokenPhase`:
they stop on a step cap or a wall-clock budget, log to ``OUT/log_<phase>.csv``, checkpoint
every ``checkpoint_every`` steps to ``OUT/last_<phase>.pt`` and resume from it. Like the
joint trainer they take an :class:`~resilient_tx.training.efficiency.Efficiency` (the frozen
encoder always runs in float32, so the tokens are the ones coding produces) and run
data-parallel under ``torchrun`` (:mod:`resilient_tx.training.distributed`).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from resilient_tx.config import ArConfig, TrainConfig, model_config_from_dict
from resilient_tx.errors import InputError
from resilient_tx.model import PQMIM
from resilient_tx.model.ar import ArPrior
from resilient_tx.training import distributed
from resilient_tx.training.crops import CropSampler, DeviceCropSampler
from resilient_tx.training.distributed import SINGLE, DistInfo
from resilient_tx.training.efficiency import Efficiency
from resilient_tx.training.loop import (
    LN2,
    LoopPlan,
    LoopResult,
    Schedule,
    StepStats,
    TrainLoop,
    descend,
)
from resilient_tx.training.trainer import mim_loss, mim_masks, sample_mim_mask, save_model_once
from resilient_tx.zoo.checkpoint import LoadedModel, save_prior


@dataclass(frozen=True)
class PhaseResult:
    path: Path
    steps: int
    final_bits: float  # cross-entropy in bits per sub-index over the last batches
    seconds: float
    model_id: str | None  # the new model's id (MIM continuation only)


class FrozenTokens:
    """Token batches (B, M, crop/f, crop/f) from random image crops via a frozen encoder.

    ``device_data``: crops cut on the device (:class:`DeviceCropSampler`).
    """

    def __init__(self, model: LoadedModel, images: list[np.ndarray], crop: int, seed: int,
                 device: torch.device, device_data: bool = False) -> None:
        f = model.cfg.downsample
        if crop % f:
            raise InputError(f"crop {crop} must be a multiple of the downsampling factor {f}")
        self.sampler: CropSampler | DeviceCropSampler = (
            DeviceCropSampler(images, crop, seed, device) if device_data
            else CropSampler(images, crop, seed))
        self.net = copy.deepcopy(model.net).to(device).eval()
        self.device = device

    @torch.no_grad()
    def batch(self, n: int) -> torch.Tensor:
        # float32 even inside a bf16 training step: these must be the tokens coding makes.
        with Efficiency.full_precision(self.device):
            return self.net.tokens(self.sampler.batch(n).to(self.device))


@dataclass(frozen=True)
class _PhasePlan:
    """A phase's optimisation settings (from ``train:`` or ``ar:``)."""

    cap: int
    schedule: Schedule
    weight_decay: float
    checkpoint_every: int
    time_budget: float  # seconds, 0 = none
    seed: int  # of the generator the loss draws its masks from
    eff: Efficiency
    dist: DistInfo


class TokenPhase(ABC):
    """A module trained on ``model``'s frozen tokens through the shared loop.

    Subclasses build the module and the token source, then call ``_setup``; they define
    ``_loss`` (one batch's cross-entropy in nats, computed through ``forward``: the module,
    under DDP with several ranks) and ``run``. AdamW decays every weight of the module (it
    holds no codebooks); the step's statistic is ``bits`` per sub-index.
    """

    name: ClassVar[str] = "phase"
    desc: ClassVar[str] = "training on frozen tokens"

    model: LoadedModel
    module: torch.nn.Module
    tokens: FrozenTokens
    forward: torch.nn.Module  # ``module``, under DDP with several ranks
    gen: torch.Generator  # the loss's masks
    loop: TrainLoop
    out_dir: Path
    time_budget: float
    eff: Efficiency
    dist: DistInfo

    def _setup(self, model: LoadedModel, module: torch.nn.Module, tokens: FrozenTokens,
               plan: _PhasePlan, out_dir: Path) -> None:
        self.model, self.module, self.tokens = model, module, tokens
        self.out_dir, self.time_budget = out_dir, plan.time_budget
        self.eff, self.dist = plan.eff, plan.dist
        dev = tokens.device if plan.eff.device_data else torch.device("cpu")
        self.gen = torch.Generator(device=dev).manual_seed(
            distributed.rank_seed(plan.seed, plan.dist))
        schedule = dataclasses.replace(plan.schedule, lr=plan.dist.scale_lr(plan.schedule.lr))
        opt = plan.eff.adamw(module.parameters(), schedule.lr, (0.9, 0.95), plan.weight_decay,
                             tokens.device)
        log = out_dir / f"log_{self.name}.csv"
        loop_plan = LoopPlan(self.desc, plan.cap, schedule, log, ("step", "lr", "bits"),
                             checkpoint_path=self.state_path,
                             checkpoint_every=plan.checkpoint_every, show=("bits",),
                             derive=lambda r: {"bits": r["ce"] / LN2})
        self.loop = TrainLoop(loop_plan, module, opt,
                              {"sampler": tokens.sampler.gen, "mask": self.gen},
                              {"phase": self.name, "base": model.model_id_hex}, plan.dist)
        self.forward = distributed.wrap(module, plan.dist, tokens.device)

    @property
    def step(self) -> int:
        """Steps done so far (including those before a resume)."""
        return self.loop.step

    @property
    def state_path(self) -> Path:
        return self.out_dir / f"last_{self.name}.pt"

    def try_resume(self) -> bool:
        """Continue from ``state_path`` if it exists; :class:`InputError` if it belongs to
        another run (another phase, base model or module size)."""
        return self.loop.try_resume()

    @abstractmethod
    def _loss(self) -> torch.Tensor:
        """One batch's cross-entropy in nats per sub-index."""

    @abstractmethod
    def run(self) -> PhaseResult:
        """Train to the cap or the time budget and write the result file."""

    def _step(self, step: int) -> StepStats:
        with self.eff.autocast(self.tokens.device):
            loss = self._loss()
        descend(self.loop.opt, loss, self.module.parameters())
        return {"ce": loss.detach()}

    def _masks(self, b: int, h: int, w: int, stages: int, quincunx_prob: float) -> torch.Tensor:
        if self.eff.sync_free:
            return mim_masks(b, h, w, stages, quincunx_prob, self.gen)
        return sample_mim_mask(b, h, w, stages, quincunx_prob, self.gen)


    def _train(self) -> LoopResult:
        deadline = time.perf_counter() + self.time_budget if self.time_budget else None
        return self.loop.run(self._step, deadline)


#: ModelConfig fields a MIM-only run may change: the entropy model's size, nothing the
#: frozen autoencoder or the token grid depends on.
MIM_FIELDS = ("mim_dim", "mim_depth", "mim_heads", "mim_mlp_ratio")


def with_new_mim(model: LoadedModel, changes: dict[str, Any]) -> PQMIM:
    """``model``'s autoencoder and codebooks with a freshly initialised MIM of another size."""
    bad = sorted(set(changes) - set(MIM_FIELDS))
    if bad:
        raise InputError(f"a MIM-only run keeps the autoencoder: only {', '.join(MIM_FIELDS)} "
                         f"may change, not {', '.join(bad)}")
    cfg = model_config_from_dict({**dataclasses.asdict(model.cfg), **changes})  # type-checked
    try:
        net = PQMIM(cfg)
    except ValueError as exc:  # e.g. mim_dim not divisible by mim_heads
        raise InputError(f"model: {exc}") from exc
    kept = {k: v for k, v in model.net.state_dict().items() if not k.startswith("mim.")}
    net.load_state_dict({**net.state_dict(), **kept})
    return net


class MimFinetuner(TokenPhase):
    """Continue training ``model``'s MIM on fresh frozen tokens (PQ-MIM paper, Sec. 3.3),
    or, given ``mim_changes``, train a new MIM of another size from scratch."""

    name = "mim"
    desc = "MIM on frozen tokens"

    def __init__(self, model: LoadedModel, images: list[np.ndarray], cfg: TrainConfig,
                 out_dir: Path, device: torch.device,
                 mim_changes: dict[str, Any] | None = None, *, eff: Efficiency | None = None,
                 dist: DistInfo = SINGLE) -> None:
        eff = eff or Efficiency.from_train_config(cfg, device)
        torch.manual_seed(cfg.seed)
        net = with_new_mim(model, mim_changes) if mim_changes else copy.deepcopy(model.net)
        self.net = net.to(device)
        self.cfg = cfg
        plan = _PhasePlan(cfg.mim_extra_steps, Schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps),
                          cfg.weight_decay, cfg.checkpoint_every, cfg.time_budget, cfg.seed + 1,
                          eff, dist)
        tokens = FrozenTokens(model, images, cfg.crop, distributed.rank_seed(cfg.seed, dist),
                              device, eff.device_data)
        self._setup(model, self.net.mim, tokens, plan, out_dir)

    def _loss(self) -> torch.Tensor:
        tok = self.tokens.batch(self.cfg.mim_extra_batch)
        b, _, h, w = tok.shape
        mask = self._masks(b, h, w, self.net.cfg.stages, self.cfg.quincunx_mask_prob)
        return mim_loss(self.forward, tok, mask, dense=self.eff.sync_free)

    def run(self) -> PhaseResult:
        res = self._train()
        bits = res.mean("bits")
        meta = {**self.model.meta, "finetuned_from": self.model.model_id_hex,
                "mim_finetune_steps": res.steps, "final_mim_bits": round(bits, 4)}
        path = self.out_dir / "model.pt"
        model_id = save_model_once(path, self.net, self.model.marginals, meta,
                                   self.cfg.weight_storage, self.dist)
        return PhaseResult(path, res.steps, bits, res.seconds, model_id.hex())


def ar_loss(prior: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], tok: torch.Tensor,
            max_mask_ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy (nats) of every window token given the tokens before it, with a
    U(0, max_mask_ratio) share of the *inputs* replaced by the lost token (Sec. 2.3).

    ``prior`` is an :class:`ArPrior` (or its DDP wrapper); the masks are drawn on ``gen``'s
    device."""
    b, _, h, w = tok.shape
    ratio = torch.rand(b, 1, 1, generator=gen, device=gen.device) * max_mask_ratio
    lost = (torch.rand(b, h, w, generator=gen, device=gen.device) < ratio).to(tok.device)
    logits = prior(tok, lost)  # (B, L, M, V)
    target = tok.reshape(b, tok.shape[1], h * w).transpose(1, 2)  # (B, L, M)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


class ArTrainer(TokenPhase):
    """Train the AR inpainting prior on ``model``'s frozen tokens (Sec. 2.3)."""

    name = "ar"
    desc = "AR prior on frozen tokens"

    def __init__(self, model: LoadedModel, images: list[np.ndarray], ar: ArConfig,
                 cfg: TrainConfig, out_dir: Path, device: torch.device, *,
                 eff: Efficiency | None = None, dist: DistInfo = SINGLE) -> None:
        eff = eff or Efficiency.from_train_config(cfg, device)
        self.ar, self.storage = ar, cfg.weight_storage
        torch.manual_seed(cfg.seed)
        self.prior = ArPrior(ar, model.cfg.num_subvectors, model.cfg.codebook_size).to(device)
        plan = _PhasePlan(ar.steps, Schedule(ar.lr, ar.min_lr, ar.warmup_steps),
                          ar.weight_decay, cfg.checkpoint_every, cfg.time_budget, cfg.seed + 2,
                          eff, dist)
        crop = ar.window * model.cfg.downsample
        tokens = FrozenTokens(model, images, crop, distributed.rank_seed(cfg.seed, dist),
                              device, eff.device_data)
        self._setup(model, self.prior, tokens, plan, out_dir)

    def _loss(self) -> torch.Tensor:
        tok = self.tokens.batch(self.ar.batch_size)
        return ar_loss(self.forward, tok, self.ar.max_mask_ratio, self.gen)

    def run(self) -> PhaseResult:
        res = self._train()
        bits = res.mean("bits")
        path = self.out_dir / "ar.pt"
        if self.dist.is_main:
            save_prior(path, self.prior, self.model.model_id,
                       {"ar_steps": res.steps, "final_ar_bits": round(bits, 4),
                        "base": self.model.name}, self.storage)
        distributed.barrier(self.dist)
        return PhaseResult(path, res.steps, bits, res.seconds, None)
