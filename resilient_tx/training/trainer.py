"""Joint training of the PQ-VAE and the MIM entropy model (PQ-MIM paper, Sec. 3.3, 4.1).

The MIM sees the quantizer's indices *detached*: no gradient flows from the entropy model
into the encoder or the codebooks, exactly as in the paper, so the two could equally be
trained in sequence. Its masks mix the paper's U(0, 1) random masking with quincunx stage
masks (what it is actually asked at coding time). An optional MIM-only phase then trains the
entropy model further on frozen tokens of whole training images, which is cheap because the
autoencoder is no longer run backwards. Both phases run in the shared loop of
:mod:`resilient_tx.training.loop` (schedule, time budget, log, checkpoints).

How fast a step runs is set by an :class:`~resilient_tx.training.efficiency.Efficiency`
(bfloat16 autocast, channels-last, on-device data, ``torch.compile``, fused AdamW; all off
on the CPU by default). Under ``torchrun`` the trainer runs data-parallel
(:mod:`resilient_tx.training.distributed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from resilient_tx.codec.partition import quincunx_stages
from resilient_tx.config import ModelConfig, RunConfig, TrainConfig
from resilient_tx.errors import InputError
from resilient_tx.images import list_images, load_rgb
from resilient_tx.model import PQMIM, pad_to_multiple
from resilient_tx.training import distributed
from resilient_tx.training.crops import (
    CropSampler,
    DeviceCropSampler,
    DeviceTokenCrops,
    token_crops,
)
from resilient_tx.training.distributed import SINGLE, DistInfo
from resilient_tx.training.efficiency import Efficiency, GuardedCompile
from resilient_tx.training.loop import (
    LN2,
    LoopPlan,
    LoopResult,
    Schedule,
    Stats,
    StepFn,
    StepStats,
    TrainLoop,
    descend,
)
from resilient_tx.zoo.checkpoint import (
    LoadedModel,
    compute_model_id,
    encode_state,
    save_model,
)

#: Columns of ``OUT/log.csv``, shared by the joint phase and the MIM-only phase after it.
LOG_FIELDS = ("phase", "step", "lr", "psnr", "pq", "mim_bits", "restarted")
#: Side, in tokens, of the crops the MIM-only phase trains on.
MIM_PHASE_CROP = 24

#: A token model's forward: tokens (B, M, h, w), mask (B, h, w) -> logits (B, h, w, M, V).
MimFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


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


@functools.lru_cache(maxsize=16)
def _stage_grid(h: int, w: int, stages: int, device: torch.device) -> torch.Tensor:
    """The quincunx stage of every token, on ``device``: made once per shape, since a copy
    to a GPU would wait for every queued step."""
    return torch.from_numpy(quincunx_stages(h, w, stages)).to(device)


def mim_masks(b: int, h: int, w: int, stages: int, quincunx_prob: float,
              gen: torch.Generator) -> torch.Tensor:
    """:func:`sample_mim_mask`'s distribution drawn in a few batched ops on ``gen``'s device
    (another random stream, no host round trip)."""
    dev = gen.device
    grid = _stage_grid(h, w, stages, dev)
    u = torch.rand(b, 3, generator=gen, device=dev)
    span = max(stages - 1, 1)
    stage = 2 + (u[:, 1] * span).long().clamp(max=span - 1)  # uniform on 2..stages
    quincunx = (u[:, 0] < quincunx_prob) & (stages > 1)
    random = torch.rand(b, h, w, generator=gen, device=dev) < u[:, 2, None, None]
    m = torch.where(quincunx[:, None, None], grid[None] >= stage[:, None, None], random)
    empty = ~m.flatten(1).any(1)  # never an empty target set: hide one random token
    pos = torch.randint(0, h * w, (b,), generator=gen, device=dev)
    flat = m.reshape(b, h * w)
    flat[torch.arange(b, device=dev), pos] |= empty
    return flat.reshape(b, h, w)


def mim_loss(mim: MimFn, tokens: torch.Tensor, mask: torch.Tensor,
             dense: bool = False) -> torch.Tensor:
    """Cross-entropy (nats) of the hidden tokens, averaged over tokens and sub-indices.

    ``dense`` computes it at every position and averages under the mask: the same value
    without the data-dependent shapes (and host sync) of selecting the hidden positions.
    """
    logits = mim(tokens, mask.to(tokens.device))  # (B, h, w, M, V)
    target = tokens.permute(0, 2, 3, 1)  # (B, h, w, M)
    sel = mask.to(tokens.device)
    if not dense:
        return F.cross_entropy(logits[sel].reshape(-1, logits.shape[-1]),
                               target[sel].reshape(-1))
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1),
                         reduction="none").reshape(target.shape)
    weight = sel[..., None].to(ce.dtype)
    return (ce * weight).sum() / (weight.sum() * target.shape[-1])


class JointLoss(nn.Module):
    """The forward pass of one joint step, as one module (what DDP and compile wrap).

    Same maths as ``PQMIM.forward`` plus :func:`mim_loss`. Under bfloat16 autocast the
    quantizer still runs in float32, so the nearest-entry search (and the tokens the MIM
    learns) are those coding produces.
    """

    def __init__(self, net: PQMIM, cfg: TrainConfig, eff: Efficiency,
                 device: torch.device) -> None:
        super().__init__()
        self.net, self.cfg, self.eff, self.device = net, cfg, eff, device

    def _full_precision(self) -> contextlib.AbstractContextManager[object]:
        if self.eff.bf16:
            return Efficiency.full_precision(self.device)
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, mse, pq loss, MIM cross-entropy, float32 latent); all but the loss
        detached."""
        net, cfg, eff = self.net, self.cfg, self.eff
        with eff.autocast(self.device):
            z = net.encoder(net._to_model_range(x))
        with self._full_precision():
            zf = z.float()
            q = net.quantizer(zf, cfg.commitment)
        with eff.autocast(self.device):
            recon = (net.decoder(q.codes) + 1.0) * 0.5
            mse = F.mse_loss(recon.float(), x)
            tokens = q.indices.detach()  # stop-gradient into encoder/quantizer (Sec. 3.3)
            ce = mim_loss(net.mim, tokens, mask, dense=eff.sync_free)
        loss = mse + cfg.pq_weight * q.loss + cfg.mim_weight * ce
        return loss, mse.detach(), q.loss.detach(), ce.detach(), zf.detach()


def _optimizer(net: PQMIM, cfg: TrainConfig, lr: float, eff: Efficiency,
               device: torch.device) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in net.named_parameters():
        # Norms, gains, biases, embeddings and codebooks are not weight-decayed.
        (no_decay if p.ndim < 2 or "codebooks" in name or "embed" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return eff.adamw(groups, lr, (0.9, cfg.beta2), 0.01, device)


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


def save_model_once(path: Path, net: PQMIM, marginals: torch.Tensor,
                    meta: dict[str, object], storage: str, dist: DistInfo) -> bytes:
    """Rank 0 writes the model file; every rank returns its id once it is written."""
    if dist.is_main:
        model_id = save_model(path, net, marginals, meta, storage)
    else:
        model_id = compute_model_id(net.cfg, encode_state(net.state_dict(), storage),
                                    marginals.to(torch.int64))
    distributed.barrier(dist)
    return model_id


def _joint_stats(raw: Stats) -> Stats:
    """A joint step's read-back statistics as logged (PSNR, MIM bits)."""
    return {"psnr": -10 * math.log10(max(raw["mse"], 1e-10)), "pq": raw["pq"],
            "mim_bits": raw["ce"] / LN2, "restarted": raw["restarted"]}


def _mim_stats(raw: Stats) -> Stats:
    return {"mim_bits": raw["ce"] / LN2}


class Trainer:
    """Joint PQ-VAE + MIM training, then the MIM-only phase; resumable from ``last.pt``.

    Only the joint phase is checkpointed: a resumed run continues it (with a fresh time
    budget, a warm restart of its schedule) and then runs the MIM-only phase again on the
    tokens of the autoencoder it ends with.

    ``eff``: the speed options (default: from the ``train:`` section, see
    :meth:`Efficiency.from_train_config`). ``dist``: this process's rank. ``init``: a
    trained model to start from (``run.model`` must be its architecture). ``images``: the
    training images, instead of loading ``data_dir``.
    """

    def __init__(self, run: RunConfig, data_dir: Path | None, out_dir: Path,
                 device: torch.device, *, eff: Efficiency | None = None,
                 dist: DistInfo = SINGLE, init: LoadedModel | None = None,
                 images: list[np.ndarray] | None = None) -> None:
        self.run_cfg, self.cfg, self.device, self.out_dir = run, run.train, device, out_dir
        self.eff = eff or Efficiency.from_train_config(run.train, device)
        self.dist, self.init = dist, init
        _check_setup(run, init)
        if images is None:
            if data_dir is None:
                raise InputError("no training data: give a data folder or images")
            images = load_training_images(data_dir)
        self.images = images
        self.sampler = self._sampler(images)
        torch.manual_seed(self.cfg.seed)
        self.net = self.eff.prepare(PQMIM(run.model)).to(device)
        if init is not None:
            self.net.load_state_dict(init.net.state_dict())
        # MIM masks and token crops; on the device with the device data path.
        self.gen = self._generator(self.cfg.seed + 1)
        self.log_path = out_dir / "log.csv"
        self.lr = dist.scale_lr(self.cfg.lr)
        run_id = {"phase": "joint", "model": dataclasses.asdict(run.model),
                  **({"init": init.model_id_hex} if init else {})}
        self.loop = TrainLoop(self._joint_plan(), self.net,
                              _optimizer(self.net, self.cfg, self.lr, self.eff, device),
                              {"sampler": self.sampler.gen, "mask": self.gen}, run_id, dist)
        self._forward: Callable[..., tuple[torch.Tensor, ...]] | None = None

    def _sampler(self, images: list[np.ndarray]) -> CropSampler | DeviceCropSampler:
        seed = distributed.rank_seed(self.cfg.seed, self.dist)
        if self.eff.device_data:
            return DeviceCropSampler(images, self.cfg.crop, seed, self.device,
                                     self.eff.memory_format)
        return CropSampler(images, self.cfg.crop, seed)

    def _generator(self, seed: int) -> torch.Generator:
        dev = self.device if self.eff.device_data else torch.device("cpu")
        return torch.Generator(device=dev).manual_seed(distributed.rank_seed(seed, self.dist))

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
                        Schedule(self.lr, cfg.min_lr, cfg.warmup_steps), self.log_path,
                        LOG_FIELDS, phase="joint", checkpoint_path=self.state_path,
                        checkpoint_every=cfg.checkpoint_every, show=("psnr", "mim_bits"),
                        derive=_joint_stats)

    def _masks(self, b: int, h: int, w: int) -> torch.Tensor:
        cfg, stages = self.cfg, self.net.cfg.stages
        if self.eff.sync_free:
            return mim_masks(b, h, w, stages, cfg.quincunx_mask_prob, self.gen)
        return sample_mim_mask(b, h, w, stages, cfg.quincunx_mask_prob, self.gen)

    def _build_forward(self) -> Callable[..., tuple[torch.Tensor, ...]]:
        """The joint forward: under DDP with several ranks, compiled if asked."""
        module = distributed.wrap(JointLoss(self.net, self.cfg, self.eff, self.device),
                                  self.dist, self.device)
        if not self.eff.compile:
            return module
        guarded = GuardedCompile(module, self.eff.compile_backend)
        guarded.warm_up(self._trial_step)
        return guarded

    def _trial_step(self, fwd: Callable[..., tuple[torch.Tensor, ...]]) -> None:
        """A forward and backward on a blank batch (compiles both); leaves no trace."""
        side = self.cfg.crop // self.net.cfg.downsample
        b = self.cfg.batch_size
        x = torch.zeros(b, 3, self.cfg.crop, self.cfg.crop, device=self.device)
        x = x.contiguous(memory_format=self.eff.memory_format)
        mask = torch.ones(b, side, side, dtype=torch.bool, device=self.gen.device)
        usage = self.net.quantizer.usage.clone()
        fwd(x, mask)[0].backward()
        self.loop.opt.zero_grad(set_to_none=True)
        self.net.quantizer.usage.copy_(usage)

    def train_step(self, step: int) -> StepStats:
        """One joint step (the loop's step function); statistics stay on the device."""
        cfg, net = self.cfg, self.net
        if self._forward is None:
            self._forward = self._build_forward()
        x = self.sampler.batch(cfg.batch_size).to(self.device)
        x = x.contiguous(memory_format=self.eff.memory_format)
        side = cfg.crop // net.cfg.downsample
        mask = self._masks(x.shape[0], side, side)
        loss, mse, pq, ce, latent = self._forward(x, mask)
        descend(self.loop.opt, loss, net.parameters())
        restarted = 0
        if cfg.dead_code_every and (step + 1) % cfg.dead_code_every == 0:
            restarted = self._restart_dead_codes(latent)
        return {"mse": mse, "pq": pq, "ce": ce, "restarted": float(restarted)}

    def _restart_dead_codes(self, latent: torch.Tensor) -> int:
        """Dead-code restart on the usage of every rank; rank 0's new entries win."""
        q = self.net.quantizer
        distributed.sum_(q.usage, self.dist)
        restarted = q.restart_dead_codes(latent)
        distributed.broadcast_(q.codebooks.data, self.dist)
        return restarted

    def run(self, time_budget: float | None = None) -> TrainResult:
        """Both phases, then the model file. ``time_budget`` (seconds) replaces the
        config's, e.g. what is left of a fixed slot once the trainer is built."""
        t0 = time.perf_counter()
        cfg = self.cfg
        budget = cfg.time_budget if time_budget is None else time_budget
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)

        def deadline(share: float) -> float | None:
            return t0 + budget * share if budget else None

        joint = self.loop.run(self.train_step, deadline(1 - cfg.mim_time_share))
        self._forward = None  # the joint DDP wrapper's hooks go with it
        tokens = encode_dataset(self.net, self.images, self.device)
        mim = self._mim_phase(tokens, deadline(1.0))
        mim_bits = mim.mean("mim_bits", joint.mean("mim_bits"))
        final_psnr = joint.mean("psnr")
        meta = {"train_steps": joint.steps, "mim_extra_steps": mim.steps,
                "train_images": len(self.images), "final_train_psnr": round(final_psnr, 3),
                "final_mim_bits": round(mim_bits, 4),
                **({"init_from": self.init.model_id_hex} if self.init else {})}
        path = self.out_dir / "model.pt"
        model_id = self._save(path, token_marginals(tokens, self.net.cfg), meta)
        return TrainResult(path, model_id.hex(), joint.steps, final_psnr, mim_bits,
                           time.perf_counter() - t0)

    def _save(self, path: Path, marginals: torch.Tensor, meta: dict[str, object]) -> bytes:
        return save_model_once(path, self.net, marginals, meta, self.cfg.weight_storage,
                               self.dist)

    def mim_phase(self, tokens: list[torch.Tensor]) -> tuple[TrainLoop, StepFn]:
        """The MIM-only phase's loop and step function on the frozen ``tokens``."""
        cfg = self.cfg
        lr = self.dist.scale_lr(cfg.lr * 0.5)
        opt = self.eff.adamw(self.net.mim.parameters(), lr, (0.9, cfg.beta2),
                             cfg.weight_decay, self.device)
        # Half the joint peak and no warmup: the MIM is already trained, this refines it.
        plan = LoopPlan("MIM on frozen tokens", cfg.mim_extra_steps,
                        Schedule(lr, cfg.min_lr), self.log_path, LOG_FIELDS, phase="mim",
                        show=("mim_bits",), derive=_mim_stats)
        loop = TrainLoop(plan, self.net.mim, opt, dist=self.dist)
        mim = distributed.wrap(self.net.mim, self.dist, self.device)
        crops = self._token_batches(tokens)

        def step(_step: int) -> StepStats:
            tok = crops(cfg.mim_extra_batch)
            b, _, h, w = tok.shape
            with self.eff.autocast(self.device):
                ce = mim_loss(mim, tok, self._masks(b, h, w), dense=self.eff.sync_free)
            descend(opt, ce, self.net.mim.parameters())
            return {"ce": ce.detach()}

        return loop, step

    def _token_batches(self, tokens: list[torch.Tensor]) -> Callable[[int], torch.Tensor]:
        if self.eff.device_data:
            seed = distributed.rank_seed(self.cfg.seed + 3, self.dist)
            return DeviceTokenCrops(tokens, MIM_PHASE_CROP, seed, self.device).batch
        return lambda n: token_crops(tokens, MIM_PHASE_CROP, n, self.gen).to(self.device)

    def _mim_phase(self, tokens: list[torch.Tensor], deadline: float | None) -> LoopResult:
        """MIM-only steps on crops of the frozen whole-image tokens (not checkpointed)."""
        if self.cfg.mim_extra_steps <= 0:
            return LoopResult(0, {}, 0.0)
        loop, step = self.mim_phase(tokens)
        return loop.run(step, deadline)


def _check_setup(run: RunConfig, init: LoadedModel | None) -> None:
    f = run.model.downsample
    if run.train.crop % f:
        raise InputError(f"train.crop {run.train.crop} must be a multiple of the "
                         f"downsampling factor {f}")
    if init is not None and init.cfg != run.model:
        raise InputError(f"the model to start from ({init.name}) has another architecture "
                         "than the config's model: section")
