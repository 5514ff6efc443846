"""Joint training of the PQ-VAE and the MIM entropy model (PQ-MIM paper, Sec. 3.3, 4.1).

The MIM sees the quantizer's indices *detached*: no gradient flows from the entropy model
into the encoder or the codebooks, exactly as in the paper, so the two could equally be
trained in sequence. Its masks mix the paper's U(0, 1) random masking with quincunx stage
masks (what it is actually asked at coding time). An optional MIM-only phase then trains the
entropy model further on frozen tokens of whole training images, which is cheap because the
autoencoder is no longer run backwards.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import ModelConfig, RunConfig, TrainConfig
from resilient_tx.errors import InputError
from resilient_tx.images import list_images, load_rgb
from resilient_tx.model import PQMIM, pad_to_multiple
from resilient_tx.training.crops import CropSampler
from resilient_tx.zoo.checkpoint import save_model

LOG_FIELDS = ["phase", "step", "lr", "psnr", "pq", "mim_bits", "restarted"]


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    model_id: str
    steps: int
    final_psnr: float
    final_mim_bits: float  # MIM cross-entropy in bits per sub-index on the last batches
    seconds: float


def lr_at(step: int, cfg: TrainConfig, total: int | None = None) -> float:
    """Linear warmup then cosine decay to ``min_lr`` over ``total`` steps (Sec. 4.1)."""
    total = cfg.steps if total is None else total
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


class StepBudget:
    """How many steps fit before a wall-clock deadline, re-estimated as training runs.

    The first ``skip`` steps (CUDA start-up, allocator warm-up) are not timed. Until the
    speed is known the cap is the planned total; after that the total shrinks to what the
    measured speed allows, so the cosine schedule still reaches its end on time.
    """

    def __init__(self, cap: int, deadline: float | None, start_step: int, skip: int = 5) -> None:
        self.cap = cap
        self.deadline = deadline
        self.total = cap
        self._skip_until = start_step + skip
        self._t_ref: float | None = None
        self._step_ref = 0

    def update(self, step: int, now: float) -> int:
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


def sample_mim_mask(
    b: int, h: int, w: int, stages: int, quincunx_prob: float, gen: torch.Generator
) -> torch.Tensor:
    """(B, h, w) bool, True = hidden. Mix of U(0,1)-ratio random masks and quincunx stages."""
    grid = torch.from_numpy(quincunx_stages(h, w, stages))
    masks = []
    for _ in range(b):
        if stages > 1 and float(torch.rand(1, generator=gen)) < quincunx_prob:
            s = int(torch.randint(2, stages + 1, (1,), generator=gen))
            m = grid >= s
        else:
            ratio = float(torch.rand(1, generator=gen))
            m = torch.rand(h, w, generator=gen) < ratio
        if not m.any():
            m = m.clone()
            m.view(-1)[int(torch.randint(0, h * w, (1,), generator=gen))] = True
        masks.append(m)
    return torch.stack(masks)


def mim_loss(net: PQMIM, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (nats) of the hidden tokens, averaged over tokens and sub-indices."""
    logits = net.mim(tokens, mask.to(tokens.device))  # (B, h, w, M, V)
    target = tokens.permute(0, 2, 3, 1)  # (B, h, w, M)
    sel = mask.to(tokens.device)
    return F.cross_entropy(logits[sel].reshape(-1, logits.shape[-1]), target[sel].reshape(-1))


def _optimizer(net: PQMIM, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        # Norms, gains, biases, embeddings and codebooks are not weight-decayed.
        (no_decay if p.ndim < 2 or "codebooks" in name or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, cfg.beta2))


@torch.no_grad()
def encode_dataset(net: PQMIM, images: list[np.ndarray],
                   device: torch.device) -> list[torch.Tensor]:
    """Tokens (M, h, w) of every whole training image and of its mirror image."""
    net.eval()
    out = []
    for arr in tqdm(images, desc="tokenising training set", leave=False):
        x = torch.from_numpy(arr).permute(2, 0, 1)[None].float().div(255).to(device)
        for img in (x, x.flip(3)):
            out.append(net.tokens(pad_to_multiple(img, net.cfg.downsample))[0].cpu())
    return out


def token_marginals(tokens: list[torch.Tensor], cfg: ModelConfig) -> torch.Tensor:
    """(M, V) int64 histogram of each sub-codebook: the stage-1 model (Sec. 3.2)."""
    counts = torch.zeros(cfg.num_subvectors, cfg.codebook_size, dtype=torch.int64)
    for t in tokens:
        for m in range(cfg.num_subvectors):
            counts[m] += torch.bincount(t[m].reshape(-1), minlength=cfg.codebook_size)
    return counts


def _token_crop_batch(tokens: list[torch.Tensor], size: int, n: int, gen: torch.Generator):
    out = []
    for _ in range(n):
        t = tokens[int(torch.randint(0, len(tokens), (1,), generator=gen))]
        _, h, w = t.shape
        sh, sw = min(size, h), min(size, w)
        y = int(torch.randint(0, h - sh + 1, (1,), generator=gen))
        x = int(torch.randint(0, w - sw + 1, (1,), generator=gen))
        out.append(t[:, y : y + sh, x : x + sw])
    hmin = min(o.shape[1] for o in out)
    wmin = min(o.shape[2] for o in out)
    return torch.stack([o[:, :hmin, :wmin] for o in out])


def load_training_images(data_dir: Path) -> list[np.ndarray]:
    """Every image under ``data_dir`` as uint8 RGB; Kodak (the evaluation set) is refused."""
    files = list_images(data_dir)
    if any("kodak" in str(f).lower() for f in files):
        raise InputError("refusing to train on Kodak: it is the evaluation set")
    return [load_rgb(f) for f in tqdm(files, desc="loading images", leave=False)]


class Trainer:
    """Owns the training state; ``run`` is resumable from ``out_dir/last.pt``."""

    def __init__(self, run: RunConfig, data_dir: Path, out_dir: Path, device: torch.device):
        self.run_cfg = run
        self.cfg = run.train
        self.device = device
        self.out_dir = out_dir
        self.images = load_training_images(data_dir)
        self.sampler = CropSampler(self.images, self.cfg.crop, self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.net = PQMIM(run.model).to(device)
        self.opt = _optimizer(self.net, self.cfg)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        self.step = 0
        self.mim_steps_done = 0
        self.log_path = out_dir / "log.csv"

    def _state_path(self) -> Path:
        return self.out_dir / "last.pt"

    def save_state(self) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        torch.save({"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                    "model": dataclasses.asdict(self.run_cfg.model),
                    "sampler_rng": self.sampler.gen.get_state(), "mask_rng": self.gen.get_state()},
                   tmp)
        tmp.replace(self._state_path())  # atomic: a kill mid-save never loses the checkpoint

    def try_resume(self) -> bool:
        p = self._state_path()
        if not p.is_file():
            return False
        st = torch.load(p, map_location=self.device, weights_only=True)
        if st["model"] != dataclasses.asdict(self.run_cfg.model):
            raise InputError(f"{p} was trained with a different model config; use a new --out")
        self.net.load_state_dict(st["net"])
        self.opt.load_state_dict(st["opt"])
        self.step = int(st["step"])
        self.sampler.gen.set_state(st["sampler_rng"].cpu())  # map_location moved it
        self.gen.set_state(st["mask_rng"].cpu())
        return True

    def _train_step(self, total: int) -> dict[str, float]:
        cfg, net = self.cfg, self.net
        for g in self.opt.param_groups:
            g["lr"] = lr_at(self.step, cfg, total)
        x = self.sampler.batch(cfg.batch_size).to(self.device)
        out = net(x, cfg.commitment)
        mse = F.mse_loss(out.recon, x)
        tokens = out.indices.detach()  # stop-gradient into encoder/quantizer (Sec. 3.3)
        b, _, h, w = tokens.shape
        mask = sample_mim_mask(b, h, w, net.cfg.stages, cfg.quincunx_mask_prob, self.gen)
        ce = mim_loss(net, tokens, mask)
        loss = mse + cfg.pq_weight * out.pq_loss + cfg.mim_weight * ce
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        self.opt.step()
        restarted = 0
        if cfg.dead_code_every and (self.step + 1) % cfg.dead_code_every == 0:
            restarted = net.quantizer.restart_dead_codes(out.latent.detach())
        psnr = -10 * math.log10(max(mse.item(), 1e-10))
        return {"psnr": psnr, "pq": out.pq_loss.item(), "mim_bits": ce.item() / math.log(2),
                "restarted": restarted}

    def _log(self, row: dict[str, float]) -> None:
        new = not self.log_path.exists()
        with self.log_path.open("a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=LOG_FIELDS, restval="")
            if new:
                wr.writeheader()
            wr.writerow({"step": self.step, "lr": self.opt.param_groups[0]["lr"], **row})

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.net.train()
        recent: list[dict[str, float]] = []
        joint_end = t0 + cfg.time_budget * (1 - cfg.mim_time_share) if cfg.time_budget else None
        budget = StepBudget(cfg.steps, joint_end, self.step)
        bar = tqdm(total=cfg.steps, initial=self.step, desc="joint PQ-VAE+MIM", unit="step")
        while self.step < budget.total:
            stats = self._train_step(budget.total)
            self.step += 1
            recent = (recent + [stats])[-50:]
            if budget.update(self.step, time.perf_counter()) != bar.total:
                bar.total = budget.total
            bar.update(1)
            if self.step % 10 == 0:
                avg = {k: sum(r[k] for r in recent) / len(recent) for k in recent[0]}
                bar.set_postfix(psnr=f"{avg['psnr']:.2f}", mim_bits=f"{avg['mim_bits']:.2f}")
                self._log({"phase": "joint", **avg})
            if self.step % cfg.checkpoint_every == 0 or self.step == budget.total:
                self.save_state()
        bar.close()
        tokens = encode_dataset(self.net, self.images, self.device)
        deadline = t0 + cfg.time_budget if cfg.time_budget else None
        mim_bits = self._mim_phase(tokens, recent[-1]["mim_bits"] if recent else float("nan"),
                                   deadline)
        marginals = token_marginals(tokens, self.net.cfg)
        final_psnr = sum(r["psnr"] for r in recent) / max(1, len(recent))
        meta = {"train_steps": self.step, "mim_extra_steps": self.mim_steps_done,
                "train_images": len(self.images), "final_train_psnr": round(final_psnr, 3),
                "final_mim_bits": round(mim_bits, 4)}
        path = self.out_dir / "model.pt"
        model_id = save_model(path, self.net, marginals, meta, self.cfg.weight_storage)
        return TrainResult(path, model_id.hex(), self.step, final_psnr, mim_bits,
                           time.perf_counter() - t0)

    def _mim_phase(self, tokens: list[torch.Tensor], last_bits: float,
                   deadline: float | None) -> float:
        cfg = self.cfg
        self.mim_steps_done = 0
        if cfg.mim_extra_steps <= 0:
            return last_bits
        net = self.net
        net.train()
        params = list(net.mim.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr * 0.5, betas=(0.9, cfg.beta2),
                                weight_decay=cfg.weight_decay)
        bits: list[float] = []
        budget = StepBudget(cfg.mim_extra_steps, deadline, 0)
        bar = tqdm(total=cfg.mim_extra_steps, desc="MIM on frozen tokens", unit="step")
        i = 0
        while i < budget.total:
            lr = cfg.min_lr + 0.5 * (cfg.lr * 0.5 - cfg.min_lr) * (
                1 + math.cos(math.pi * i / budget.total))
            for g in opt.param_groups:
                g["lr"] = lr
            tok = _token_crop_batch(tokens, 24, cfg.mim_extra_batch, self.gen).to(self.device)
            b, _, h, w = tok.shape
            mask = sample_mim_mask(b, h, w, net.cfg.stages, cfg.quincunx_mask_prob, self.gen)
            ce = mim_loss(net, tok, mask)
            opt.zero_grad(set_to_none=True)
            ce.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            bits = (bits + [ce.item() / math.log(2)])[-50:]
            i += 1
            if budget.update(i, time.perf_counter()) != bar.total:
                bar.total = budget.total
            bar.update(1)
            if i % 10 == 0:
                self._log({"phase": "mim", "mim_bits": sum(bits) / len(bits)})
                bar.set_postfix(mim_bits=f"{sum(bits) / len(bits):.3f}")
        bar.close()
        self.mim_steps_done = i
        net.eval()
        return sum(bits) / len(bits) if bits else last_bits
