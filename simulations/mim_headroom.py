"""Where the MIM's bits go, and what cheap changes to it would buy.

The PQ-MIM paper (Sec. 4.2, Table 2) reports that quincunx MIM coding saves 27 % of the
bits of marginal coding. This script measures, per rate point, on evaluation images:

``stages``
    bits per sub-index of each quincunx stage with the codec's own integer CDFs, under the
    MIM and under the stage-1 marginals: the saving stage by stage.
``flips``
    test-time augmentation: the MIM's probabilities averaged over the 4 flips of the token
    grid and its mask (4x the MIM work), against the plain MIM (both as ideal code lengths).
``subcond``
    heads that also see the same token's earlier sub-indices: logits of q^m from
    ``h + sum_{j<m} E_mj[q^j]``, starting from the shipped heads (E = 0) and trained on
    frozen trunk features of *training* images; a control retrains the heads alone, so the
    gain from the conditioning is separated from the gain from more head training.
``nstages``
    the whole-image saving with S = 5, 6, 7 ... quincunx stages (the paper's Fig. 9 asks the
    same): a smaller stage 1 for the marginals and more context for the rest. The shipped
    MIM was trained on S = 5 stage masks and U(0, 1) random ones, so it can read the others.
``rdoq``
    rate-distortion optimised tokens at the encoder: each sub-vector takes the entry that
    minimises lookup-space distance + lambda * bits (marginal bits for stage 1, MIM bits
    given the earlier stages' choices after), for each lambda. Reports bpp, the saving over
    marginal coding of the chosen tokens, and PSNR. (The decoder would need no change.)

Evaluation images default to the photo bundled with the package (``--images DIR`` for
Kodak). ``subcond`` trains on other photos, ``--train-images DIR`` (e.g. BSDS500); without
it the default probes leave ``subcond`` out.

    python simulations/mim_headroom.py                        # bundled photo, low
    python simulations/mim_headroom.py --images DIR --train-images TRAIN   # every probe
    python simulations/mim_headroom.py --images DIR --rates low high --probes stages flips
    python simulations/mim_headroom.py --images DIR --probes rdoq --lambdas 0 0.005 0.01 --limit 8
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from resilient_tx.app.derive_rate import TRAINING_HINT, training_dir  # noqa: E402
from resilient_tx.codec import entropy  # noqa: E402
from resilient_tx.codec.image_codec import Codec  # noqa: E402
from resilient_tx.codec.partition import quincunx_stages  # noqa: E402
from resilient_tx.errors import InputError  # noqa: E402
from resilient_tx.eval.metrics import psnr  # noqa: E402
from resilient_tx.images import load_rgb, to_tensor, to_uint8  # noqa: E402
from resilient_tx.model import pad_to_multiple  # noqa: E402
from resilient_tx.runtime import set_threads  # noqa: E402
from resilient_tx.zoo.registry import get_model  # noqa: E402
from simulations.sim_common import SAMPLES, image_files, plain, script_main  # noqa: E402

PROG = "mim_headroom.py"
PROBES = ("stages", "flips", "subcond", "nstages", "rdoq")
LN2 = math.log(2.0)


def _stage_masks(codec: Codec, h: int, w: int):
    """(stage, positions, hidden mask) for stages 2.. under the full context chain."""
    grid = codec.stage_map(h, w)
    for s, pos in enumerate(codec.stages(h, w), start=1):
        if s > 1:
            yield s, torch.from_numpy(pos), grid >= s


def _marginal_bits(codec: Codec) -> torch.Tensor:
    """(M, V) float64 ideal bits of each index under its sub-codebook's marginal."""
    counts = codec.model.marginals.double() + 1.0
    return -(counts / counts.sum(-1, keepdim=True)).log2()


def _targets(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], -1)[:, pos].T  # (n, M)


# ----------------------------------------------------------------------------- stages
def probe_stages(codec: Codec, images: list[np.ndarray]) -> dict:
    """Bits per sub-index by stage, MIM vs marginal, with the coder's own integer CDFs."""
    m = codec.cfg.num_subvectors
    mim_bits: dict[int, float] = {}
    marg_bits: dict[int, float] = {}
    count: dict[int, int] = {}
    for image in images:
        tokens = codec.image_to_tokens(image)
        _, h, w = tokens.shape
        grid = codec.stage_map(h, w)
        for s, pos in enumerate(codec.stages(h, w), start=1):
            sym = _targets(tokens, torch.from_numpy(pos)).contiguous()  # (n, M), coding order
            cdf = codec.stage_cdfs(tokens, s, pos, grid >= s)
            marg = codec.marginal_cdf.unsqueeze(0).expand(len(pos), -1, -1)
            mim_bits[s] = mim_bits.get(s, 0.0) + float(entropy.code_lengths(cdf, sym).sum())
            marg_bits[s] = marg_bits.get(s, 0.0) + float(entropy.code_lengths(marg, sym).sum())
            count[s] = count.get(s, 0) + len(pos) * m
    rows = [{"stage": s, "sub_indices": count[s], "mim_bits": mim_bits[s] / count[s],
             "marginal_bits": marg_bits[s] / count[s],
             "saving": 1 - mim_bits[s] / marg_bits[s]} for s in sorted(count)]
    total = sum(mim_bits.values()), sum(marg_bits.values())
    return {"rows": rows, "saving_all_stages": 1 - total[0] / total[1]}


# ----------------------------------------------------------------------------- flips
def _flipped_log_probs(mim: nn.Module, tokens: torch.Tensor, hidden: torch.Tensor,
                       dims: list[int]) -> torch.Tensor:
    t = tokens.flip([d + 1 for d in dims]) if dims else tokens
    k = hidden.flip(dims) if dims else hidden
    logits = mim(t[None], k[None])[0]  # (h, w, M, V)
    logits = logits.flip(dims) if dims else logits
    return torch.log_softmax(logits.double(), -1)


@torch.no_grad()
def probe_flips(codec: Codec, images: list[np.ndarray]) -> dict:
    mim = codec.model.net.mim.float().eval()
    plain = ensemble = 0.0
    n = 0
    for image in images:
        tokens = codec.image_to_tokens(image)
        _, h, w = tokens.shape
        for _, pos, hidden in _stage_masks(codec, h, w):
            lps = [_flipped_log_probs(mim, tokens, hidden, d) for d in ([], [1], [0], [0, 1])]
            mix = torch.logsumexp(torch.stack(lps), 0) - math.log(len(lps))
            tgt = _targets(tokens, pos)[..., None]
            plain -= float(lps[0].reshape(h * w, *lps[0].shape[2:])[pos].gather(-1, tgt).sum())
            ensemble -= float(mix.reshape(h * w, *mix.shape[2:])[pos].gather(-1, tgt).sum())
            n += tgt.numel()
    return {"plain_bits": plain / n / LN2, "flip_ensemble_bits": ensemble / n / LN2,
            "sub_indices": n}


# ----------------------------------------------------------------------------- subcond
class ConditionedHeads(nn.Module):
    """Per-sub-quantizer heads that may also see the token's earlier sub-indices."""

    def __init__(self, shipped: nn.ModuleList, codebook_size: int, condition: bool) -> None:
        super().__init__()
        m, dim = len(shipped), cast(nn.Linear, shipped[0]).in_features
        self.heads = nn.ModuleList(nn.Linear(dim, codebook_size) for _ in range(m))
        for head, old in zip(self.heads, shipped, strict=True):
            head.load_state_dict(old.state_dict())
        self.condition = condition
        # E[m][j] embeds q^j for head m (j < m); zero, so training starts at the shipped model.
        embed = [nn.Embedding(codebook_size, dim) for _ in range(m * m)]
        for e in embed:
            nn.init.zeros_(e.weight)
        self.embed = nn.ModuleList(embed)

    def forward(self, feats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        m = len(self.heads)
        out = []
        for i, head in enumerate(self.heads):
            u = feats
            if self.condition:
                for j in range(i):
                    u = u + self.embed[i * m + j](targets[:, j])
            out.append(head(u))
        return torch.stack(out, 1)  # (n, M, V)


@torch.no_grad()
def _features(codec: Codec, images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    mim = codec.model.net.mim.float().eval()
    feats, targets = [], []
    for image in images:
        tokens = codec.image_to_tokens(image)
        _, h, w = tokens.shape
        for _, pos, hidden in _stage_masks(codec, h, w):
            feats.append(mim.features(tokens[None], hidden[None])[0, pos])
            targets.append(_targets(tokens, pos))
    return torch.cat(feats), torch.cat(targets)


def _bits(heads: nn.Module, feats: torch.Tensor, targets: torch.Tensor) -> float:
    with torch.no_grad():
        logits = heads(feats, targets)
        return float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     targets.reshape(-1))) / LN2


def probe_subcond(codec: Codec, images: list[np.ndarray], train: list[np.ndarray],
                  epochs: int, seed: int) -> dict:
    tr_x, tr_y = _features(codec, train)
    ev_x, ev_y = _features(codec, images)
    shipped = cast(nn.ModuleList, codec.model.net.mim.heads)
    out: dict[str, float | int] = {"train_sub_indices": tr_y.numel(),
                                   "eval_sub_indices": ev_y.numel()}
    for name, condition in (("heads_retrained", False), ("sub_index_conditioned", True)):
        torch.manual_seed(seed)
        heads = ConditionedHeads(shipped, codec.cfg.codebook_size, condition)
        out.setdefault("shipped_bits", _bits(heads, ev_x, ev_y))
        opt = torch.optim.Adam(heads.parameters(), lr=1e-3)
        for _ in tqdm(range(epochs), desc=name, leave=False):
            for b in torch.randperm(len(tr_y)).split(1024):
                logits = heads(tr_x[b], tr_y[b])
                loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tr_y[b].reshape(-1))
                opt.zero_grad()
                loss.backward()
                opt.step()
        out[f"{name}_bits"] = _bits(heads, ev_x, ev_y)
    return out


# ----------------------------------------------------------------------------- nstages
@torch.no_grad()
def probe_nstages(codec: Codec, images: list[np.ndarray], counts: Sequence[int]) -> dict:
    """Ideal bits with S quincunx stages: stage 1 by the marginals, the rest by the MIM."""
    mim = codec.model.net.mim.float().eval()
    marginal_bits = _marginal_bits(codec)
    tokens = [codec.image_to_tokens(im) for im in images]
    rows = []
    for n in counts:
        mim_bits = marg_bits = 0.0
        for t in tokens:
            m, h, w = t.shape
            grid = torch.from_numpy(quincunx_stages(h, w, n)).reshape(-1)
            flat = t.reshape(m, -1)
            marg_bits += float(marginal_bits.gather(1, flat).sum())
            first = grid == 1
            mim_bits += float(marginal_bits.gather(1, flat[:, first]).sum())
            for s in range(2, n + 1):
                sel = grid == s
                logits = mim(t[None], (grid >= s).reshape(1, h, w))[0].reshape(h * w, m, -1)
                lp = torch.log_softmax(logits[sel].double(), -1)
                mim_bits -= float(lp.gather(-1, flat[:, sel].T[..., None]).sum()) / LN2
        rows.append({"stages": n, "saving": 1 - mim_bits / marg_bits})
    return {"rows": rows}


# ----------------------------------------------------------------------------- rdoq
@torch.no_grad()
def _rdoq_image(codec: Codec, image: np.ndarray, lam: float,
                marginal_bits: torch.Tensor) -> tuple[float, float, float]:
    """(MIM bits, marginal bits, PSNR) of ``image`` coded with lambda-optimised tokens."""
    net = codec.model.net.float().eval()
    x = pad_to_multiple(to_tensor(image), codec.cfg.downsample)
    look = net.quantizer._lookup(net.encoder(net._to_model_range(x)))[0]  # (M, h, w, k)
    sims = torch.einsum("mhwk,mvk->mhwv", look, net.quantizer.normalized_codebooks())
    m, h, w, v = sims.shape
    dist = (2 - 2 * sims).reshape(m, h * w, v)  # squared distance of unit vectors
    tokens = torch.zeros(m, h * w, dtype=torch.int64)
    grid = codec.stage_map(h, w)
    mim_bits = 0.0
    for s, pos in enumerate(codec.stages(h, w), start=1):
        p = torch.from_numpy(pos)
        if s == 1:
            bits = marginal_bits[:, None, :].expand(m, len(pos), v)
        else:
            logits = net.mim.logits_at(tokens.reshape(m, h, w)[None], (grid >= s)[None], p)
            bits = -torch.log_softmax(logits.double(), -1).permute(1, 0, 2).float() / LN2
        choice = (dist[:, p] + lam * bits).argmin(-1)  # (M, n)
        tokens[:, p] = choice
        mim_bits += float(bits.gather(-1, choice[..., None]).sum())
    marg = float(marginal_bits.gather(1, tokens).sum())
    recon = to_uint8(net.reconstruct(tokens.reshape(m, h, w)[None])[..., :image.shape[0],
                                                                    :image.shape[1]])
    return mim_bits, marg, psnr(image, recon)


def probe_rdoq(codec: Codec, images: list[np.ndarray], lambdas: Sequence[float]) -> dict:
    marginal_bits = _marginal_bits(codec).float()
    rows = []
    for lam in tqdm(lambdas, desc="rdoq lambdas", leave=False):
        r = np.array([_rdoq_image(codec, im, lam, marginal_bits) for im in images])
        px = sum(im.shape[0] * im.shape[1] for im in images)
        rows.append({"lambda": lam, "bpp": r[:, 0].sum() / px, "marginal_bpp": r[:, 1].sum() / px,
                     "saving": 1 - r[:, 0].sum() / r[:, 1].sum(), "psnr": float(r[:, 2].mean())})
    return {"rows": rows}


# ----------------------------------------------------------------------------- cli
def _load(folder: Path, limit: int, flag: str = "--images") -> list[np.ndarray]:
    return [load_rgb(f) for f in image_files(folder, limit, flag)]


def _print(rate: str, res: dict) -> None:
    if "stages" in res:
        print(f"\n{rate}: bits per sub-index by stage (integer CDFs, as coded)")
        print("stage  MIM    marginal  saving")
        for r in res["stages"]["rows"]:
            print(f"{r['stage']:>5}  {r['mim_bits']:.3f}  {r['marginal_bits']:.3f}    "
                  f"{100 * r['saving']:5.1f} %")
        print(f"all stages: saving {100 * res['stages']['saving_all_stages']:.1f} %")
    if "flips" in res:
        f = res["flips"]
        print(f"{rate} flips: plain {f['plain_bits']:.4f} -> 4-flip ensemble "
              f"{f['flip_ensemble_bits']:.4f} bits per sub-index (stages 2+)")
    if "subcond" in res:
        c = res["subcond"]
        print(f"{rate} subcond: shipped {c['shipped_bits']:.4f}, heads retrained "
              f"{c['heads_retrained_bits']:.4f}, sub-index conditioned "
              f"{c['sub_index_conditioned_bits']:.4f} bits per sub-index (stages 2+)")
    if "nstages" in res:
        print(f"{rate} nstages: " + ", ".join(
            f"S={r['stages']}: {100 * r['saving']:.1f} %" for r in res["nstages"]["rows"]))
    if "rdoq" in res:
        print(f"{rate} rdoq: lambda  bpp     marginal  saving  PSNR")
        for r in res["rdoq"]["rows"]:
            print(f"      {r['lambda']:7.4f}  {r['bpp']:.4f}  {r['marginal_bpp']:.4f}  "
                  f"{100 * r['saving']:5.1f} %  {r['psnr']:.2f}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=plain(__doc__),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", metavar="DIR", type=Path, default=SAMPLES,
                   help="evaluation images (default: the bundled sample photo)")
    p.add_argument("--limit", type=int, default=0, help="first N evaluation images (0 = all)")
    p.add_argument("--rates", nargs="+", default=["low"], help="shipped rate points")
    p.add_argument("--probes", nargs="+", choices=PROBES,
                   help="probes to run (default: all; subcond only with --train-images)")
    p.add_argument("--train-images", metavar="DIR", type=Path,
                   help="training images for the subcond heads, never Kodak (e.g. BSDS500)")
    p.add_argument("--train-limit", type=int, default=200, help="first N training images")
    p.add_argument("--epochs", type=int, default=4, help="subcond training epochs")
    p.add_argument("--stage-counts", nargs="+", type=int, default=[5, 6, 7, 8],
                   help="nstages: quincunx stage counts to try")
    p.add_argument("--lambdas", nargs="+", type=float, default=[0, 0.002, 0.005, 0.01, 0.02])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--out", type=Path, default=ROOT / "out" / "mim_headroom")
    return p


def _probes(args: argparse.Namespace) -> list[str]:
    """The probes to run: those asked for, else all (subcond only with training images)."""
    if args.probes is None:
        if args.train_images is None:
            print(f"{PROG}: subcond left out: it needs --train-images DIR", file=sys.stderr)
        return [p for p in PROBES if p != "subcond" or args.train_images is not None]
    if "subcond" in args.probes and args.train_images is None:
        raise InputError("the subcond probe trains on photos that are not the evaluation set: "
                         + TRAINING_HINT.format(flag="--train-images"))
    return list(args.probes)


def _train(args: argparse.Namespace) -> list[np.ndarray]:
    """The subcond probe's training images (none when it does not run)."""
    if "subcond" not in args.probes:
        return []
    if "kodak" in str(args.train_images).lower():
        raise InputError("refusing to train the subcond heads on Kodak: it is the evaluation set")
    folder = training_dir(args.train_images, "--train-images")
    return _load(folder, args.train_limit, "--train-images")


def run(args: argparse.Namespace) -> dict:
    set_threads(args.threads)
    if args.limit < 0 or args.train_limit < 0 or args.epochs < 0:
        raise InputError("--limit, --train-limit and --epochs must be >= 0")
    if min(args.stage_counts) < 2:
        raise InputError("--stage-counts must all be >= 2")
    args.probes = _probes(args)
    train = _train(args)
    images = _load(args.images, args.limit)
    results: dict[str, dict] = {}
    for rate in args.rates:
        codec = Codec(get_model(rate))
        res: dict = {"model_id": codec.model.model_id_hex, "images": len(images)}
        if "stages" in args.probes:
            res["stages"] = probe_stages(codec, images)
        if "flips" in args.probes:
            res["flips"] = probe_flips(codec, images)
        if "subcond" in args.probes:
            res["subcond"] = probe_subcond(codec, images, train, args.epochs, args.seed)
        if "nstages" in args.probes:
            res["nstages"] = probe_nstages(codec, images, args.stage_counts)
        if "rdoq" in args.probes:
            res["rdoq"] = probe_rdoq(codec, images, args.lambdas)
        _print(rate, res)
        results[rate] = res
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "headroom.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out / 'headroom.json'}")
    return results


def main(argv: Sequence[str] | None = None) -> int:
    return script_main(PROG, build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
