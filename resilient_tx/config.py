"""Frozen configuration dataclasses, their defaults, and the one YAML + flags loader.

Every option of the library lives in one frozen dataclass here, with its default: the
codec (:class:`ModelConfig`), training (:class:`TrainConfig`, :class:`ArConfig`) and the
two network roles (:class:`SenderConfig` for ``resilient-tx send``,
:class:`ReceiverConfig` for ``recv``). Other modules take their defaults from these
classes rather than repeating the numbers.

Files. A run config has ``model:``, ``train:`` and ``ar:`` sections; a transport config
has ``send:`` and ``recv:`` sections. Keys are the field names. Values are layered:
defaults, then the file, then flags (or overrides); ``null`` anywhere means "not given".
Unknown sections and keys are errors.

The one coercion rule (:func:`coerce`), applied to every value however it arrives (a
file, a flag, or a direct constructor call, since each class checks itself on
construction):

* ``bool`` takes only ``true`` / ``false``; ``int`` takes only integers (never a bool or
  ``3.0``); ``str`` takes only strings;
* ``float`` takes an int, a float, or a string written as a decimal number (``1e-3``,
  ``.5``, ``-2E+4``), because YAML 1.1 reads an exponent without a dot as a string;
* a ``Literal`` takes one of its values; ``X | None`` takes what ``X`` takes, or None;
  ``tuple[X, ...]`` takes a list or tuple of what ``X`` takes.

Every error is a one-line :class:`~resilient_tx.errors.ConfigError` that names where the
value came from: ``FILE: section.key: ...`` for a file, ``--flag: ...`` for a flag.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from resilient_tx.errors import ConfigError

C = TypeVar("C")

# The receiver's UDP port, and its TCP signalling port for WebRTC.
DEFAULT_PORT = 5004
# 1200 bytes fits one WebRTC data-channel message and one UDP datagram on any path (IPv6
# guarantees a 1280-byte MTU, minus IP/UDP/DTLS headers), so no packet is ever fragmented.
DEFAULT_MAX_PACKET = 1200
DEFAULT_RATE = "low"  # the shipped rate point used when none is named
# Largest image read or decoded by default (a 16-megapixel photo); --max-pixels raises it.
DEFAULT_MAX_PIXELS = 1 << 24

Transport = Literal["udp", "webrtc"]
LossModel = Literal["bernoulli", "gilbert"]
InpainterName = Literal["mim", "ar", "neighbor", "none"]
WeightStorage = Literal["fp16", "fp32", "int8"]


# ----------------------------------------------------------------------------- coercion


class FieldError(ConfigError):
    """One field breaks a rule of its config class.

    Raised on construction; the loader turns ``rule`` into a message that names the
    file and section, or the flag, the value came from.
    """

    def __init__(self, key: str, rule: str) -> None:
        super().__init__(f"{key}: {rule}")
        self.key = key
        self.rule = rule


# A decimal number as YAML 1.2 and JSON write it; ``nan``, ``inf`` and ``1_0`` are not.
_DECIMAL = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", re.ASCII)


def coerce(hint: Any, value: Any, key: str = "value") -> Any:
    """``value`` as a field typed ``hint`` holds it, or :class:`FieldError` (module doc)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return coerce(inner, value, key)
    if origin is Literal:
        return _choice(args, value, key)
    if origin is tuple:
        return _items(args[0], value, key)
    return _scalar(hint, value, key)


def _scalar(kind: Any, value: Any, key: str) -> Any:
    if kind is bool and isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and _is_number(value):
        return float(value)
    if kind not in (bool, int, float, str):
        raise TypeError(f"no coercion rule for fields of type {kind!r}")  # a bug here
    expected = "true or false" if kind is bool else kind.__name__
    raise FieldError(key, f"expected {expected}, got {value!r}")


def _is_number(value: Any) -> bool:
    """What a float field takes: an int or float (never a bool), or a decimal string."""
    if isinstance(value, str):
        return _DECIMAL.fullmatch(value) is not None
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(choices: tuple[Any, ...], value: Any, key: str) -> Any:
    value = _scalar(type(choices[0]), value, key)
    if value not in choices:
        raise FieldError(key, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def _items(kind: Any, value: Any, key: str) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise FieldError(key, f"expected a list of {kind.__name__}, got {value!r}")
    return tuple(coerce(kind, v, key) for v in value)


_FIELD_TYPES: dict[type, dict[str, Any]] = {}


def field_types(cls: type) -> dict[str, Any]:
    """Field name -> resolved type hint of a config dataclass (annotations are strings,
    resolved once per class: every construction coerces by them)."""
    if cls not in _FIELD_TYPES:
        hints = get_type_hints(cls)
        _FIELD_TYPES[cls] = {f.name: hints[f.name] for f in fields(cls)}
    return _FIELD_TYPES[cls]


def choices_of(hint: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` field (or ``Literal | None``) allows; None if any."""
    if get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in get_args(hint) if a is not type(None)]
        return choices_of(inner[0]) if len(inner) == 1 else None
    return get_args(hint) if get_origin(hint) is Literal else None


def _require(key: str, ok: bool, rule: str) -> None:
    if not ok:
        raise FieldError(key, rule)


class _Checked:
    """Base of the config dataclasses: every field is coerced by the one rule on
    construction, then the class's own :meth:`_validate` checks value ranges."""

    def __post_init__(self) -> None:
        for name, hint in field_types(type(self)).items():
            object.__setattr__(self, name, coerce(hint, getattr(self, name), name))
        self._validate()

    def _validate(self) -> None:
        """Range checks that the field types cannot express; raise :class:`FieldError`."""


# ----------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class ModelConfig(_Checked):
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

    def _validate(self) -> None:
        _require("downsample", self.downsample in (8, 16, 32),
                 f"must be 8, 16 or 32, got {self.downsample}")
        _require("num_subvectors", self.num_subvectors >= 1,
                 f"must be >= 1, got {self.num_subvectors}")
        _require("latent_dim", self.latent_dim % self.num_subvectors == 0,
                 f"must be a positive multiple of num_subvectors ({self.num_subvectors}), "
                 f"got {self.latent_dim}")
        _require("codebook_size", 2 <= self.codebook_size <= 4096,
                 f"must be in [2, 4096], got {self.codebook_size}")
        _require("widths", len(self.widths) >= self.levels,
                 f"needs {self.levels} entries for downsample={self.downsample}, "
                 f"got {len(self.widths)}")
        _require("stages", self.stages >= 1, f"must be >= 1, got {self.stages}")

    @property
    def levels(self) -> int:
        """Conv resolution levels after the 4x pixel-unshuffle stem (1/4, 1/8, ...)."""
        return {8: 2, 16: 3, 32: 4}[self.downsample]

    @property
    def raw_bits_per_token(self) -> float:
        return float(self.num_subvectors * (self.codebook_size - 1).bit_length())


@dataclass(frozen=True)
class TrainConfig(_Checked):
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
    weight_storage: WeightStorage = "fp16"  # how model.pt stores its weights
    # Speed options (training only): "auto" = bf16, channels-last, data on the device and
    # fused AdamW with CUDA, all off on the CPU (where they would change nothing useful).
    efficient: Literal["auto", "on", "off"] = "auto"
    compile: bool = False  # torch.compile the joint forward (falls back on failure)


@dataclass(frozen=True)
class ArConfig(_Checked):
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

    def _validate(self) -> None:
        _require("window", 2 <= self.window <= 64, f"must be in [2, 64], got {self.window}")
        _require("heads", self.heads >= 1, f"must be >= 1, got {self.heads}")
        _require("dim", self.dim >= 1 and self.dim % self.heads == 0,
                 f"must be a positive multiple of heads ({self.heads}), got {self.dim}")
        _require("depth", self.depth >= 1, f"must be >= 1, got {self.depth}")
        _require("max_mask_ratio", 0.0 <= self.max_mask_ratio < 1.0,
                 f"must be in [0, 1), got {self.max_mask_ratio}")
        _require("steps", self.steps >= 0, f"must be >= 0, got {self.steps}")
        _require("batch_size", self.batch_size >= 1, f"must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ar: ArConfig = field(default_factory=ArConfig)


@dataclass(frozen=True)
class SenderConfig(_Checked):
    """Every option of ``resilient-tx send``, with its default.

    :class:`~resilient_tx.resilience.endpoint.Sender` reads ``rate``, ``fec``,
    ``context_depth``, ``effort`` and ``max_packet``; the command reads the rest.
    """

    to: str | None = None  # receiver HOST[:PORT]; the command requires it
    transport: Transport = "udp"
    rate: str = DEFAULT_RATE
    # "auto": plan each image for the loss the receiver reports; or a profile name from
    # configs/fec.yaml, or "for_loss:P[,burst:L]" for a loss rate (and burst length) given
    fec: str = "auto"
    # Bytes on the wire per image, or bits per pixel: the rate point is then chosen with
    # the parity (every shipped rate point is tried) for the best expected quality.
    budget: int | None = None
    wire_bpp: float | None = None
    # Seconds between the starts of consecutive images (a camera-like stream); 0 = back to
    # back. Feedback that arrives meanwhile plans the next image.
    interval: float = 0.0
    json: bool = False  # one JSON object per image instead of a line
    # Later stages are coded given the first N stages only, so one lost stage does not
    # take every later one with it (0 = the paper's full chain); the loss sweep found 2
    # the best trade between rate and resilience.
    context_depth: int = 2
    # Gradient steps refining each image's latent before quantization (0 = the plain
    # encoder): slower to encode, decoded by any receiver as usual.
    effort: int = 0
    pace: float | None = None  # Mbit/s; None = as fast as the transport accepts
    sim_loss: float = 0.0  # share of packets the channel simulator drops at the sender
    loss_model: LossModel = "bernoulli"
    burst: float = 4.0  # mean burst length of the gilbert loss model
    seed: int = 0  # seed of the simulated loss
    max_packet: int = DEFAULT_MAX_PACKET
    device: str = "auto"
    threads: int = 0  # 0 = torch's default
    key_file: str | None = None  # shared secret: sign every packet (the receiver's too)

    def _validate(self) -> None:
        _require("context_depth", self.context_depth >= 0,
                 f"must be >= 0, got {self.context_depth}")
        _require("effort", self.effort >= 0, f"must be >= 0, got {self.effort}")
        _require("budget", self.budget is None or self.budget > 0,
                 f"must be a positive number of bytes, got {self.budget}")
        _require("wire_bpp", self.wire_bpp is None or self.wire_bpp > 0,
                 f"must be > 0 bits per pixel, got {self.wire_bpp}")
        _require("budget", self.budget is None or self.wire_bpp is None,
                 "give --budget or --wire-bpp, not both")
        _require("interval", self.interval >= 0, f"must be >= 0 seconds, got {self.interval}")
        _require("threads", self.threads >= 0, f"must be >= 0, got {self.threads}")


@dataclass(frozen=True)
class ReceiverConfig(_Checked):
    """Every option of ``resilient-tx recv``, with its default."""

    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    transport: Transport = "udp"
    out_dir: str = "received"
    count: int = 0  # exit after this many images; 0 = run forever
    # Seconds after an image's last packet before decoding whatever came: long enough to
    # ride out jitter, short enough that a vanished sender's image still comes out.
    deadline: float = 0.5
    device: str = "auto"
    inpainter: InpainterName = "mim"
    ar_window: int | None = None  # with inpainter ar: tokens per side; None = the prior's
    json: bool = False  # one JSON object per image instead of a report line
    threads: int = 0  # 0 = torch's default
    # Shared secret: accept only packets signed with it (the sender's --key-file too).
    key_file: str | None = None
    overwrite: bool = False  # replace an existing OUT_DIR/<id>.png instead of renaming
    # Seconds a signed packet's timestamp may differ from this clock: stops replays of old
    # captures, and needs the two clocks within this of each other.
    replay_window: float = 60.0
    # Bounds on work and memory, so a flood costs what its bytes cost and no more: pixels
    # per image (16 MP), images collected at once (in all and per sender), bytes buffered
    # (per image and in all), images waiting to be decoded (in all and per sender), and
    # how long an image may wait for its decoding before it is dropped as stale.
    max_pixels: int = 1 << 24
    max_open: int = 64
    max_open_per_sender: int = 8
    max_image_bytes: int = 4 << 20
    max_buffered_bytes: int = 64 << 20
    max_queued: int = 32
    max_queued_per_sender: int = 4
    max_queue_age: float = 10.0
    # Write a preview as soon as the first preview_stages stages of an image can be
    # completed, filled by preview_inpainter (fast by default: a preview that took as long
    # as the final picture would be no use), then the final picture.
    progressive: bool = False
    preview_stages: int = 2
    preview_inpainter: InpainterName = "neighbor"
    # Feedback reports to each sender (loss, bursts, stages, receive rate), at most one per
    # feedback_interval seconds while something changed and one at each image's end.
    feedback: bool = True
    feedback_interval: float = 0.1

    def _validate(self) -> None:
        _require("preview_stages", self.preview_stages >= 1,
                 f"must be >= 1, got {self.preview_stages}")
        _require("feedback_interval", self.feedback_interval > 0,
                 f"must be > 0 seconds, got {self.feedback_interval:g}")
        _require("count", self.count >= 0, f"must be >= 0 (0 = run forever), got {self.count}")
        _require("deadline", self.deadline > 0, f"must be > 0 seconds, got {self.deadline:g}")
        _require("threads", self.threads >= 0, f"must be >= 0, got {self.threads}")
        for name in ("max_pixels", "max_open", "max_open_per_sender", "max_image_bytes",
                     "max_buffered_bytes", "max_queued", "max_queued_per_sender"):
            value = getattr(self, name)
            _require(name, value >= 1, f"must be >= 1, got {value}")
        for name in ("replay_window", "max_queue_age"):
            value = getattr(self, name)
            _require(name, value > 0, f"must be > 0 seconds, got {value:g}")


# Which sections a config file of each kind may hold.
RUN_SECTIONS: dict[str, type] = {"model": ModelConfig, "train": TrainConfig, "ar": ArConfig}
TRANSPORT_SECTIONS: dict[str, type] = {"send": SenderConfig, "recv": ReceiverConfig}
_SECTION_OF = {cls: (name, kind) for kind in (RUN_SECTIONS, TRANSPORT_SECTIONS)
               for name, cls in kind.items()}


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class _Layer:
    """Values from one source, and how an error names a key that came from it."""

    values: Mapping[str, Any]
    label: str  # "FILE: section" or "section"
    flags: bool = False  # command-line flags: a key is named as its flag

    def where(self, key: str) -> str:
        if self.flags:
            return "--" + key.replace("_", "-")
        return f"{self.label}.{key}"


def _build(cls: type[C], layers: list[_Layer], default_label: str) -> C:
    """``cls`` from ``layers`` (later ones win; None means not given), checked."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for layer in layers:
        unknown = sorted(map(str, set(layer.values) - known))
        if unknown:
            raise ConfigError(f"{layer.label}: unknown key(s) {', '.join(unknown)}")
        for key, value in layer.values.items():
            if value is not None:
                values[key], origin[key] = value, layer.where(key)
    try:
        return cls(**values)
    except FieldError as exc:
        where = origin.get(exc.key, f"{default_label}.{exc.key}")
        raise ConfigError(f"{where}: {exc.rule}") from None


def read_yaml(path: str | Path, what: str = "file") -> Any:
    """Parse a YAML file; a missing file or bad YAML is a :class:`ConfigError`."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        reason = " ".join(str(exc).split())  # PyYAML's message spans several lines
        raise ConfigError(f"{p}: not valid YAML ({reason})") from exc


def read_sections(path: str | Path | None, allowed: Mapping[str, type]) -> dict[str, Any]:
    """The top-level mapping of a config file (``{}`` for no file), sections checked."""
    if path is None:
        return {}
    data = read_yaml(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    extra = sorted(map(str, set(data) - set(allowed)))
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(extra)}")
    return data


def _section(data: Mapping[str, Any], name: str, label: str) -> _Layer:
    body = data.get(name)
    if body is None:  # absent, or present but empty
        body = {}
    if not isinstance(body, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(body).__name__}")
    return _Layer(body, label)


def _file_label(path: str | Path | None, section: str) -> str:
    return section if path is None else f"{path}: {section}"


def load_config(cls: type[C], path: str | Path | None = None,
                flags: Mapping[str, Any] | None = None) -> C:
    """One config from its section of the file at ``path`` and then ``flags``.

    ``cls`` is any config class (:class:`SenderConfig` reads the ``send:`` section of a
    transport config, :class:`TrainConfig` the ``train:`` section of a run config). Flags
    are field name -> value; None means the flag was not given.
    """
    if cls not in _SECTION_OF:
        raise TypeError(f"{cls!r} is not a config class with a file section")
    name, allowed = _SECTION_OF[cls]
    label = _file_label(path, name)
    layers = [_section(read_sections(path, allowed), name, label)]
    if flags:
        layers.append(_Layer(flags, f"{name} flags", flags=True))
    return _build(cls, layers, label)


def load_run_config(path: str | Path | None,
                    overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """A run config (``model:`` / ``train:`` / ``ar:``); ``overrides`` apply to ``train``."""
    data = read_sections(path, RUN_SECTIONS)
    built: dict[str, Any] = {}
    for name, cls in RUN_SECTIONS.items():
        label = _file_label(path, name)
        layers = [_section(data, name, label)]
        if name == "train" and overrides:
            layers.append(_Layer(overrides, "train"))
        built[name] = _build(cls, layers, label)
    return RunConfig(**built)


def model_config_from_dict(d: Mapping[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from a mapping (e.g. a model file's), by the same rule."""
    return _build(ModelConfig, [_Layer(d, "model")], "model")


def ar_config_from_dict(d: Mapping[str, Any]) -> ArConfig:
    """An :class:`ArConfig` from a mapping (e.g. a prior file's), by the same rule."""
    return _build(ArConfig, [_Layer(d, "ar")], "ar")
