"""Row-streaming inference of convolutional stacks: each row computed once, memory of a few rows.

A conv stack (the PQ-VAE's ``Encoder.convs`` and ``Decoder.convs``) is local: an output row
depends only on a few input rows around it. Run on a whole image, every layer holds its
full-resolution activation at once (hundreds of megabytes for a 12-megapixel photo) and
streams each one through memory several times. Here the image flows through the stack in
chunks of rows instead, as in a hardware line-buffer pipeline: every layer keeps only the
input rows its next output rows still need, so

* **every output row is computed exactly once** (no overlapping tiles to recompute) by the
  layer's own weights. A conv sees its buffered input rows plus explicit zero rows at the
  image's top and bottom in place of its vertical zero padding, which is the same sum of
  the same products, so on CPU the rows equal the whole-image call's bit for bit (the
  tests check it layer by layer and for whole stacks);
* **memory is a few chunks per layer**, whatever the image height (the width is kept
  whole, so horizontal padding is the layer's own).

Supported: ``nn.Conv2d`` (zero padding, vertical dilation 1), ``nn.PixelShuffle``,
``nn.PixelUnshuffle``, elementwise activations, ``nn.Sequential``, and any module with a
``row_stream()`` method (a residual block builds a :class:`Residual` from its parts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: Modules that act on every value independently: a chunk of rows needs no neighbours.
ELEMENTWISE = (nn.SiLU, nn.GELU, nn.ReLU, nn.Identity, nn.Tanh, nn.Sigmoid)


def _rows(x: torch.Tensor) -> int:
    return int(x.shape[2])


class RowStream:
    """One stage of a pipeline over rows of (B, C, H, W) tensors.

    :meth:`push` takes the next input rows and returns the output rows that became
    computable (possibly none); :meth:`finish` marks the bottom of the image and returns
    the rest. Pushed rows must follow each other without gaps, from the image's top.
    """

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish(self) -> torch.Tensor | None:
        """The remaining output rows (None when the stage holds nothing back)."""
        return None


class Pointwise(RowStream):
    """A layer without vertical reach (activation, pixel shuffle): rows map to rows."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.fn = fn

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        return self.fn(rows)


class ConvRows(RowStream):
    """``conv`` over a stream of rows, with a line buffer of the rows still needed.

    The buffer starts with the conv's top padding as zero rows; output row ``o`` needs
    buffered (padded) rows ``o * stride .. o * stride + kernel - 1``; :meth:`finish`
    appends the bottom padding.
    """

    def __init__(self, conv: nn.Conv2d) -> None:
        pad = conv.padding
        if isinstance(pad, str) or conv.padding_mode != "zeros" or conv.dilation[0] != 1:
            raise ValueError("row streaming needs explicit zero padding and vertical "
                             f"dilation 1, got {conv}")
        self.conv = conv
        self.kernel, self.stride, self.pad = conv.kernel_size[0], conv.stride[0], pad[0]
        self.pad_w = int(pad[1])
        self.buf: torch.Tensor | None = None
        # The weight in the input's memory format, made once: else the conv would convert
        # it on every call.
        self.weights: dict[torch.memory_format, torch.Tensor] = {}

    def _zeros(self, like: torch.Tensor, n: int) -> torch.Tensor:
        shape = (like.shape[0], like.shape[1], n, like.shape[3])
        return torch.zeros(shape, dtype=like.dtype, device=like.device).contiguous(
            memory_format=_format(like))

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        if self.buf is None:
            self.buf = self._zeros(rows, self.pad)
        self.buf = torch.cat([self.buf, rows], dim=2) if _rows(self.buf) else rows
        return self._emit()

    def finish(self) -> torch.Tensor | None:
        if self.buf is None:
            return None
        self.buf = torch.cat([self.buf, self._zeros(self.buf, self.pad)], dim=2)
        out = self._emit()
        self.buf = None
        return out

    def _emit(self) -> torch.Tensor:
        assert self.buf is not None  # set by push before any emit
        have = _rows(self.buf)
        count = (have - self.kernel) // self.stride + 1 if have >= self.kernel else 0
        c = self.conv
        if count == 0:  # nothing computable yet: no rows, of the output's width
            width = (self.buf.shape[3] + 2 * self.pad_w - c.dilation[1] * (c.kernel_size[1] - 1)
                     - 1) // c.stride[1] + 1
            shape = (self.buf.shape[0], c.out_channels, 0, width)
            return torch.empty(shape, dtype=self.buf.dtype, device=self.buf.device)
        used = self.buf[:, :, : (count - 1) * self.stride + self.kernel]
        fmt = _format(self.buf)
        if fmt not in self.weights:
            self.weights[fmt] = c.weight.contiguous(memory_format=fmt)
        out = F.conv2d(used, self.weights[fmt], c.bias, c.stride, (0, self.pad_w), c.dilation,
                       c.groups)
        self.buf = self.buf[:, :, count * self.stride :]
        return out


class UnshuffleRows(RowStream):
    """``PixelUnshuffle(r)``: waits for whole groups of ``r`` rows."""

    def __init__(self, r: int) -> None:
        self.r = r
        self.buf: torch.Tensor | None = None

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        buf = rows if self.buf is None or not _rows(self.buf) else torch.cat([self.buf, rows], 2)
        whole = _rows(buf) // self.r * self.r
        self.buf = buf[:, :, whole:]
        return F.pixel_unshuffle(buf[:, :, :whole], self.r)

    def finish(self) -> torch.Tensor | None:
        if self.buf is not None and _rows(self.buf):
            raise ValueError(f"image height is not a multiple of {self.r}")
        return None


class Chain(RowStream):
    """Stages in sequence; :meth:`finish` flushes them in order."""

    def __init__(self, stages: Sequence[RowStream]) -> None:
        self.stages = list(stages)

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        for s in self.stages:
            if not _rows(rows):  # nothing came through yet: later stages wait too
                return rows
            rows = s.push(rows)
        return rows

    def finish(self) -> torch.Tensor | None:
        pending: torch.Tensor | None = None
        for s in self.stages:
            if pending is not None and _rows(pending):
                pending = s.push(pending)
            else:
                pending = None
            tail = s.finish()
            if tail is not None and _rows(tail):
                pending = tail if pending is None or not _rows(pending) else torch.cat(
                    [pending, tail], 2)
        return pending


class Residual(RowStream):
    """``x + body(x)`` for a body that keeps the row count: input rows wait in a skip
    buffer until the body's matching rows come out."""

    def __init__(self, body: RowStream) -> None:
        self.body = body
        self.skip: list[torch.Tensor] = []

    def push(self, rows: torch.Tensor) -> torch.Tensor:
        self.skip.append(rows)
        return self._join(self.body.push(rows))

    def finish(self) -> torch.Tensor | None:
        tail = self.body.finish()
        return None if tail is None else self._join(tail)

    def _join(self, y: torch.Tensor) -> torch.Tensor:
        n = _rows(y)
        if n == 0:
            return y
        skip = torch.cat(self.skip, 2) if len(self.skip) > 1 else self.skip[0]
        self.skip = [skip[:, :, n:]]
        return skip[:, :, :n] + y


def _format(x: torch.Tensor) -> torch.memory_format:
    return (torch.channels_last if x.dim() == 4 and x.is_contiguous(
        memory_format=torch.channels_last) and not x.is_contiguous() else torch.contiguous_format)


def stream_of(module: nn.Module) -> RowStream:
    """A fresh :class:`RowStream` computing ``module`` (see the module docstring)."""
    own = getattr(module, "row_stream", None)
    if callable(own):
        made = own()
        if not isinstance(made, RowStream):
            raise TypeError(f"{type(module).__name__}.row_stream() must return a RowStream")
        return made
    if isinstance(module, nn.Sequential):
        return Chain([stream_of(m) for m in module])
    if isinstance(module, nn.Conv2d):
        return ConvRows(module)
    if isinstance(module, nn.PixelShuffle):
        r = module.upscale_factor
        return Pointwise(lambda x: F.pixel_shuffle(x, r))
    if isinstance(module, nn.PixelUnshuffle):
        return UnshuffleRows(module.downscale_factor)
    if isinstance(module, ELEMENTWISE):
        return Pointwise(module)
    raise TypeError(f"no row-streaming rule for {type(module).__name__}")


def stream_rows(module: nn.Module, chunks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    """``module`` applied to an image given as consecutive chunks of rows (top first),
    yielding its output as consecutive chunks of rows; concatenated, they equal
    ``module(torch.cat(chunks, 2))``."""
    stream = stream_of(module)
    for chunk in chunks:
        out = stream.push(chunk)
        if _rows(out):
            yield out
    tail = stream.finish()
    if tail is not None and _rows(tail):
        yield tail


def row_chunks(x: torch.Tensor, rows: int) -> Iterator[torch.Tensor]:
    """``x`` (B, C, H, W) as consecutive chunks of ``rows`` rows (views, no copy)."""
    if rows < 1:
        raise ValueError(f"rows per chunk must be >= 1, got {rows}")
    for top in range(0, _rows(x), rows):
        yield x[:, :, top : top + rows]
