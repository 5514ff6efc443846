"""Whole-image sender and receiver steps, shared by the commands, the demo and benchmarks.

``Sender.packets`` turns an image into packets, planned from the receiver's feedback
(``Sender.feedback``); ``Receiver.finish`` turns a collected
image into pixels: exact tokens where the context allows, inpainting for the rest.
Models are looked up by the id every packet carries, so one receiver serves every
shipped rate point, and tells the :class:`~.collector.Collector` how many stages each
one has (:meth:`Receiver.stage_count`). Both are sans-IO: a transport moves the bytes.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from resilient_tx.codec.image_codec import Codec
from resilient_tx.codec.inpaint import Inpainter, get_inpainter
from resilient_tx.codec.partition import stage_indices, token_grid
from resilient_tx.config import ModelConfig, SenderConfig
from resilient_tx.errors import InputError, ModelNotFoundError
from resilient_tx.resilience import fec, reassembly
from resilient_tx.resilience.adaptive import AdaptivePlanner, Plan
from resilient_tx.resilience.auth import PacketKey, Signer
from resilient_tx.resilience.collector import DueImage
from resilient_tx.resilience.estimator import LossEstimate
from resilient_tx.resilience.packet import TRAILER_SIZE, Packet
from resilient_tx.resilience.packetizer import PacketizedImage, Packetizer, StagePlan
from resilient_tx.resilience.reassembly import ReceiveReport
from resilient_tx.zoo.checkpoint import LoadedModel
from resilient_tx.zoo.registry import available_rates, find_by_id, get_model


def rate_point_id(name: str) -> int:
    """The u8 rate id in packet headers: position among the shipped rates, else 255."""
    rates = available_rates()
    return rates.index(name) if name in rates else 255


QualityFn = Callable[[np.ndarray, np.ndarray], float]  # (original, decoded) -> e.g. PSNR


class Sender:
    """Encodes and packetizes images, planning each one's FEC (and with a byte budget its
    rate point) from the receiver's feedback.

    Reads ``rate``, ``fec`` (a fixed spec, or ``auto``: :mod:`.adaptive`), ``budget`` /
    ``wire_bpp``, ``context_depth``, ``effort`` and ``max_packet`` of the config. With a
    ``key`` every datagram is signed (payloads shrink by the trailer's bytes so the signed
    packet still fits ``max_packet``) and feedback must be signed too. A byte budget makes
    the sender try every shipped rate point and keep the one whose expected quality,
    ``quality(original, decoded) - db_per_lost x expected share of tokens lost``, is best
    within the budget; ``quality`` (e.g. PSNR) is then required.
    """

    def __init__(self, cfg: SenderConfig, device: torch.device,
                 key: PacketKey | None = None, quality: QualityFn | None = None) -> None:
        self.cfg = cfg
        self.device = device
        self.signer = None if key is None else Signer(key)
        self.planner = AdaptivePlanner(cfg.fec, key)
        if (cfg.budget is not None or cfg.wire_bpp is not None) and quality is None:
            raise InputError("planning for a byte budget needs a quality measure")
        self.quality = quality
        self._packetizers: dict[str, Packetizer] = {}
        self.packetizer = self._packetizer(cfg.rate)
        self.last_plan: Plan | None = None

    def _packetizer(self, rate: str) -> Packetizer:
        if rate not in self._packetizers:
            cfg = self.cfg
            keyed = self.signer is not None
            room = cfg.max_packet - (TRAILER_SIZE if keyed else 0)
            self._packetizers[rate] = Packetizer(
                Codec(get_model(rate), self.device), fec.get_profile("none"),
                rate_point_id(rate), room, context_depth=cfg.context_depth,
                effort=cfg.effort, extra_bytes=TRAILER_SIZE if keyed else 0)
        return self._packetizers[rate]

    def feedback(self, messages: Iterable[bytes]) -> int:
        """Take feedback messages from the receiver; returns how many were valid."""
        return self.planner.feed(messages)

    def budget_for(self, image: np.ndarray) -> int | None:
        """Bytes this image may take on the wire (``budget`` or ``wire_bpp``), if any."""
        h, w = image.shape[:2]
        if self.cfg.budget is not None:
            return self.cfg.budget
        if self.cfg.wire_bpp is not None:
            return int(self.cfg.wire_bpp * w * h / 8)
        return None

    def packets(self, image: np.ndarray, image_id: int,
                name: str | None = None) -> PacketizedImage:
        """The image's packets, planned for what the receiver reported so far; ``name``
        (its file name) travels along for the receiver to name its output after."""
        profile, est = self.planner.profile()
        budget = self.budget_for(image)
        if budget is not None:
            return self._within(image, image_id, name, profile, est, budget)
        pk = self.packetizer
        pk.profile = profile
        out = pk.packetize(image, image_id, name)
        self.last_plan = Plan(self.cfg.rate, profile.name, est)
        return out

    def _within(self, image: np.ndarray, image_id: int, name: str | None,
                profile: fec.FecProfile, est: LossEstimate | None,
                budget: int) -> PacketizedImage:
        """The rate point and plan with the best expected quality within ``budget``."""
        assert self.quality is not None  # checked in __init__
        if profile.distortion is None:
            raise InputError(f"--budget needs --fec auto or for_loss:P, not {self.cfg.fec!r}")
        h, w = image.shape[:2]
        best: tuple[float, str, torch.Tensor, tuple[StagePlan, ...], float] | None = None
        for rate in available_rates():
            pk = self._packetizer(rate)
            pk.profile = profile
            tokens = pk.codec.image_to_tokens(image, pk.effort)
            got = pk.plan_within(tokens, budget - pk.meta_bytes(name))
            if got is None:
                continue
            plans, lost = got
            score = (self.quality(image, pk.codec.tokens_to_image(tokens, w, h))
                     - profile.distortion.db_per_lost * lost)
            if best is None or score > best[0]:
                best = (score, rate, tokens, plans, lost)
        if best is None:
            raise InputError(f"no rate point fits {budget} bytes for a {w}x{h} image; "
                             "give a larger --budget or --wire-bpp")
        _, rate, tokens, plans, lost = best
        out = self._packetizer(rate).packetize_tokens(tokens, image_id, w, h, name, plans)
        self.last_plan = Plan(rate, profile.name, est, budget, round(lost, 5))
        return out

    def datagrams(self, packets: Sequence[Packet]) -> list[bytes]:
        """The bytes to send for ``packets``: signed when the sender has a key."""
        if self.signer is None:
            return [bytes(p) for p in packets]
        return [self.signer.sign(p) for p in packets]


@dataclass(frozen=True)
class Received:
    image: np.ndarray
    report: ReceiveReport
    complete: bool  # every packet needed arrived before the deadline
    decode_s: float
    known: torch.Tensor | None = None  # (h, w) True where the token was decoded exactly


class Receiver:
    """Decodes collected images; codecs and inpainters are built once per model."""

    def __init__(self, inpainter: str, device: torch.device,
                 ar_window: int | None = None, preview_inpainter: str = "neighbor") -> None:
        self.inpainter_name = inpainter
        self.preview_name = preview_inpainter
        self.ar_window = ar_window
        self.device = device
        self._codecs: dict[bytes, tuple[Codec, Inpainter]] = {}
        self._previews: dict[bytes, Inpainter] = {}
        self._model_cfgs: dict[bytes, ModelConfig] | None = None
        # warm_up may run in a background thread while images are decoded in another:
        # each model is then built once, by whichever thread asks first.
        self._lock = threading.RLock()
        self._cfg_lock = threading.Lock()

    def _for_model(self, model_id: bytes) -> tuple[Codec, Inpainter]:
        with self._lock:
            if model_id not in self._codecs:
                model = find_by_id(model_id)  # ModelMismatchError for an unknown model
                self._codecs[model_id] = (Codec(model, self.device), self._inpainter(model))
            return self._codecs[model_id]

    def _inpainter(self, model: LoadedModel) -> Inpainter:
        """The chosen inpainter; for a rate with no AR prior (e.g. a k-means point), the
        MIM instead of dropping the sender's images -- said once on stderr."""
        try:
            return get_inpainter(self.inpainter_name, model, self.device, self.ar_window)
        except ModelNotFoundError as exc:
            if self.inpainter_name != "ar":
                raise
            print(f"resilient-tx: {exc}; images of rate {model.name} are inpainted with the "
                  "MIM instead", file=sys.stderr)
            return get_inpainter("mim", model, self.device)

    def stage_count(self, model_id: bytes) -> int | None:
        """Quincunx stages of the shipped model with this id; None for one we lack.

        Called for every packet, so the shipped models are listed once; an unknown id
        costs a dictionary miss, not a search of the model folder.
        """
        cfg = self._model_cfg(model_id)
        return None if cfg is None else cfg.stages

    def stage_tokens(self, model_id: bytes, width: int, height: int) -> tuple[int, ...] | None:
        """Tokens in each stage of a ``width`` x ``height`` image of this model (what
        bounds a header's chunk count); None for a model we lack."""
        cfg = self._model_cfg(model_id)
        if cfg is None:
            return None
        h, w = token_grid(width, height, cfg.downsample)
        return tuple(len(ix) for ix in stage_indices(h, w, cfg.stages))

    def _model_cfg(self, model_id: bytes) -> ModelConfig | None:
        # Its own lock: this runs for every packet on the event loop, and must not wait
        # for a model that another thread is building under ``_lock``.
        with self._cfg_lock:
            if self._model_cfgs is None:
                models = [get_model(rate) for rate in available_rates()]
                self._model_cfgs = {m.model_id: m.cfg for m in models}
            return self._model_cfgs.get(model_id)

    def warm_up(self) -> None:
        """Load every shipped model, its inpainter and the entropy coder now, so the first
        image's latency is not paying for start-up."""
        for rate in available_rates():
            codec, _ = self._for_model(get_model(rate).model_id)
            codec.decode_tokens(codec.encode_tokens(torch.zeros(codec.cfg.num_subvectors, 1, 1,
                                                                dtype=torch.int64)), 1, 1)

    def _preview_inpainter(self, model_id: bytes) -> Inpainter:
        with self._lock:
            if model_id not in self._previews:
                codec, main = self._for_model(model_id)
                same = self.preview_name == self.inpainter_name
                self._previews[model_id] = main if same else get_inpainter(
                    self.preview_name, codec.model, self.device, self.ar_window)
            return self._previews[model_id]

    def finish(self, due: DueImage) -> Received:
        """Decode what arrived and inpaint the rest (a preview with the preview inpainter)."""
        t0 = time.perf_counter()
        asm = due.assembler
        codec, inpainter = self._for_model(asm.model_id)
        if due.preview:
            inpainter = self._preview_inpainter(asm.model_id)
        exact = reassembly.decode(codec, asm, due.decode_stages)
        filled = inpainter.fill(exact.tokens, exact.known)
        image = codec.tokens_to_image(filled, asm.width, asm.height, draft=due.preview)
        return Received(image, exact.report, due.complete, time.perf_counter() - t0,
                        exact.known)
