"""simulations/joint_plan.py: rate and parity planned together at equal wire bytes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.images import load_rgb, save_rgb
from tests.helpers import load_script


@pytest.mark.slow
def test_a_tiny_run_compares_the_plans_at_equal_bytes(tmp_path: Path, capsys) -> None:
    script = load_script("simulations/joint_plan.py")
    images = tmp_path / "img"
    images.mkdir()
    save_rgb(load_rgb(sample_path())[:64, :96], images / "crop.png")
    out = tmp_path / "out"
    assert script.main(["--images", str(images), "--rates", "0.3", "--trials", "1",
                        "--classical", "WEBP", "--threads", "1", "--out", str(out)]) == 0
    rows = json.loads((out / "rows.json").read_text())
    plans = {r["plan"]: r for r in rows}
    assert set(plans) == {"low+for_loss", "joint", "webp+fec"}
    budget = plans["low+for_loss"]["wire_bytes"]
    assert plans["joint"]["wire_bytes"] <= budget and plans["webp+fec"]["wire_bytes"] <= budget
    (line,) = json.loads((out / "summary.json").read_text())
    assert line["loss"] == 0.3 and sum(line["joint rates"].values()) == 1
    assert all(10 < r["psnr"] < 60 for r in rows)
    assert '"loss": 0.3' in capsys.readouterr().out


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    script = load_script("simulations/joint_plan.py")
    assert script.main(["--rates", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("joint_plan.py: error:") and "Traceback" not in err
