"""simulations/bench_preview.py: time to the first preview against the final picture."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from resilient_tx.app.demo import sample_path
from resilient_tx.images import load_rgb, save_rgb
from tests.helpers import load_script


@pytest.mark.slow
def test_a_slow_link_gives_a_preview_before_the_final_picture(tmp_path: Path) -> None:
    script = load_script("simulations/bench_preview.py")
    crop = tmp_path / "crop.png"
    save_rgb(load_rgb(sample_path())[:128, :192], crop)
    # 0.02 Mbit/s: the few kilobytes take about a second, long enough for a preview.
    (row,) = script.run(script.build_parser().parse_args(
        ["--image", str(crop), "--pace", "0.02", "--seeds", "1", "--threads", "1"]))
    assert not math.isnan(row["preview_s"]) and row["preview_s"] < row["final_s"]
    assert row["final_db"] > row["preview_db"] > 10


def test_bad_arguments_are_one_line_errors(capsys) -> None:
    script = load_script("simulations/bench_preview.py")
    assert script.main(["--loss", "1.5"]) == 2
    assert "bench_preview.py: error:" in capsys.readouterr().err
