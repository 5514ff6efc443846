"""The rate-distortion script, simulations/rd_eval.py: a tiny real run and its BD table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from resilient_tx.app.demo import sample_path
from resilient_tx.eval import classical
from resilient_tx.images import load_rgb
from tests.helpers import load_simulation


@pytest.fixture(scope="module")
def rd():
    return load_simulation("rd_eval")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two crops big enough for MS-SSIM (short side >= 161 px)."""
    folder = tmp_path_factory.mktemp("images")
    img = load_rgb(sample_path())
    Image.fromarray(img[:176, :192]).save(folder / "a.png")
    Image.fromarray(img[-176:, -192:]).save(folder / "b.png")
    return folder


def test_a_tiny_run_writes_every_output_and_self_bd_is_zero(rd, images: Path, tmp_path: Path,
                                                            capsys) -> None:
    out = tmp_path / "out"
    codecs = ["WEBP", "JPEG"] + (["AVIF"] if classical.avif_available() else [])
    rc = rd.main(["--images", str(images), "--rates", "low-k16", "low", "--threads", "1",
                  "--codecs", *codecs, "--avif-q", "0", "20", "40", "--webp-q", "0", "10", "40",
                  "--jpeg-q", "1", "10", "30", "--out", str(out)])
    assert rc == 0
    for name in ("rd.json", "rd.csv", "rd_sweeps.csv", "rd_bdrate.csv", "rd.png"):
        assert (out / name).stat().st_size > 0
    data = json.loads((out / "rd.json").read_text())
    assert [s["rate"] for s in data["summary"]] == ["low-k16", "low"]
    assert set(data["sweeps"]) == set(codecs)
    assert all(len(pts) == 3 and pts[0]["images"] == 2 for pts in data["sweeps"].values())
    with (out / "rd_bdrate.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(codecs) * 2 * 2  # one family curve
    assert "BD-rate of our curves" in capsys.readouterr().out

    ours = [rd.Curve(**{k: tuple(v) if isinstance(v, list) else v for k, v in c.items()})
            for c in data["curves"]]
    for row in rd.bd_table(ours, ours, max_bpp=10.0):
        assert row.bd_rate_pct == pytest.approx(0.0, abs=1e-9), row


def test_bd_rows_say_why_there_is_no_number(rd) -> None:
    ours = rd.Curve("low", ("a", "b"), (0.05, 0.1), (24.0, 25.0), (0.8, 0.85))
    far = rd.Curve("JPEG", ("q1", "q5"), (0.5, 1.0), (30.0, 32.0), (0.95, 0.97))
    nan = rd.Curve("WEBP", ("q0", "q5"), (0.1, 0.2), (25.0, 26.0), (float("nan"),) * 2)
    row = rd.bd_row(ours, far, "psnr", None, "pchip")
    assert row.bd_rate_pct is None and row.note == "no overlap"
    row = rd.bd_row(ours, nan, "ms_ssim", 0.2, "pchip")
    assert row.bd_rate_pct is None and "fewer than 2" in row.note and "q0" in row.note


def test_a_missing_folder_says_where_to_get_kodak(rd, tmp_path: Path, capsys) -> None:
    assert rd.main(["--images", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "Kodak" in err and err.count("\n") == 1


def test_the_default_images_are_the_bundled_sample(rd) -> None:
    assert rd._image_folder(None) == rd.ROOT / "resilient_tx" / "samples"
    assert rd._image_folder(None).is_dir()


def test_a_missing_avif_plugin_is_one_clear_line(rd, images: Path, capsys,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(classical.features, "check", lambda name: False)
    assert rd.main(["--images", str(images), "--codecs", "AVIF", "JPEG"]) == 2
    err = capsys.readouterr().err
    assert "AVIF" in err and err.count("\n") == 1
