"""The model file formats: codec models (below) and AR inpainting priors (at the end).

Codec model: weights, config, stage-1 marginals and a content-derived model id.

A model file is a ``torch.save`` dict loaded with ``weights_only=True`` (no pickled code):

    format      "resilient-tx-model/1"
    config      ModelConfig as a dict
    state_dict  network weights (stored as float16, run as float32)
    marginals   (M, V) int64 token counts over the training set (stage-1 model, Sec. 3.2)
    meta        free-form training info (strings and numbers)

The model id is the first 8 bytes of a SHA-256 over config, weights and marginals, so two
files with the same id code identically. Every bitstream carries it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resilient_tx.config import ModelConfig, ar_config_from_dict, model_config_from_dict
from resilient_tx.errors import InputError, ModelMismatchError, ModelNotFoundError
from resilient_tx.model import PQMIM
from resilient_tx.model.ar import ArPrior

FORMAT = "resilient-tx-model/1"


@dataclass(frozen=True)
class LoadedModel:
    net: PQMIM
    marginals: torch.Tensor  # (M, V) int64
    model_id: bytes  # 8 bytes
    name: str
    meta: dict[str, Any]

    @property
    def cfg(self) -> ModelConfig:
        return self.net.cfg

    @property
    def model_id_hex(self) -> str:
        return self.model_id.hex()


def compute_model_id(cfg: ModelConfig, state: dict[str, torch.Tensor],
                     marginals: torch.Tensor) -> bytes:
    h = hashlib.sha256()
    h.update(json.dumps(dataclasses.asdict(cfg), sort_keys=True).encode())
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    h.update(marginals.to(torch.int64).cpu().numpy().tobytes())
    return h.digest()[:8]


#: Storage formats for weights. "int8": per-output-row symmetric int8 with a float16 scale
#: for every weight matrix / conv kernel / embedding (quarter of fp32, half of fp16);
#: norms, biases, gains and the PQ codebooks stay float16.
WEIGHT_STORAGE = ("fp16", "fp32", "int8")
_SCALE = "@scale"
_INT8_MIN_NUMEL = 1024


def _quantizable(name: str, v: torch.Tensor) -> bool:
    return (v.is_floating_point() and v.ndim >= 2 and v.numel() >= _INT8_MIN_NUMEL
            and "codebooks" not in name)


def encode_state(state: dict[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """The tensors a file stores for ``state`` (see :data:`WEIGHT_STORAGE`)."""
    if storage not in WEIGHT_STORAGE:
        raise InputError(f"weight storage must be one of {', '.join(WEIGHT_STORAGE)}")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if storage == "int8" and _quantizable(k, v):
            rows = v.float().reshape(v.shape[0], -1)
            scale = (rows.abs().amax(1, keepdim=True) / 127).clamp_min(1e-8).half()
            q = torch.round(rows / scale.float()).clamp(-127, 127).to(torch.int8)
            out[k], out[k + _SCALE] = q.reshape(v.shape), scale
        elif v.is_floating_point():
            out[k] = v.float() if storage == "fp32" else v.half()
        else:
            out[k] = v
    return out


def decode_state(stored: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float32 weights from stored tensors: one float32 multiply per int8 weight, so every
    machine loads bit-identical weights."""
    out = {}
    for k, v in stored.items():
        if k.endswith(_SCALE):
            continue
        if k + _SCALE in stored:
            scale = stored[k + _SCALE].float()
            v = (v.float().reshape(v.shape[0], -1) * scale).reshape(v.shape)
        out[k] = v.float() if v.is_floating_point() else v
    return out


def save_model(path: str | Path, net: PQMIM, marginals: torch.Tensor, meta: dict[str, Any],
               storage: str = "fp16") -> bytes:
    """Write a model file; weights are stored as ``storage`` (fp16 halves the shipped size,
    int8 quarters it).

    Loading turns them back into float32 the same way everywhere, and the model id hashes
    the stored tensors, so the encoder and decoder always run bit-identical weights.
    """
    state = encode_state(net.state_dict(), storage)
    marginals = marginals.to(torch.int64).cpu()
    payload = {
        "format": FORMAT,
        "config": dataclasses.asdict(net.cfg),
        "state_dict": state,
        "marginals": marginals,
        "meta": meta,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return compute_model_id(net.cfg, state, marginals)


def read_payload(path: str | Path, fmt: str, what: str) -> dict[str, Any]:
    """The dict inside a ``torch.save`` file of format ``fmt``, loaded without pickled code.

    A missing file is :class:`ModelNotFoundError`; anything else that is not such a file,
    :class:`InputError` naming ``what`` it should have been.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelNotFoundError(f"{what} not found: {p}")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a zoo of types for bad files
        raise InputError(f"{p}: not a {what} ({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != fmt:
        raise InputError(f"{p}: not a {what} (format {fmt} expected)")
    return payload


def load_model(path: str | Path, name: str | None = None) -> LoadedModel:
    p = Path(path)
    payload = read_payload(p, FORMAT, "resilient-tx model file")
    try:
        cfg = model_config_from_dict(dict(payload["config"]))
        net = PQMIM(cfg)
        net.load_state_dict(decode_state(payload["state_dict"]))
        marginals = payload["marginals"].to(torch.int64)
        if tuple(marginals.shape) != (cfg.num_subvectors, cfg.codebook_size):
            raise ValueError(f"marginals have shape {tuple(marginals.shape)}")
        model_id = compute_model_id(cfg, payload["state_dict"], marginals)
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{p}: damaged or incompatible model file ({exc})") from exc
    net.eval()
    return LoadedModel(net=net, marginals=marginals, model_id=model_id,
                       name=name or p.stem, meta=dict(payload.get("meta", {})))


# ----- autoregressive inpainting priors (VQGAN extreme-compression paper, Sec. 2.3) -------
PRIOR_FORMAT = "resilient-tx-ar-prior/1"


@dataclass(frozen=True)
class LoadedPrior:
    """An AR token prior and the id of the model whose tokens it was trained on."""

    net: ArPrior
    base_model_id: bytes
    meta: dict[str, Any]


def save_prior(path: str | Path, prior: ArPrior, base_model_id: bytes, meta: dict[str, Any],
               storage: str = "fp16") -> None:
    """Write an AR prior file bound to ``base_model_id`` (weights as in :func:`save_model`)."""
    state = encode_state(prior.state_dict(), storage)
    payload = {"format": PRIOR_FORMAT, "config": dataclasses.asdict(prior.cfg),
               "num_subvectors": prior.m, "codebook_size": prior.v,
               "base_model_id": base_model_id.hex(), "state_dict": state, "meta": meta}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)


def load_prior(path: str | Path, base: LoadedModel) -> LoadedPrior:
    """Load an AR prior for ``base``; a prior trained on another model's tokens is refused
    (its indices would mean different codebook entries)."""
    p = Path(path)
    payload = read_payload(p, PRIOR_FORMAT, "resilient-tx AR prior file")
    try:
        base_id = bytes.fromhex(str(payload["base_model_id"]))
        m, v = int(payload["num_subvectors"]), int(payload["codebook_size"])
        net = ArPrior(ar_config_from_dict(dict(payload["config"])), m, v)
        net.load_state_dict(decode_state(payload["state_dict"]))
    except (KeyError, RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise InputError(f"{p}: damaged or incompatible AR prior ({exc})") from exc
    if base_id != base.model_id or (m, v) != (base.cfg.num_subvectors, base.cfg.codebook_size):
        raise ModelMismatchError(
            f"{p} was trained on the tokens of model {base_id.hex()}, not of "
            f"{base.model_id_hex} ({base.name}); retrain it with "
            f"`resilient-tx train --only ar --init {base.name}`")
    net.eval()
    return LoadedPrior(net=net, base_model_id=base_id, meta=dict(payload.get("meta", {})))
