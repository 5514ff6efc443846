"""The closed-loop sweep over a changing channel, simulations/adaptive_sweep.py: its
scenario and frames, tiny real runs of every strategy (feedback reaching the sender, its
delay and loss, the classical baseline at auto's bytes, auto within a fixed plan's mean
bytes), the summary and targets, stopping and resuming, and its command line."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from resilient_tx.config import SenderConfig
from resilient_tx.eval import classical
from resilient_tx.resilience.collector import Collector
from resilient_tx.resilience.endpoint import Receiver, Sender
from resilient_tx.resilience.estimator import LossEstimator
from resilient_tx.resilience.fec import parse_spec
from resilient_tx.resilience.feedback import FeedbackHub
from resilient_tx.zoo.registry import available_rates
from simulations.adaptive_report import BUDGETED
from simulations.sim_common import SAMPLES
from tests.helpers import load_script

PRIOR = LossEstimator().prior_loss  # what auto plans with before any report
OUTPUTS = ("runs.jsonl", "adaptive_sweep.json", "adaptive_sweep.csv", "adaptive_summary.csv",
           "adaptive_sweep.png")


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_script("simulations/adaptive_sweep.py")


def tiny(out: Path, *extra: str) -> list[str]:
    """A sequence that takes seconds: 3 crops of 96 x 96 of the bundled photo, one per
    segment, i.i.d. loss, the neighbor inpainter."""
    return ["--images", str(SAMPLES), "--frames", "3", "--size", "96", "--steps",
            "0.1,0.5,0.2", "--loss-model", "bernoulli", "--inpainter", "neighbor", "--seed",
            "3", "--threads", "1", "-q", "--out", str(out), *extra]


def _data(out: Path) -> dict[str, Any]:
    return json.loads((out / "adaptive_sweep.json").read_text())


def _frames(out: Path, strategy: str, channel: str = "bernoulli") -> list[dict[str, Any]]:
    rows = [f for f in _data(out)["frames"] if f["strategy"] == strategy
            and f["channel"] == channel]
    return sorted(rows, key=lambda f: (f["trial"], f["frame"]))


@pytest.fixture(scope="module")
def full_run(sweep, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every default strategy over both channels, once."""
    out = tmp_path_factory.mktemp("full")
    assert sweep.main(tiny(out, "--loss-model", "both")) == 0
    return out


# --------------------------------------------------------------------------- scenario
def test_scenario_cuts_the_sequence_into_equal_segments(sweep) -> None:
    sc = sweep.Scenario((0.05, 0.4, 0.15), 60, "gilbert", 4.0)
    assert [sc.segment(i) for i in (0, 19, 20, 39, 40, 59)] == [0, 0, 1, 1, 2, 2]
    assert sc.loss(25) == 0.4 and sc.config(45).loss_rate == 0.15
    assert sc.config(45).loss_model == "gilbert" and sc.config(45).burst_length == 4.0
    assert sc.average_loss == pytest.approx(0.2)
    assert sc.oracle_spec(30) == "for_loss:0.4,burst:4"
    assert sweep.Scenario((0.05, 0.4), 5, "bernoulli", 1.0).oracle_spec(4) == "for_loss:0.4"
    parse_spec(sc.oracle_spec(0))  # a spec the sender accepts


def test_frame_seeds_differ_per_frame_and_trial(sweep) -> None:
    seeds = {sweep.frame_seed(0, f, t) for f in range(60) for t in range(3)}
    assert len(seeds) == 180 and min(seeds) >= 0
    assert sweep.frame_seed(1, 0, 0) != sweep.frame_seed(0, 0, 0)


def test_frames_are_seeded_distinct_crops(sweep) -> None:
    files = sorted(SAMPLES.glob("*.png"))
    frames = sweep.make_frames(files, 6, 96, seed=1)
    assert [f.image.shape for f in frames] == [(96, 96, 3)] * 6
    assert len({f.name for f in frames}) == 6
    again = sweep.make_frames(files, 6, 96, seed=1)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again, strict=True))
    assert sweep.make_frames(files, 6, 96, seed=2)[0].name != frames[0].name
    with pytest.raises(sweep.InputError, match="larger than"):
        sweep.make_frames(files, 1, 4096, seed=1)


def test_an_incomplete_frame_is_released_by_its_deadline(sweep) -> None:
    """Whatever the frame's clock, an image that cannot complete is released in its own
    frame (by the deadline), never left open for the next frame to pick up."""
    cpu = torch.device("cpu")
    receiver = Receiver("neighbor", cpu)
    image = sweep.make_frames(sorted(SAMPLES.glob("*.png")), 1, 96, seed=0)[0].image
    sender = Sender(SenderConfig(fec="none"), cpu)  # no parity: one loss is final
    arrived = sender.datagrams(sender.packets(image, 7).packets)[:-1]
    for i in range(60):  # frame i's clock, 2 frames a second: most sums round
        hub = FeedbackHub()
        collector = Collector(receiver.stage_count, deadline=sweep.DEADLINE, feedback=hub)
        due, reports = sweep._receive(collector, hub, arrived, i / 2, 7)
        assert due is not None and due.key[1] == 7 and not due.complete, i
        assert collector.next_deadline() is None and reports


# --------------------------------------------------------------------------- real runs
def test_a_tiny_sweep_writes_every_output(full_run: Path) -> None:
    for name in OUTPUTS:
        assert (full_run / name).stat().st_size > 0, name
    rows = {(r["channel"], r["strategy"]) for r in _data(full_run)["summary"]}
    strategies = {"auto", "for_loss:0.1", BUDGETED, "for_loss:0.5", "oracle", "webp"} | (
        {"avif"} if classical.avif_available() else set())
    assert rows == {(ch, st) for ch in ("bernoulli", "gilbert") for st in strategies}


def test_auto_plans_from_the_reports_of_earlier_frames(full_run: Path) -> None:
    auto = _frames(full_run, "auto")
    assert auto[0]["est_loss"] == pytest.approx(PRIOR)  # no report before the first frame
    assert auto[1]["est_loss"] != pytest.approx(PRIOR)  # frame 0's reports came back
    assert all(f["fec"].startswith("for_loss(") for f in auto)
    assert all(f["est_loss"] is None for f in _frames(full_run, "for_loss:0.5"))


def test_the_oracle_plans_for_each_segment(full_run: Path) -> None:
    assert [f["fec"] for f in _frames(full_run, "oracle")] == [
        "for_loss(0.1)", "for_loss(0.5)", "for_loss(0.2)"]
    assert [f["fec"] for f in _frames(full_run, "oracle", "gilbert")] == [
        "for_loss(0.1,burst:4)", "for_loss(0.5,burst:4)", "for_loss(0.2,burst:4)"]
    # More parity for more loss: the 0.5 frame costs more than a fixed 0.1 plan's.
    assert _frames(full_run, "oracle")[1]["bytes"] > _frames(full_run, "for_loss:0.1")[1]["bytes"]


def test_the_classical_baseline_spends_at_most_autos_bytes(full_run: Path) -> None:
    for ch in ("bernoulli", "gilbert"):
        auto = _frames(full_run, "auto", ch)
        for codec in ("webp", "avif") if classical.avif_available() else ("webp",):
            files = _frames(full_run, codec, ch)
            assert len(files) == 3
            assert all(0 < f["bytes"] <= a["bytes"] for f, a in zip(files, auto, strict=True))
            assert all(f["fec"].startswith(codec.upper()) for f in files)


def test_budgeted_auto_spends_the_fixed_plans_mean_bytes(full_run: Path) -> None:
    """auto@for_loss:0.1 plans every frame within the mean wire bytes per frame of
    for_loss:0.1 in the same channel, choosing the rate point per frame."""
    for ch in ("bernoulli", "gilbert"):
        fixed, budgeted = _frames(full_run, "for_loss:0.1", ch), _frames(full_run, BUDGETED, ch)
        budget = int(np.mean([f["bytes"] for f in fixed]))
        assert len(budgeted) == 3 and all(0 < f["bytes"] <= budget for f in budgeted)
        assert all(f["rate"] in available_rates() for f in budgeted)
        assert all(f["fec"].startswith("for_loss(") for f in budgeted)  # auto's plans
        assert budgeted[0]["est_loss"] == pytest.approx(PRIOR)
        assert budgeted[1]["est_loss"] != pytest.approx(PRIOR)  # it follows the reports
    assert {f["rate"] for f in _frames(full_run, "for_loss:0.1")} == {"low"}


def test_budgeted_auto_runs_after_its_source_and_is_judged_against_it(
        sweep, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "budget"
    # Given before its source: the source still runs first, and no plain auto is needed.
    assert sweep.main(tiny(out, "--strategies", BUDGETED, "for_loss:0.1")) == 0
    printed = capsys.readouterr().out
    assert any(line.split()[:2] == ["bernoulli", BUDGETED] for line in printed.splitlines())
    judged = [line for line in printed.splitlines() if f"{BUDGETED} " in line
              and "vs for_loss:0.1" in line]
    assert [line.split()[2] for line in judged] == ["mean", "p5", "dB/bpp"]
    assert list(sweep.read_journal(out / sweep.JOURNAL)[1]) == [
        ("bernoulli", 0, "for_loss:0.1"), ("bernoulli", 0, BUDGETED)]
    order = sweep._units(sweep.parse_args(["--strategies", "webp", BUDGETED, "auto",
                                           "for_loss:0.1"]))
    assert [st for sc, _, st in order if sc.loss_model == "bernoulli"] == [
        "auto", "for_loss:0.1", BUDGETED, "webp"]


def test_every_strategy_meets_the_same_channel(full_run: Path) -> None:
    """Common random numbers: before any report auto plans for the prior, 0.1, so its first
    frame is the fixed for_loss:0.1 plan's, and meets the same losses."""
    for ch in ("bernoulli", "gilbert"):
        a, b = _frames(full_run, "for_loss:0.1", ch)[0], _frames(full_run, "auto", ch)[0]
        assert a["fec"] == b["fec"] == "for_loss(0.1)"
        assert (a["bytes"], a["channel_loss"], a["psnr"]) == (
            b["bytes"], b["channel_loss"], b["psnr"])
    assert all(0 <= f["psnr"] < 100 for f in _data(full_run)["frames"])


def test_reports_that_never_arrive_leave_auto_at_its_prior(sweep, tmp_path: Path) -> None:
    for extra in (["--feedback-delay", "5"], ["--feedback-loss", "0.999"]):
        out = tmp_path / extra[0]
        assert sweep.main(tiny(out, "--strategies", "auto", *extra)) == 0
        assert [f["est_loss"] for f in _frames(out, "auto")] == pytest.approx([PRIOR] * 3)


def test_a_feedback_delay_of_one_frame_skips_one_frame(sweep, tmp_path: Path) -> None:
    out = tmp_path / "delay"
    assert sweep.main(tiny(out, "--strategies", "auto", "--feedback-delay", "1")) == 0
    est = [f["est_loss"] for f in _frames(out, "auto")]
    assert est[:2] == pytest.approx([PRIOR, PRIOR]) and est[2] != pytest.approx(PRIOR)


def test_a_stopped_sweep_resumes_to_the_same_results(sweep, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    argv = tiny(tmp_path / "x", "--strategies", "auto", "for_loss:0.5")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert sweep.main([*argv, "--out", str(whole)]) == 0
    real = sweep.run_ours
    calls: list[str] = []

    def counted(s: Any, sc: Any, strategy: str, *args: Any) -> Any:
        calls.append(strategy)
        if strategy == stop:
            raise KeyboardInterrupt
        return real(s, sc, strategy, *args)

    monkeypatch.setattr(sweep, "run_ours", counted)
    stop = "for_loss:0.5"  # auto finishes, the fixed plan is killed
    assert sweep.main([*argv, "--out", str(parts)]) == 130
    journal = parts / sweep.JOURNAL
    assert list(sweep.read_journal(journal)[1]) == [("bernoulli", 0, "auto")]
    with journal.open("a") as fh:
        fh.write('{"kind": "unit", "key": ["bern')  # a line cut short by the kill
    calls.clear()
    stop = ""
    # The settings come from the journal; only runtime flags are given again.
    assert sweep.main(["--resume", "--out", str(parts), "-q"]) == 0
    assert calls == ["for_loss:0.5"]  # the finished unit was skipped
    assert _data(parts)["frames"] == _data(whole)["frames"]


def test_resume_refuses_a_different_setup(sweep, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert sweep.main(tiny(out, "--strategies", "for_loss:0.1", "--frames", "3")) == 0
    capsys.readouterr()
    assert sweep.main(["--resume", "--out", str(out), "--size", "64"]) == 2
    assert "--size" in capsys.readouterr().err
    assert sweep.main(["--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


# --------------------------------------------------------------------------- summary
def _result(sweep, strategy: str, frame: int, psnr: float, nbytes: int,
            est: float | None = None) -> Any:
    seg = frame // 2
    return sweep.FrameResult("bernoulli", 0, strategy, frame, seg, (0.1, 0.4)[seg], 0.0, 10,
                             nbytes, nbytes * 8 / 1000, psnr, "", est)


def test_summary_statistics_and_estimate_lag(sweep) -> None:
    auto = [_result(sweep, "auto", f, p, 1000, e)
            for f, p, e in zip(range(4), (30.0, 10.0, 18.0, 26.0), (0.1, 0.12, 0.2, 0.38),
                               strict=True)]
    (row,) = sweep.summarise(auto)
    assert row["mean_psnr"] == pytest.approx(21.0)
    assert row["p5_psnr"] == pytest.approx(np.percentile([30, 10, 18, 26], 5))
    assert row["below_20db"] == 0.5 and row["bytes_per_sequence"] == 4000
    assert row["psnr_per_bpp"] == pytest.approx(21.0 / 8.0)
    assert (row["seg1_psnr"], row["seg2_psnr"]) == (20.0, 22.0)
    assert row["seg2_estimate"] == pytest.approx(0.29)
    assert row["estimate_lag"] == [0, 1]  # 0.2 is 0.2 off 0.4; 0.38 within 0.05


def test_verdicts_say_met_and_missed(sweep) -> None:
    rows = sweep.summarise(
        [_result(sweep, "auto", f, 25.0, 1000, 0.1) for f in range(4)]
        + [_result(sweep, "oracle", f, 25.4, 1100) for f in range(4)]
        + [_result(sweep, "for_loss:0.1", f, 20.0, 700) for f in range(4)]
        + [_result(sweep, "avif", f, p, 1000) for f, p in enumerate((13.0, 30, 30, 30))])
    lines = sweep.verdicts(rows)
    assert len(lines) == 4
    assert lines[0].startswith("bernoulli: met") and "oracle" in lines[0]
    assert lines[1].startswith("bernoulli: MISSED") and "for_loss:0.1" in lines[1]
    assert lines[2].startswith("bernoulli: met") and "p5" in lines[2]
    assert lines[3].startswith("bernoulli: MISSED") and "mean PSNR" in lines[3]


def test_verdicts_judge_budgeted_auto_against_its_source(sweep) -> None:
    """Without plain auto too; at the source's bytes: mean and p5 PSNR, then dB/bpp
    against every fixed plan."""
    rows = sweep.summarise(
        [_result(sweep, "for_loss:0.1", f, 20.0, 700) for f in range(4)]
        + [_result(sweep, "for_loss:0.5", f, 24.0, 1400) for f in range(4)]
        + [_result(sweep, BUDGETED, f, p, 690, 0.1) for f, p in enumerate((12, 24, 24, 24))])
    lines = sweep.verdicts(rows)
    assert len(lines) == 4 and all(BUDGETED in line for line in lines)
    assert lines[0].startswith("bernoulli: met") and "mean PSNR" in lines[0]
    assert "0.99x its bytes" in lines[0]
    assert lines[1].startswith("bernoulli: MISSED") and "p5 PSNR" in lines[1]
    assert lines[2].startswith("bernoulli: met") and "vs for_loss:0.1" in lines[2]
    assert lines[3].startswith("bernoulli: met") and "vs for_loss:0.5" in lines[3]
    (row,) = (r for r in rows if r["strategy"] == BUDGETED)
    assert row["estimate_lag"] == [0, None]  # adaptive: its estimate is summed up too


def test_verdicts_judge_auto_at_the_oracles_bytes_by_the_oracle_target(sweep) -> None:
    rows = sweep.summarise(
        [_result(sweep, "oracle", f, 25.0, 1000) for f in range(4)]
        + [_result(sweep, "auto@oracle", f, 24.6, 990, 0.1) for f in range(4)])
    (line,) = sweep.verdicts(rows)
    assert line.startswith("bernoulli: met") and "auto@oracle - oracle mean PSNR -0.40" in line
    assert "0.99x its bytes" in line
    rows = sweep.summarise(
        [_result(sweep, "oracle", f, 25.0, 1000) for f in range(4)]
        + [_result(sweep, "auto@oracle", f, 24.4, 990, 0.1) for f in range(4)])
    assert sweep.verdicts(rows)[0].startswith("bernoulli: MISSED")


# --------------------------------------------------------------------------- command line
def test_quick_settings_and_explicit_flags(sweep) -> None:
    args = sweep.parse_args(["--quick"])
    assert (args.frames, args.size, args.inpainter, args.loss_model) == (
        12, 192, "neighbor", "bernoulli")
    assert sweep.parse_args(["--quick", "--frames", "6"]).frames == 6
    default = sweep.parse_args([])
    assert default.frames >= 60 and default.steps == [0.05, 0.40, 0.15]
    assert default.loss_model == "both" and default.inpainter == "mim"


@pytest.mark.parametrize(("argv", "message"), [
    (["--steps", "0.1,1.5"], "--steps"),
    (["--frames", "2"], "segments"),
    (["--strategies", "webp"], "add auto"),
    (["--strategies", "for_loss:2"], "loss rate"),
    (["--strategies", "auto", "auto"], "twice"),
    (["--strategies", BUDGETED], "add it"),
    (["--strategies", "auto", "webp", "auto@webp"], "for_loss plan"),
    (["--strategies", "auto@"], "SPEC"),
    (["--feedback-loss", "1"], "--feedback-loss"),
    (["--loss-model", "gilbert", "--burst", "0.1"], "burst"),
    (["--images", "/nonexistent/kodak"], "Kodak"),
])
def test_bad_arguments_fail_in_one_line(sweep, tmp_path: Path, argv: list[str], message: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("adaptive_sweep.py: error:")
    assert message in err
