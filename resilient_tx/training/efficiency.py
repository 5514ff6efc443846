"""Speed options of training: mixed precision, memory format, on-device data, compilation.

:class:`Efficiency` switches each of them; none of them changes what is trained, only how
fast. On the CPU the default is :meth:`Efficiency.baseline` (every option off: today's
float32 path, bit for bit); on CUDA it is :meth:`Efficiency.fast`:

* ``bf16``: the networks' forward passes run under bfloat16 autocast (no loss scaling is
  needed: bfloat16 has float32's exponent range). The product quantizer's nearest-entry
  search always runs in float32, so training picks the tokens coding will pick, and the
  losses are reduced in float32. Coding never runs reduced precision (its entropy model
  is float64; :mod:`resilient_tx.codec` is not touched by any of this).
* ``channels_last``: convolution weights and image batches in NHWC layout, the layout
  tensor cores want.
* ``device_data``: the training images are decoded once and held on the device as uint8;
  crops, flips and the MIM masks are drawn there
  (:class:`~resilient_tx.training.crops.DeviceCropSampler`), and a step's statistics stay
  on the device until the log reads them, so a step never waits for the host.
* ``compile``: ``torch.compile`` of the training forward pass; off by default (its
  start-up takes minutes of a short run's budget). A compiler failure falls back to eager
  mode with a one-line notice (:class:`GuardedCompile`).
* ``fused_adamw``: the fused CUDA AdamW kernel.

Larger batches: :func:`scale_lr` applies the square-root rule (learning rate times the
square root of the batch ratio), the scaling rule for Adam-type optimizers (Malladi et al.,
"On the SDEs and Scaling Rules for Adaptive Gradient Algorithms", NeurIPS 2022).
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import torch

from resilient_tx.config import TrainConfig

#: How :func:`scale_lr` grows the learning rate with the batch.
LrRule = Literal["sqrt", "linear"]
M = TypeVar("M", bound=torch.nn.Module)


@dataclass(frozen=True)
class Efficiency:
    """Which speed options a training run uses (module doc)."""

    bf16: bool = False
    channels_last: bool = False
    device_data: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    fused_adamw: bool = False

    @classmethod
    def baseline(cls) -> Efficiency:
        """Every option off: the float32 reference path."""
        return cls()

    @classmethod
    def fast(cls, device: torch.device, compile: bool = False) -> Efficiency:
        """Every option that pays on ``device`` whatever its model: all of them on CUDA; on
        the CPU only the on-device data path (bfloat16 pays only on CPUs with bfloat16
        arithmetic, so it is left to an explicit choice there)."""
        if device.type == "cuda":
            return cls(bf16=True, channels_last=True, device_data=True, compile=compile,
                       fused_adamw=True)
        return cls(device_data=True, compile=compile)

    @classmethod
    def from_train_config(cls, cfg: TrainConfig, device: torch.device) -> Efficiency:
        """The options a ``train:`` section asks for: ``efficient`` (auto | on | off; auto =
        :meth:`fast` on CUDA, :meth:`baseline` on the CPU) and ``compile``."""
        mode = cfg.efficient
        compile_ = bool(cfg.compile)
        on = mode == "on" or (mode == "auto" and device.type == "cuda")
        return cls.fast(device, compile_) if on else replace(cls(), compile=compile_)

    @property
    def sync_free(self) -> bool:
        """Whether steps avoid host-device syncs and data-dependent shapes (dense masked
        losses, vectorised masks): the device-data and compiled paths."""
        return self.device_data or self.compile

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """bfloat16 autocast on ``device`` if ``bf16``, else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    @staticmethod
    def full_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
        """Autocast switched off: for the parts that must stay float32."""
        return torch.autocast(device.type, enabled=False)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def prepare(self, module: M) -> M:
        """``module`` in the memory format the options ask for (in place)."""
        if self.channels_last:
            # Supported at run time (4-D weights only), missing from torch's type stubs.
            module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return module

    def adamw(self, params: Iterable[Any], lr: float, betas: tuple[float, float],
              weight_decay: float, device: torch.device) -> torch.optim.AdamW:
        """AdamW; fused on CUDA if ``fused_adamw``."""
        fused = self.fused_adamw and device.type == "cuda"
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                                 **({"fused": True} if fused else {}))


def scale_lr(lr: float, batch: int, ref_batch: int, rule: LrRule = "sqrt") -> float:
    """``lr`` tuned at ``ref_batch``, moved to ``batch`` by the square-root or linear rule."""
    ratio = batch / ref_batch
    return lr * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def notice(msg: str) -> None:
    """One line on stderr (training runs show a progress bar on stdout)."""
    print(f"resilient-tx: {msg}", file=sys.stderr)


class GuardedCompile:
    """``torch.compile(fn)`` that falls back to ``fn`` when compilation fails.

    Compilation happens on the first call (and in its backward pass), so a failure shows
    there: :meth:`warm_up` runs one trial call and its backward, and on any error prints a
    one-line notice and uses ``fn`` uncompiled from then on. Later calls are not guarded:
    an error after a successful compile is a real error.
    """

    def __init__(self, fn: Callable[..., Any], backend: str = "inductor") -> None:
        self.eager = fn
        self.compiled: Callable[..., Any] | None = None
        self.backend = backend
        try:
            self.compiled = torch.compile(fn, backend=backend)
        except Exception as exc:  # any compiler error means: run eagerly
            self._fail(exc)

    @property
    def active(self) -> bool:
        return self.compiled is not None

    def __call__(self, *args: Any) -> Any:
        fn = self.eager if self.compiled is None else self.compiled
        return fn(*args)

    def warm_up(self, trial: Callable[[Callable[..., Any]], None]) -> bool:
        """Run ``trial(compiled_fn)`` (a forward and backward); True if it compiled."""
        if self.compiled is None:
            return False
        try:
            trial(self.compiled)
        except Exception as exc:  # see the class doc
            self._fail(exc)
            return False
        return True

    def _fail(self, exc: Exception) -> None:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        notice(f"torch.compile ({self.backend}) failed, training uncompiled: "
               f"{type(exc).__name__}: {first}")
        self.compiled = None
