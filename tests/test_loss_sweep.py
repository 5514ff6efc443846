"""The channel-simulator sweep, simulations/loss_sweep.py: its oracle, tiny real runs with
every inpainter subset, the classical baselines (JPEG, AVIF and WebP files with FEC),
stopping and resuming, and its command line."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from PIL import Image

from resilient_tx.app.demo import sample_path
from resilient_tx.errors import InputError
from resilient_tx.images import load_rgb
from resilient_tx.resilience import fec
from simulations import sweep_io
from simulations.sweep_io import Trial
from simulations.sweep_plots import CLASSICAL_METHODS
from tests.helpers import load_simulation

OUTPUTS = ("runs.jsonl", "loss_sweep.json", "loss_sweep.csv", "loss_sweep.png",
           "inpainters.png", "examples.png")


@pytest.fixture(scope="module")
def sweep() -> ModuleType:
    return load_simulation("loss_sweep")


@pytest.fixture(scope="module")
def crop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one small crop of the bundled sample (8 x 12 tokens)."""
    images = tmp_path_factory.mktemp("images")
    Image.fromarray(load_rgb(sample_path())[:128, :192]).save(images / "crop.png")
    return images


def tiny(images: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of a sweep that takes seconds: one crop, one channel, one FEC setting, one
    trial, the oracle read off one rate point."""
    return ["--images", str(images), "--rates", "0.4", "--trials", "1", "--loss-model",
            "bernoulli", "--fec", "light", "--context-depth", "2", "--oracle-rates", "low",
            "--threads", "1", "--out", str(out), *extra]


POINTS = [(0.1, 24.0, 0.85), (0.2, 25.0, 0.90)]


def test_oracle_interpolates_between_rate_points(sweep) -> None:
    assert sweep.oracle_at(POINTS, 0.15) == pytest.approx((24.5, 0.875, True))
    assert sweep.oracle_at(POINTS, 0.05) == pytest.approx((24.0, 0.85, False))


def test_oracle_extrapolates_psnr_above_the_top_point(sweep) -> None:
    slope = fec.distortion_model().db_per_doubling
    psnr, ms_ssim, inside = sweep.oracle_at(POINTS, 0.4)
    assert psnr == pytest.approx(25.0 + slope) and ms_ssim == 0.90 and not inside


def test_a_tiny_sweep_writes_every_output(sweep, crop_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = sweep.main(["--images", str(crop_dir), "--rates", "0.3", "--trials", "2",
                     "--loss-model", "bernoulli", "--fec", "for_loss", "none",
                     "--context-depth", "2", "--inpainters", "mim", "none",
                     "--oracle-rates", "low", "high", "--threads", "1", "--out", str(out)])
    assert rc == 0
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0
    assert "loss sweep" not in capsys.readouterr().err  # no progress bar off a terminal
    data = json.loads((out / "loss_sweep.json").read_text())
    rows = {(r["fec"], r["inpainter"]): r for r in data["summary"]}
    ours = {(f, i) for f in ("for_loss", "none") for i in ("mim", "none")}
    assert ours <= set(rows) and {key[1] for key in set(rows) - ours} <= set(CLASSICAL_METHODS)
    # One image: each tuned row is its best parity fraction's mean.
    for tuned in ("jpeg+fec*", "avif+fec*", "webp+fec*"):
        per_fraction: dict[str, list[float]] = {}
        for t in data["trials"]:
            if t["fec"] == "for_loss" and t["inpainter"].startswith(tuned + "@"):
                per_fraction.setdefault(t["inpainter"], []).append(t["psnr"])
        assert len(per_fraction) >= 2, tuned
        best = max(sum(v) / len(v) for v in per_fraction.values())
        assert rows["for_loss", tuned]["psnr"] == pytest.approx(best)
    assert {("for_loss", "avif+fec"), ("for_loss", "webp+fec")} <= set(rows)
    # Parity costs bytes and buys tokens.
    assert rows["for_loss", "mim"]["wire_bpp"] > rows["none", "mim"]["wire_bpp"]
    assert rows["for_loss", "mim"]["tokens_inpainted"] <= rows["none", "mim"]["tokens_inpainted"]
    assert len([t for t in data["trials"] if t["inpainter"] in ("mim", "none")]) == 2 * 2 * 2
    assert sweep.main(["--replot", str(out)]) == 0


def test_bad_arguments_fail_cleanly(sweep, capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main(["--rates", "1.5", "--out", "/nonexistent"]) == 2
    assert sweep.main(["--fec", "medium"]) == 2
    err = capsys.readouterr().err
    assert "loss rates must be in [0, 1)" in err and "medium" in err and "Traceback" not in err


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "loss_sweep.json").read_text())


@pytest.mark.parametrize("no_jpeg", [False, True], ids=["jpeg", "no-jpeg"])
@pytest.mark.parametrize("inpainters", [["mim"], ["ar"], ["neighbor"], ["none"], ["ar", "none"]],
                         ids="+".join)
def test_any_inpainter_subset_runs_to_the_end(sweep, crop_dir: Path, tmp_path: Path,
                                              inpainters: list[str], no_jpeg: bool) -> None:
    out = tmp_path / "out"
    extra = ["--inpainters", *inpainters, *(["--no-jpeg"] if no_jpeg else [])]
    assert sweep.main(tiny(crop_dir, out, *extra)) == 0
    for name in OUTPUTS:
        assert (out / name).stat().st_size > 0, name
    methods = {r["inpainter"] for r in _summary(out)["summary"]}
    assert methods - set(CLASSICAL_METHODS) == set(inpainters)
    assert (methods & set(CLASSICAL_METHODS)) == (set() if no_jpeg else set(CLASSICAL_METHODS))
    assert {p.name for p in (out / "examples").iterdir()} == {
        "original.png", *(f"loss0.400_{n}.png" for n in inpainters)}
    assert sweep.main(["--replot", str(out)]) == 0


def test_a_stopped_sweep_resumes_to_the_same_results(sweep, crop_dir: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    argv = [*tiny(crop_dir, tmp_path / "x"), "--rates", "0.2", "0.4", "--inpainters", "none",
            "--no-jpeg"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert sweep.main([*argv, "--out", str(whole)]) == 0
    real = sweep.run_point
    calls: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep, "run_point", counted)
    stop_at = 2  # the first run finishes, the second is killed
    assert sweep.main([*argv, "--out", str(parts)]) == 130
    journal = parts / sweep_io.JOURNAL
    assert len(sweep_io.read_journal(journal).runs) == 1
    with journal.open("a") as fh:
        fh.write('{"kind": "run", "key": ["cro')  # a line cut short by the kill
    calls.clear()
    stop_at = 0
    # The settings come from the journal; only the runtime flags are given again.
    assert sweep.main(["--resume", "--out", str(parts), "--threads", "1"]) == 0
    assert len(calls) == 1  # the finished run was skipped
    assert len(sweep_io.read_journal(journal).runs) == 2

    def results(out: Path) -> list[tuple]:
        return [(t["loss"], t["psnr"], t["tokens_inpainted"]) for t in _summary(out)["trials"]]

    assert results(parts) == results(whole)


def test_resume_refuses_a_different_setup(sweep, crop_dir: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert sweep.main(tiny(crop_dir, out, "--inpainters", "none", "--no-jpeg")) == 0
    capsys.readouterr()
    assert sweep.main(["--resume", "--out", str(out), "--rate", "high"]) == 2
    assert "--rate" in capsys.readouterr().err
    assert sweep.main(["--resume", "--out", str(tmp_path / "empty")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_journal_drops_a_cut_line(tmp_path: Path) -> None:
    path = tmp_path / sweep_io.JOURNAL
    sweep_io.start_journal(path, {"rate": "low"})
    with path.open("a") as fh:
        fh.write('{"kind": "ru')
    assert sweep_io.read_journal(path).runs == {}
    sweep_io.compact_journal(path)
    sweep_io.append_oracle(path, ["low"], ["a"], [(0.1, 30.0, 0.9)])
    journal = sweep_io.read_journal(path)
    assert journal.args == {"rate": "low"} and journal.oracle is not None


def test_quick_settings_and_explicit_flags(sweep) -> None:
    args = sweep.parse_args(["--quick"])
    assert args.inpainters == ["mim"] and args.baselines == [] and args.trials == 1
    assert len(args.rates) == 2 and args.limit == 1
    assert Path(args.images) == Path(sample_path()).parent
    assert sweep.parse_args(["--quick", "--rates", "0.3"]).rates == [0.3]


def test_missing_images_say_where_to_get_kodak(sweep, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert sweep.main(["--images", str(tmp_path / "kodak"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loss_sweep.py: error:")
    assert "Kodak" in err and "--images DIR" in err


def test_help_is_plain_text(sweep, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        sweep.main(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":func:" not in text and ":mod:" not in text
    assert "--quick" in text and "--resume" in text


def test_baseline_flags(sweep) -> None:
    assert sweep.parse_args([]).baselines == ["jpeg", "avif", "webp"]
    assert sweep.parse_args(["--baselines", "webp", "avif", "webp"]).baselines == ["avif", "webp"]
    assert sweep.parse_args(["--no-baselines"]).baselines == []
    assert sweep.parse_args(["--no-jpeg"]).baselines == []  # the old name
    assert sweep.parse_args(["--quick", "--baselines", "webp"]).baselines == ["webp"]
    with pytest.raises(SystemExit):
        sweep.parse_args(["--baselines", "heif"])


def test_file_baselines_alone_and_without_avif(sweep, crop_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sweep.classical, "avif_available", lambda: False)
    out = tmp_path / "out"
    assert sweep.main(tiny(crop_dir, out, "--inpainters", "none", "--baselines", "avif",
                           "webp", "--trials", "2")) == 0
    assert capsys.readouterr().err.count("no AVIF support") == 1
    data = _summary(out)
    rows = {r["inpainter"]: r for r in data["summary"]}
    assert set(rows) == {"none", "webp+fec", "webp+fec*"}
    ours = rows["none"]["wire_bpp"]
    for method in ("webp+fec", "webp+fec*"):  # never more bytes than ours
        assert 0 < rows[method]["wire_bpp"] <= ours and rows[method]["n"] == 2
        assert 0 < rows[method]["received_fraction"] <= 1
    assert sweep_io.read_journal(out / sweep_io.JOURNAL).args["baselines"] == ["webp"]
    # All or nothing: a lost file shows the flat grey fallback, one PSNR for all of them.
    files = [t for t in data["trials"] if t["inpainter"].startswith("webp")]
    lost = {round(t["psnr"], 9) for t in files if t["unusable_fraction"] == 1.0}
    whole = [t["psnr"] for t in files if t["unusable_fraction"] == 0.0]
    assert len(lost) <= 1 and whole and min(whole) > max(lost, default=0.0)


def _trial(inpainter: str, psnr: float, trial: int, image: str = "a") -> Trial:
    return Trial(image=image, loss_model="bernoulli", loss=0.3, trial=trial, fec="light",
                 depth=2, inpainter=inpainter, wire_bpp=0.2, received_fraction=1.0,
                 tokens_inpainted=0.0, unusable_fraction=0.0, psnr=psnr, ms_ssim=0.9,
                 inpaint_s=0.0)


def test_hindsight_keeps_the_best_fraction_per_image_and_method(sweep) -> None:
    trials = [_trial("avif+fec*@0.5", 30.0, 0), _trial("avif+fec*@0.5", 10.0, 1),
              _trial("avif+fec*@1", 25.0, 0), _trial("avif+fec*@1", 25.0, 1),
              _trial("webp+fec*@0.5", 28.0, 0), _trial("webp+fec*@1", 27.0, 0),
              _trial("avif+fec*@0.5", 31.0, 0, image="b"), _trial("mim", 29.0, 0)]
    best = {(t.image, t.inpainter, t.trial): t.psnr for t in sweep.hindsight(trials)}
    assert best == {("a", "avif+fec*", 0): 25.0, ("a", "avif+fec*", 1): 25.0,
                    ("a", "webp+fec*", 0): 28.0, ("b", "avif+fec*", 0): 31.0}
    rows = {r["inpainter"]: r for r in sweep.summarise(trials)}
    assert set(rows) == {"mim", "avif+fec*", "webp+fec*"}
    assert rows["avif+fec*"]["psnr"] == pytest.approx((25.0 + 25.0 + 31.0) / 3)


def test_a_version_1_journal_reads_as_version_2(tmp_path: Path) -> None:
    path = tmp_path / sweep_io.JOURNAL
    for no_jpeg, baselines in ((False, ["jpeg"]), (True, [])):
        path.write_text(json.dumps({"kind": "header", "version": 1,
                                    "args": {"rate": "low", "no_jpeg": no_jpeg}}) + "\n")
        args = sweep_io.read_journal(path).args
        assert args["baselines"] == baselines and args["rate"] == "low"
    path.write_text(json.dumps({"kind": "header", "version": 99, "args": {}}) + "\n")
    with pytest.raises(InputError, match="version 99"):
        sweep_io.read_journal(path)


def test_a_version_1_sweep_resumes(sweep, crop_dir: Path, tmp_path: Path) -> None:
    """A sweep journaled before --baselines existed continues with JPEG its only baseline."""
    out = tmp_path / "out"
    argv = [*tiny(crop_dir, out), "--inpainters", "none", "--rates", "0.2", "0.4"]
    assert sweep.main([*argv, "--baselines", "jpeg"]) == 0
    journal = out / sweep_io.JOURNAL
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    args = {k: v for k, v in lines[0]["args"].items() if k not in ("baselines", "no_baselines")}
    lines[0] = {"kind": "header", "version": 1, "args": args}
    journal.write_text("".join(json.dumps(rec) + "\n" for rec in lines[:2]))  # one run done
    assert sweep.main(["--resume", "--out", str(out), "--threads", "1"]) == 0
    methods = {r["inpainter"] for r in _summary(out)["summary"]}
    assert methods == {"none", "jpeg", "jpeg+fec", "jpeg+fec*"}
