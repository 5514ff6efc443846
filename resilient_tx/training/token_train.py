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

Both stop on a step cap or a wall-clock budget (:class:`~resilient_tx.training.trainer.StepBudget`),
checkpoint every ``checkpoint_every`` steps to ``OUT/last_<phase>.pt`` and resume from it.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from resilient_tx.config import ArConfig, TrainConfig, model_config_from_dict
from resilient_tx.errors import InputError
from resilient_tx.model import PQMIM
from resilient_tx.model.ar import ArPrior
from resilient_tx.training.crops import CropSampler
from resilient_tx.training.trainer import StepBudget, mim_loss, sample_mim_mask
from resilient_tx.zoo.checkpoint import LoadedModel, save_model, save_prior


@dataclass(frozen=True)
class PhaseResult:
    path: Path
    steps: int
    final_bits: float  # cross-entropy in bits per sub-index over the last batches
    seconds: float
    model_id: str | None  # the new model's id (MIM continuation only)


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    """Linear warmup then cosine decay to ``min_lr`` at ``total``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class FrozenTokens:
    """Token batches (B, M, crop/f, crop/f) from random image crops via a frozen encoder."""

    def __init__(self, model: LoadedModel, images: list[np.ndarray], crop: int, seed: int,
                 device: torch.device) -> None:
        f = model.cfg.downsample
        if crop % f:
            raise InputError(f"crop {crop} must be a multiple of the downsampling factor {f}")
        self.sampler = CropSampler(images, crop, seed)
        self.net = copy.deepcopy(model.net).to(device).eval()
        self.device = device

    @torch.no_grad()
    def batch(self, n: int) -> torch.Tensor:
        return self.net.tokens(self.sampler.batch(n).to(self.device))


class _Phase:
    """Shared loop: schedule, budget, progress bar, CSV log and resumable checkpoints."""

    name = "phase"

    def __init__(self, module: torch.nn.Module, out_dir: Path, cap: int, lr: float,
                 min_lr: float, warmup: int, weight_decay: float, checkpoint_every: int,
                 time_budget: float) -> None:
        self.module, self.out_dir, self.cap = module, out_dir, cap
        self.lr, self.min_lr, self.warmup = lr, min_lr, warmup
        self.checkpoint_every, self.time_budget = checkpoint_every, time_budget
        self.opt = torch.optim.AdamW(module.parameters(), lr=lr, betas=(0.9, 0.95),
                                     weight_decay=weight_decay)
        self.gen = torch.Generator()
        self.step = 0

    def _state_path(self) -> Path:
        return self.out_dir / f"last_{self.name}.pt"

    def _save_state(self) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        torch.save({"net": self.module.state_dict(), "opt": self.opt.state_dict(),
                    "step": self.step, "gen": self.gen.get_state(),
                    "sampler": self.tokens.sampler.gen.get_state()}, tmp)
        tmp.replace(self._state_path())  # atomic: a kill mid-save never loses the state

    def try_resume(self, device: torch.device) -> bool:
        p = self._state_path()
        if not p.is_file():
            return False
        st = torch.load(p, map_location=device, weights_only=True)
        try:
            self.module.load_state_dict(st["net"])
        except RuntimeError as exc:
            raise InputError(f"{p} belongs to a different setup; use a new --out") from exc
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.gen.set_state(st["gen"].cpu())
        self.tokens.sampler.gen.set_state(st["sampler"].cpu())
        return True

    def _loss(self) -> torch.Tensor:
        raise NotImplementedError

    def _log(self, bits: float) -> None:
        path = self.out_dir / f"log_{self.name}.csv"
        new = not path.exists()
        with path.open("a", newline="") as f:
            wr = csv.writer(f)
            if new:
                wr.writerow(["step", "lr", "bits"])
            wr.writerow([self.step, f"{self.opt.param_groups[0]['lr']:.3g}", f"{bits:.4f}"])

    def _loop(self, desc: str) -> tuple[float, float]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        deadline = t0 + self.time_budget if self.time_budget else None
        budget = StepBudget(self.cap, deadline, self.step)
        bits: list[float] = []
        self.module.train()
        bar = tqdm(total=self.cap, initial=self.step, desc=desc, unit="step")
        while self.step < budget.total:
            for g in self.opt.param_groups:
                g["lr"] = cosine_lr(self.step, budget.total, self.lr, self.min_lr, self.warmup)
            loss = self._loss()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), 1.0)
            self.opt.step()
            bits = (bits + [loss.item() / math.log(2)])[-50:]
            self.step += 1
            if budget.update(self.step, time.perf_counter()) != bar.total:
                bar.total = budget.total
            bar.update(1)
            if self.step % 10 == 0:
                bar.set_postfix(bits=f"{sum(bits) / len(bits):.3f}")
                self._log(sum(bits) / len(bits))
            if self.step % self.checkpoint_every == 0 or self.step == budget.total:
                self._save_state()
        bar.close()
        self.module.eval()
        return (sum(bits) / len(bits) if bits else float("nan")), time.perf_counter() - t0


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


class MimFinetuner(_Phase):
    """Continue training ``model``'s MIM on fresh frozen tokens (PQ-MIM paper, Sec. 3.3),
    or, given ``mim_changes``, train a new MIM of another size from scratch."""

    name = "mim"

    def __init__(self, model: LoadedModel, images: list[np.ndarray], cfg: TrainConfig,
                 out_dir: Path, device: torch.device,
                 mim_changes: dict[str, Any] | None = None) -> None:
        self.model = model
        torch.manual_seed(cfg.seed)
        net = with_new_mim(model, mim_changes) if mim_changes else copy.deepcopy(model.net)
        self.net = net.to(device)
        self.cfg = cfg
        super().__init__(self.net.mim, out_dir, cfg.mim_extra_steps, cfg.lr, cfg.min_lr,
                         cfg.warmup_steps, cfg.weight_decay, cfg.checkpoint_every,
                         cfg.time_budget)
        self.gen.manual_seed(cfg.seed + 1)
        self.tokens = FrozenTokens(model, images, cfg.crop, cfg.seed, device)

    def _loss(self) -> torch.Tensor:
        tok = self.tokens.batch(self.cfg.mim_extra_batch)
        b, _, h, w = tok.shape
        mask = sample_mim_mask(b, h, w, self.net.cfg.stages, self.cfg.quincunx_mask_prob,
                               self.gen)
        return mim_loss(self.net, tok, mask)

    def run(self) -> PhaseResult:
        bits, seconds = self._loop("MIM on frozen tokens")
        meta = {**self.model.meta, "finetuned_from": self.model.model_id_hex,
                "mim_finetune_steps": self.step, "final_mim_bits": round(bits, 4)}
        path = self.out_dir / "model.pt"
        model_id = save_model(path, self.net, self.model.marginals, meta,
                              self.cfg.weight_storage)
        return PhaseResult(path, self.step, bits, seconds, model_id.hex())


def ar_loss(prior: ArPrior, tok: torch.Tensor, max_mask_ratio: float,
            gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy (nats) of every window token given the tokens before it, with a
    U(0, max_mask_ratio) share of the *inputs* replaced by the lost token (Sec. 2.3)."""
    b, _, h, w = tok.shape
    ratio = torch.rand(b, 1, 1, generator=gen) * max_mask_ratio
    lost = (torch.rand(b, h, w, generator=gen) < ratio).to(tok.device)
    logits = prior(tok, lost)  # (B, L, M, V)
    target = tok.reshape(b, tok.shape[1], h * w).transpose(1, 2)  # (B, L, M)
    return F.cross_entropy(logits.reshape(-1, prior.v), target.reshape(-1))


class ArTrainer(_Phase):
    """Train the AR inpainting prior on ``model``'s frozen tokens (Sec. 2.3)."""

    name = "ar"

    def __init__(self, model: LoadedModel, images: list[np.ndarray], ar: ArConfig,
                 cfg: TrainConfig, out_dir: Path, device: torch.device) -> None:
        self.model, self.ar, self.storage = model, ar, cfg.weight_storage
        torch.manual_seed(cfg.seed)
        self.prior = ArPrior(ar, model.cfg.num_subvectors, model.cfg.codebook_size).to(device)
        super().__init__(self.prior, out_dir, ar.steps, ar.lr, ar.min_lr, ar.warmup_steps,
                         ar.weight_decay, cfg.checkpoint_every, cfg.time_budget)
        self.gen.manual_seed(cfg.seed + 2)
        crop = ar.window * model.cfg.downsample
        self.tokens = FrozenTokens(model, images, crop, cfg.seed, device)

    def _loss(self) -> torch.Tensor:
        tok = self.tokens.batch(self.ar.batch_size)
        return ar_loss(self.prior, tok, self.ar.max_mask_ratio, self.gen)

    def run(self) -> PhaseResult:
        bits, seconds = self._loop("AR prior on frozen tokens")
        path = self.out_dir / "ar.pt"
        save_prior(path, self.prior, self.model.model_id,
                   {"ar_steps": self.step, "final_ar_bits": round(bits, 4),
                    "base": self.model.name}, self.storage)
        return PhaseResult(path, self.step, bits, seconds, None)
