"""The plan robustness simulation, simulations/plan_robustness.py, on a tiny model."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from resilient_tx.config import ModelConfig
from resilient_tx.resilience import uep
from resilient_tx.transport.channel import ChannelConfig
from tests.helpers import load_script, make_codec


@pytest.fixture(scope="module")
def script() -> ModuleType:
    return load_script("simulations/plan_robustness.py")


@pytest.fixture
def image(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)


def test_guard_and_bursts_on_a_tiny_model(script: ModuleType, tmp_path: Path,
                                          tiny_config: ModelConfig, image: np.ndarray) -> None:
    codec = make_codec(tmp_path, tiny_config)
    specs = ["for_loss:0.1,guard:1", "for_loss:0.1"]
    chans = script.channels([0.3], 4.0)
    rows = script.measure(codec, [image], specs, chans, trials=2000, seed=0, progress=False)
    assert [(r.spec, r.channel) for r in rows] == [(s, c) for c, _ in chans for s in specs]
    plain, guarded = rows[0], rows[1]  # i.i.d. 30 %
    assert plain.relative_bytes == 1.0 and guarded.wire_bytes > plain.wire_bytes
    assert guarded.stage1_lost < plain.stage1_lost
    for r in rows:
        assert 0 <= r.inpainted <= 1
        # The simulation and the planner's own estimate agree (2000 patterns).
        assert r.inpainted == pytest.approx(r.planner, abs=0.05)


def test_receive_applies_the_receivers_rule(script: ModuleType) -> None:
    shapes = (uep.StageShape(1, 10, 0.25, 0), uep.StageShape(2, 10, 0.75, 1))
    order = ((1, 0), (0, 0), (1, 1), (0, 1), (1, 2))  # (stage - 1, index) as sent
    item = script.Sent(order, shapes, (1, 1), 50)
    lost = np.array([[False, True, False], [True, False, False], [False, False, True],
                     [True, False, False], [False, True, True]])  # rows: positions
    complete, share = script.receive(item, lost)
    # Pattern 0: stage 1 lost both its packets, so stage 2 is useless. Patterns 1 and 2:
    # stage 2 lost one data packet and its parity packet, so half its chunks are gone.
    assert complete.tolist() == [[False, True, True], [True, False, False]]
    assert share.tolist() == pytest.approx([1.0, 0.75 * 0.5, 0.75 * 0.5])


def test_patterns_share_prefixes_and_seeds(script: ModuleType) -> None:
    config = ChannelConfig("gilbert", loss_rate=0.3, burst_length=4.0)
    a = script.patterns(config, 40, 50, seed=7)
    b = script.patterns(config, 60, 50, seed=7)
    assert a.shape == (40, 50) and np.array_equal(a, b[:40])
    assert not np.array_equal(a, script.patterns(config, 40, 50, seed=8))


@pytest.fixture
def folder(tmp_path: Path, image: np.ndarray) -> Path:
    out = tmp_path / "images"
    out.mkdir()
    Image.fromarray(image).save(out / "one.png")
    return out


def test_main_runs_the_shipped_model_on_a_folder(script: ModuleType, folder: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert script.main(["--images", str(folder), "--trials", "50", "-q", "--specs",
                        "for_loss:0.1", "--losses", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "for_loss:0.1" in out and "gilbert 0.20 b4" in out


@pytest.mark.parametrize(("args", "message"),
                         [(["--images", "missing"], "no image folder"),
                          (["--specs", "for_loss:0.3,burst:0.5"], "burst"),
                          (["--specs", "medium"], "unknown FEC profile"),
                          (["--losses", "1.5"], "loss_rate"),
                          (["--trials", "0"], "trials")])
def test_main_reports_bad_arguments_in_one_line(script: ModuleType, folder: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                args: list[str], message: str) -> None:
    where = ["--images", str(folder / args[1])] if args[0] == "--images" else [
        "--images", str(folder), *args]
    assert script.main(where) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
