"""Frozen configuration dataclasses and their YAML mapping.

A YAML file mirrors the dataclasses: top-level sections ``model:``, ``train:`` and ``ar:``
whose keys are the field names. Unknown keys are an error, not silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from resilient_tx.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one rate point (PQ-MIM paper, Sec. 3.1 and 4.1)."""

    downsample: int = 16  # f: pixels per token side
    num_subvectors: int = 4  # M: sub-quantizers per token
    codebook_size: int = 256  # V_s: entries per sub-codebook
    latent_dim: int = 256  # d: channels of the latent before splitting
    lookup_dim: int = 8  # low-dimensional l2-normalised lookup space (Sec. 4.1)
    widths: tuple[int, ...] = (64, 128, 192)  # conv widths at 1/4, 1/8, 1/16 resolution
    res_blocks: int = 1  # residual blocks per conv level
    latent_blocks: int = 2  # XCiT blocks at token resolution in encoder and decoder
    latent_heads: int = 4
    mim_dim: int = 192
    mim_depth: int = 6
    mim_heads: int = 6
    mim_mlp_ratio: float = 2.0
    stages: int = 5  # quincunx stages (Sec. 3.2)

    def __post_init__(self) -> None:
        if self.downsample not in (8, 16, 32):
            raise ConfigError(f"downsample must be 8, 16 or 32, got {self.downsample}")
        if self.num_subvectors < 1 or self.latent_dim % self.num_subvectors:
            raise ConfigError("latent_dim must be a positive multiple of num_subvectors")
        if not 2 <= self.codebook_size <= 4096:
            raise ConfigError("codebook_size must be in [2, 4096]")
        if len(self.widths) < self.levels:
            raise ConfigError(
                f"widths needs {self.levels} entries for downsample={self.downsample}")
        if self.stages < 1:
            raise ConfigError("stages must be >= 1")

    @property
    def levels(self) -> int:
        """Conv resolution levels after the 4x pixel-unshuffle stem (1/4, 1/8, ...)."""
        return {8: 2, 16: 3, 32: 4}[self.downsample]

    @property
    def raw_bits_per_token(self) -> float:
        return float(self.num_subvectors * (self.codebook_size - 1).bit_length())


@dataclass(frozen=True)
class TrainConfig:
    """Joint PQ-VAE + MIM training (Sec. 3.3, 4.1)."""

    steps: int = 20000
    batch_size: int = 8
    crop: int = 256
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup_steps: int = 500
    weight_decay: float = 0.02
    beta2: float = 0.95
    commitment: float = 0.25  # beta in the VQ-VAE commitment term
    pq_weight: float = 1.0  # eta in L = L_rec + eta * L_PQ (Eq. 4)
    mim_weight: float = 1.0
    quincunx_mask_prob: float = 0.5  # share of MIM samples masked by a quincunx stage
    dead_code_every: int = 200  # steps between dead-code restarts
    mim_extra_steps: int = 0  # MIM-only steps on frozen tokens after the joint phase
    mim_extra_batch: int = 16
    checkpoint_every: int = 500
    seed: int = 0
    threads: int = 0  # 0 = torch default
    # Wall-clock budget in seconds (0 = none). With a budget, ``steps`` and
    # ``mim_extra_steps`` become caps: the trainer measures its own speed and shrinks both
    # phases (and their cosine schedules) to end on time. ``mim_time_share`` of the budget
    # goes to the MIM-only phase.
    time_budget: float = 0.0
    mim_time_share: float = 0.2
    weight_storage: str = "fp16"  # how model.pt stores weights: fp16, fp32 or int8

    def __post_init__(self) -> None:
        if self.weight_storage not in ("fp16", "fp32", "int8"):
            raise ConfigError(f"train.weight_storage must be fp16, fp32 or int8, got "
                              f"{self.weight_storage!r}")


@dataclass(frozen=True)
class ArConfig:
    """Autoregressive token prior for inpainting (VQGAN extreme-compression paper, Sec. 2.3).

    A causal transformer over a ``window`` x ``window`` crop of the token grid in raster
    order. Training replaces a random share of the input tokens, drawn from
    U(0, ``max_mask_ratio``), by a special "lost" token so the prior learns to predict
    while part of its context is itself missing. ``steps`` = 0 skips it in a full run.
    """

    window: int = 16  # tokens per side of the sliding window (16 -> 256 px at f = 16)
    dim: int = 192
    depth: int = 4
    heads: int = 6
    mlp_ratio: float = 4.0
    max_mask_ratio: float = 0.5
    steps: int = 0
    batch_size: int = 64
    lr: float = 5e-4
    min_lr: float = 2e-5
    warmup_steps: int = 200
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        if not 2 <= self.window <= 64:
            raise ConfigError(f"ar.window must be in [2, 64], got {self.window}")
        if self.dim < 1 or self.depth < 1 or self.heads < 1 or self.dim % self.heads:
            raise ConfigError("ar.dim must be a positive multiple of ar.heads; depth >= 1")
        if not 0.0 <= self.max_mask_ratio < 1.0:
            raise ConfigError(f"ar.max_mask_ratio must be in [0, 1), got {self.max_mask_ratio}")
        if self.steps < 0 or self.batch_size < 1:
            raise ConfigError("ar.steps must be >= 0 and ar.batch_size >= 1")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ar: ArConfig = field(default_factory=ArConfig)


def _coerce(where: str, name: str, default: Any, value: Any) -> Any:
    """Check ``value`` against the type of the field's default; YAML reads ``1e-3`` (no
    dot) as a string, so numeric strings are accepted for float fields."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        value = tuple(value) if isinstance(value, (list, tuple)) else value
        ok = isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value)
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
    return value


def _build(cls: type[T], section: Any, where: str) -> T:
    section = {} if section is None else section
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(section).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(section) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    kwargs = {k: _coerce(where, k, known[k].default, v) for k, v in section.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse a YAML file; a missing file or bad YAML is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from exc


def load_run_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run config (``model:`` / ``train:`` / ``ar:`` sections); missing keys keep
    defaults."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        data = read_yaml(p, "config file") or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        extra = sorted(set(data) - {"model", "train", "ar"})
        if extra:
            raise ConfigError(f"{p}: unknown section(s) {', '.join(extra)}")
    model = _build(ModelConfig, data.get("model"), "model")
    train = _build(TrainConfig, data.get("train"), "train")
    ar = _build(ArConfig, data.get("ar"), "ar")
    if overrides:
        train = _build(TrainConfig, {**dataclasses.asdict(train), **overrides}, "train")
    return RunConfig(model=model, train=train, ar=ar)


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    return _build(ModelConfig, d, "model")


def ar_config_from_dict(d: dict[str, Any]) -> ArConfig:
    return _build(ArConfig, d, "ar")
