"""The channel-simulator sweep, simulations/loss_sweep.py (its oracle and a tiny real run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from resilient_tx.app.demo import sample_path
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec
from tests.helpers import load_simulation


@pytest.fixture(scope="module")
def sweep():
    return load_simulation("loss_sweep")


POINTS = [(0.1, 24.0, 0.85), (0.2, 25.0, 0.90)]


def test_oracle_interpolates_between_rate_points(sweep) -> None:
    assert sweep.oracle_at(POINTS, 0.15) == pytest.approx((24.5, 0.875, True))
    assert sweep.oracle_at(POINTS, 0.05) == pytest.approx((24.0, 0.85, False))


def test_oracle_extrapolates_psnr_above_the_top_point(sweep) -> None:
    slope = fec.distortion_model().db_per_doubling
    psnr, ms_ssim, inside = sweep.oracle_at(POINTS, 0.4)
    assert psnr == pytest.approx(25.0 + slope) and ms_ssim == 0.90 and not inside


def test_a_tiny_sweep_writes_every_output(sweep, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(load_rgb(sample_path())[:128, :192]).save(images / "crop.png")
    out = tmp_path / "out"
    rc = sweep.main(["--images", str(images), "--rates", "0.3", "--trials", "2",
                     "--loss-model", "bernoulli", "--fec", "for_loss", "none",
                     "--context-depth", "2", "--inpainters", "mim", "none",
                     "--threads", "1", "--out", str(out)])
    assert rc == 0
    for name in ("loss_sweep.json", "loss_sweep.csv", "loss_sweep.png", "inpainters.png",
                 "examples.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "loss_sweep.json").read_text())
    rows = {(r["fec"], r["inpainter"]): r for r in data["summary"]}
    ours = {(f, i) for f in ("for_loss", "none") for i in ("mim", "none")}
    assert ours <= set(rows) and {key[1] for key in set(rows) - ours} <= {
        "jpeg", "jpeg+fec", "jpeg+fec*"}
    # One image: the tuned JPEG+FEC row is its best parity fraction's mean.
    per_fraction: dict[str, list[float]] = {}
    for t in data["trials"]:
        if t["fec"] == "for_loss" and t["inpainter"].startswith("jpeg+fec*@"):
            per_fraction.setdefault(t["inpainter"], []).append(t["psnr"])
    assert len(per_fraction) >= 2
    best = max(sum(v) / len(v) for v in per_fraction.values())
    assert rows["for_loss", "jpeg+fec*"]["psnr"] == pytest.approx(best)
    # Parity costs bytes and buys tokens.
    assert rows["for_loss", "mim"]["wire_bpp"] > rows["none", "mim"]["wire_bpp"]
    assert rows["for_loss", "mim"]["tokens_inpainted"] <= rows["none", "mim"]["tokens_inpainted"]
    assert len([t for t in data["trials"] if "jpeg" not in t["inpainter"]]) == 2 * 2 * 2
    assert sweep.main(["--replot", str(out)]) == 0


def test_bad_arguments_fail_cleanly(sweep, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main(["--rates", "1.5", "--out", "/nonexistent"]) == 2
    assert sweep.main(["--fec", "medium"]) == 2
    err = capsys.readouterr().err
    assert "loss rates must be in [0, 1)" in err and "medium" in err and "Traceback" not in err
