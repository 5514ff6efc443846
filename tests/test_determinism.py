"""Encode with 1 thread in one process, decode with 2 threads in another: identical tokens.

The full Kodak run is ``python simulations/determinism_check.py --images DIR`` (README); this
is the same script on the bundled sample and two odd-sized crops of it, so CI checks the
cross-process, cross-thread-count path on every change.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from resilient_tx.app.demo import sample_path
from resilient_tx.images import load_rgb
from tests.helpers import load_simulation


def _load_script():
    return load_simulation("determinism_check")


@pytest.mark.slow
def test_one_thread_encode_two_thread_decode_identical(tmp_path: Path) -> None:
    img = load_rgb(sample_path())
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(img).save(images / "full.png")
    Image.fromarray(img[:211, :333]).save(images / "crop_a.png")
    Image.fromarray(img[100:177, 250:700]).save(images / "crop_b.png")
    report = tmp_path / "det.json"
    code = _load_script().main(["--images", str(images), "--rates", "low", "high",
                                "--encode-threads", "1", "--decode-threads", "2",
                                "--out", str(report)])
    summary = json.loads(report.read_text())
    assert code == 0
    assert summary["streams"] == 6 and summary["images"] == 3
    assert summary["mismatched_tokens"] == 0 and summary["failed_streams"] == []
    assert summary["tokens"] > 0


@pytest.mark.gpu
def test_cpu_encode_cuda_decode_identical() -> None:
    """Streams coded on the CPU decode to the same tokens on a GPU (float64 MIM, integer
    CDFs): the cross-device half of the determinism promise."""
    import torch

    from resilient_tx.codec.image_codec import Codec
    from resilient_tx.zoo.registry import get_model

    img = load_rgb(sample_path())[:256, :384]
    cpu, gpu = Codec(get_model("low"), "cpu"), Codec(get_model("low"), "cuda")
    tokens = cpu.image_to_tokens(img)
    streams = cpu.encode_tokens(tokens)
    assert torch.equal(gpu.decode_tokens(streams, *tokens.shape[1:]), tokens)
