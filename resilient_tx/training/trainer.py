"""Joint training of the PQ-VAE and the MIM entropy model (PQ-MIM paper, Sec. 3.3, 4.1).

The MIM sees the quantizer's indices *detached*: no gradient flows from the entropy model
into the encoder or the codebooks, exactly as in the paper, so the two could equally be
trained in sequence. Its masks mix the paper's U(0, 1) random masking with quincunx stage
masks (what it is actually asked at coding time). An optional MIM-only phase then trains the
entropy model further on frozen tokens of whole training images, which is cheap because the
autoencoder is no longer run backwards. Both phases run in the shared loop of
:mod:`resilient_tx.training.loop` (schedule, time budget, log, checkpoints).
"""

from __future__ import annotations

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
from resilient_tx.training.crops import CropSampler, token_crops
from resilient_tx.training.loop import (
    LN2,
    LoopPlan,
    LoopResult,
    Schedule,
    Stats,
    TrainLoop,
    descend,
)
from resilient_tx.zoo.checkpoint import save_model

#: Columns of ``OUT/log.csv``, shared by the joint phase and the MIM-only phase after it.
LOG_FIELDS = ("phase", "step", "lr", "psnr", "pq", "mim_bits", "restarted")
#: Side, in tokens, of the crops the MIM-only phase trains on.
MIM_PHASE_CROP = 24


@dataclass(frozen=True)
class TrainResult:
    model_path: Path
    model_id: str
    steps: int
    final_psnr: float
    final_mim_bits: float  # MIM cross-entropy in bits per sub-index on the last batches
    seconds: float


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
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
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


def load_training_images(data_dir: Path) -> list[np.ndarray]:
    """Every image under ``data_dir`` as uint8 RGB; Kodak (the evaluation set) is refused."""
    files = list_images(data_dir)
    if any("kodak" in str(f).lower() for f in files):
        raise InputError("refusing to train on Kodak: it is the evaluation set")
    return [load_rgb(f) for f in tqdm(files, desc="loading images", leave=False)]


class Trainer:
    """Joint PQ-VAE + MIM training, then the MIM-only phase; resumable from ``last.pt``.

    Only the joint phase is checkpointed: a resumed run continues it (with a fresh time
    budget, a warm restart of its schedule) and then runs the MIM-only phase again on the
    tokens of the autoencoder it ends with.
    """

    def __init__(self, run: RunConfig, data_dir: Path, out_dir: Path,
                 device: torch.device) -> None:
        self.run_cfg = run
        self.cfg = run.train
        self.device = device
        self.out_dir = out_dir
        self.images = load_training_images(data_dir)
        self.sampler = CropSampler(self.images, self.cfg.crop, self.cfg.seed)
        torch.manual_seed(self.cfg.seed)
        self.net = PQMIM(run.model).to(device)
        self.gen = torch.Generator().manual_seed(self.cfg.seed + 1)  # MIM masks, token crops
        self.log_path = out_dir / "log.csv"
        self.loop = TrainLoop(self._joint_plan(), self.net, _optimizer(self.net, self.cfg),
                              {"sampler": self.sampler.gen, "mask": self.gen},
                              {"phase": "joint", "model": dataclasses.asdict(run.model)})

    @property
    def step(self) -> int:
        """Joint steps done so far (including those before a resume)."""
        return self.loop.step

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last.pt"

    def try_resume(self) -> bool:
        """Continue from ``state_path`` if it exists; :class:`InputError` if it is another
        run's (e.g. another model config)."""
        return self.loop.try_resume()

    def _joint_plan(self) -> LoopPlan:
        cfg = self.cfg
        return LoopPlan("joint PQ-VAE+MIM", cfg.steps,
                        Schedule(cfg.lr, cfg.min_lr, cfg.warmup_steps), self.log_path,
                        LOG_FIELDS, phase="joint", checkpoint_path=self.state_path,
                        checkpoint_every=cfg.checkpoint_every, show=("psnr", "mim_bits"))

    def _train_step(self, step: int) -> Stats:
        cfg, net = self.cfg, self.net
        x = self.sampler.batch(cfg.batch_size).to(self.device)
        out = net(x, cfg.commitment)
        mse = F.mse_loss(out.recon, x)
        tokens = out.indices.detach()  # stop-gradient into encoder/quantizer (Sec. 3.3)
        b, _, h, w = tokens.shape
        mask = sample_mim_mask(b, h, w, net.cfg.stages, cfg.quincunx_mask_prob, self.gen)
        ce = mim_loss(net, tokens, mask)
        descend(self.loop.opt, mse + cfg.pq_weight * out.pq_loss + cfg.mim_weight * ce,
                net.parameters())
        restarted = 0
        if cfg.dead_code_every and (step + 1) % cfg.dead_code_every == 0:
            restarted = net.quantizer.restart_dead_codes(out.latent.detach())
        return {"psnr": -10 * math.log10(max(mse.item(), 1e-10)), "pq": out.pq_loss.item(),
                "mim_bits": ce.item() / LN2, "restarted": float(restarted)}

    def _deadline(self, t0: float, share: float) -> float | None:
        return t0 + self.cfg.time_budget * share if self.cfg.time_budget else None

    def run(self) -> TrainResult:
        t0 = time.perf_counter()
        cfg = self.cfg
        self.out_dir.mkdir(parents=True, exist_ok=True)
        joint = self.loop.run(self._train_step, self._deadline(t0, 1 - cfg.mim_time_share))
        tokens = encode_dataset(self.net, self.images, self.device)
        mim = self._mim_phase(tokens, self._deadline(t0, 1.0))
        mim_bits = mim.mean("mim_bits", joint.mean("mim_bits"))
        final_psnr = joint.mean("psnr")
        meta = {"train_steps": joint.steps, "mim_extra_steps": mim.steps,
                "train_images": len(self.images), "final_train_psnr": round(final_psnr, 3),
                "final_mim_bits": round(mim_bits, 4)}
        path = self.out_dir / "model.pt"
        model_id = save_model(path, self.net, token_marginals(tokens, self.net.cfg), meta,
                              cfg.weight_storage)
        return TrainResult(path, model_id.hex(), joint.steps, final_psnr, mim_bits,
                           time.perf_counter() - t0)

    def _mim_phase(self, tokens: list[torch.Tensor], deadline: float | None) -> LoopResult:
        """MIM-only steps on crops of the frozen whole-image tokens (not checkpointed)."""
        cfg = self.cfg
        if cfg.mim_extra_steps <= 0:
            return LoopResult(0, {}, 0.0)
        opt = torch.optim.AdamW(self.net.mim.parameters(), lr=cfg.lr * 0.5,
                                betas=(0.9, cfg.beta2), weight_decay=cfg.weight_decay)
        # Half the joint peak and no warmup: the MIM is already trained, this refines it.
        plan = LoopPlan("MIM on frozen tokens", cfg.mim_extra_steps,
                        Schedule(cfg.lr * 0.5, cfg.min_lr), self.log_path, LOG_FIELDS,
                        phase="mim", show=("mim_bits",))
        loop = TrainLoop(plan, self.net.mim, opt)
        return loop.run(lambda _step: self._mim_step(tokens, opt), deadline)

    def _mim_step(self, tokens: list[torch.Tensor], opt: torch.optim.Optimizer) -> Stats:
        cfg, net = self.cfg, self.net
        tok = token_crops(tokens, MIM_PHASE_CROP, cfg.mim_extra_batch, self.gen).to(self.device)
        b, _, h, w = tok.shape
        mask = sample_mim_mask(b, h, w, net.cfg.stages, cfg.quincunx_mask_prob, self.gen)
        ce = mim_loss(net, tok, mask)
        descend(opt, ce, net.mim.parameters())
        return {"mim_bits": ce.item() / LN2}
