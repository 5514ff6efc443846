"""Every CLI error path gives one clear line and a non-zero exit; the happy paths work."""

from __future__ import annotations

import io
import json
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.app.cli import main
from resilient_tx.app.demo import sample_path
from resilient_tx.config import ModelConfig
from resilient_tx.eval.metrics import psnr
from resilient_tx.images import load_rgb
from resilient_tx.model import PQMIM
from resilient_tx.zoo.checkpoint import save_model

TINY = ModelConfig(widths=(8, 8, 8), latent_dim=16, num_subvectors=2, codebook_size=16,
                   latent_blocks=1, latent_heads=2, mim_dim=16, mim_depth=1, mim_heads=2)


@pytest.fixture(scope="module")
def small_png(tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("img") / "small.png"
    Image.fromarray(load_rgb(sample_path())[:96, :160]).save(p)
    return p


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, small_png: Path) -> Path:
    out = tmp_path_factory.mktemp("rtx") / "small.rtx"
    assert main(["encode", str(small_png), "-o", str(out)]) == 0
    return out


def run_err(capsys, argv: list[str], status: int = 2) -> str:
    """Run a failing command: one error line, and status 2 for a usage error (the default)
    or 1 for work that failed (a corrupted or foreign stream)."""
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == status
    assert err.startswith("resilient-tx: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_encode_decode_round_trip(tmp_path, small_png, encoded, capsys) -> None:
    out = tmp_path / "back.png"
    assert main(["decode", str(encoded), "-o", str(out)]) == 0
    assert "decode" in capsys.readouterr().out
    assert psnr(load_rgb(small_png), load_rgb(out)) > 18.0


def test_missing_input_file(tmp_path, capsys) -> None:
    assert "no such file" in run_err(capsys, ["encode", str(tmp_path / "nope.png"), "-o",
                                               str(tmp_path / "x.rtx")])
    assert "no such file" in run_err(capsys, ["decode", str(tmp_path / "nope.rtx"), "-o",
                                               str(tmp_path / "x.png")])


def test_non_image_input(tmp_path, capsys) -> None:
    fake = tmp_path / "fake.png"
    fake.write_text("this is not a picture")
    assert "not a readable image" in run_err(capsys, ["encode", str(fake), "-o",
                                                       str(tmp_path / "x.rtx")])


def test_non_rtx_input(tmp_path, small_png, capsys) -> None:
    assert "not an .rtx file" in run_err(capsys, ["decode", str(small_png), "-o",
                                                   str(tmp_path / "x.png")], status=1)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.99])
def test_truncated_rtx(tmp_path, encoded, capsys, keep: float) -> None:
    blob = encoded.read_bytes()
    cut = tmp_path / "cut.rtx"
    cut.write_bytes(blob[: max(1, int(len(blob) * keep))])
    assert "truncated" in run_err(capsys, ["decode", str(cut), "-o", str(tmp_path / "x.png")],
                                  status=1)


def test_corrupted_payload_rtx(tmp_path, encoded, capsys) -> None:
    blob = bytearray(encoded.read_bytes())
    blob[-len(blob) // 3] ^= 0xFF  # inside the stage data, past the header
    bad = tmp_path / "bad.rtx"
    bad.write_bytes(bytes(blob))
    assert "CRC" in run_err(capsys, ["decode", str(bad), "-o", str(tmp_path / "x.png")],
                            status=1)
    assert not (tmp_path / "x.png").exists()


def test_corrupted_header_rtx(tmp_path, encoded, capsys) -> None:
    blob = bytearray(encoded.read_bytes())
    blob[8] ^= 0x01  # inside the model id
    bad = tmp_path / "badhead.rtx"
    bad.write_bytes(bytes(blob))
    assert "header CRC" in run_err(capsys, ["decode", str(bad), "-o", str(tmp_path / "x.png")],
                                   status=1)


def _other_model(tmp_path: Path) -> Path:
    torch.manual_seed(7)
    path = tmp_path / "other.pt"
    save_model(path, PQMIM(TINY), torch.ones(2, 16, dtype=torch.int64), {})
    return path


def test_rtx_from_a_different_model(tmp_path, small_png, encoded, capsys) -> None:
    other = _other_model(tmp_path)
    # A stream from the shipped model, decoded with another model file: refused.
    err = run_err(capsys, ["decode", str(encoded), "-o", str(tmp_path / "x.png"),
                           "--model", str(other)], status=1)
    assert "made by model" in err
    # A stream from a model that is not shipped, decoded without --model: refused too.
    foreign = tmp_path / "foreign.rtx"
    assert main(["encode", str(small_png), "-o", str(foreign), "--model", str(other)]) == 0
    err = run_err(capsys, ["decode", str(foreign), "-o", str(tmp_path / "y.png")], status=1)
    assert "not among the models shipped" in err


def test_forged_model_id_with_valid_header_crc(tmp_path, encoded, capsys) -> None:
    blob = bytearray(encoded.read_bytes())
    blob[6:14] = b"\x00" * 8
    n = blob[22]
    end = 23 + 12 * n
    blob[end : end + 4] = struct.pack("<I", zlib.crc32(bytes(blob[:end])) & 0xFFFFFFFF)
    forged = tmp_path / "forged.rtx"
    forged.write_bytes(bytes(blob))
    assert "not among the models shipped" in run_err(
        capsys, ["decode", str(forged), "-o", str(tmp_path / "x.png")], status=1)


def test_unknown_rate_and_bad_device(tmp_path, small_png, capsys) -> None:
    assert "unknown rate" in run_err(capsys, ["encode", str(small_png), "-o",
                                               str(tmp_path / "x.rtx"), "--rate", "bogus"])
    assert "--device" in run_err(capsys, ["encode", str(small_png), "-o",
                                          str(tmp_path / "x.rtx"), "--device", "tpu"])


def test_help_and_models(capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "encode" in capsys.readouterr().out
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "low" in out and "high" in out


@pytest.mark.parametrize(("extra", "message"), [(["--loss", "1.5"], "loss rate"),
                                                (["--fec", "medium"], "unknown FEC profile")])
def test_demo_refuses_bad_loss_or_fec_before_any_work(tmp_path, capsys, extra, message) -> None:
    assert main(["demo", "--out", str(tmp_path / "d"), "--rate", "low", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_demo_runs_on_bundled_sample(tmp_path, capsys) -> None:
    assert main(["demo", "--out", str(tmp_path), "--rate", "low"]) == 0
    out = capsys.readouterr().out
    assert "exact" in out and "MISMATCH" not in out
    recon = load_rgb(tmp_path / "low.png")
    assert recon.shape == load_rgb(sample_path()).shape
    assert np.isfinite(psnr(load_rgb(tmp_path / "original.png"), recon))
    # the loopback transmission half: 30 % simulated loss, side-by-side image and report
    side = load_rgb(tmp_path / "transmitted_side_by_side.png")
    assert side.shape[1] == 4 * recon.shape[1]  # original | planned FEC | no FEC | map
    report = json.loads((tmp_path / "transmission_report.json").read_text())
    assert report["packets_dropped"] > 0 and report["psnr"] > 20.0
    assert report["unprotected"]["tokens_inpainted"] > 0  # this one shows the inpainter


def _cli(*args: str, stdin: bytes | None = None, timeout: float = 300) -> (
        subprocess.CompletedProcess[bytes]):
    return subprocess.run([sys.executable, "-m", "resilient_tx", *args], input=stdin,
                          capture_output=True, timeout=timeout, check=False)


def test_version_and_python_dash_m() -> None:
    done = _cli("--version")
    assert done.returncode == 0
    assert done.stdout.decode().startswith("resilient-tx ")


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom resilient_tx.app.cli import main\n"
            "try:\n    main(['send', '--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'numpy', 'aiortc', 'matplotlib') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert "HEAVY []" in done.stdout.decode()


def test_usage_error_is_2_runtime_failure_is_1(tmp_path) -> None:
    assert _cli("encode").returncode == 2  # argparse: a missing argument
    assert _cli("decode", str(tmp_path / "nope.rtx"), "-o", "x.png").returncode == 2
    junk = tmp_path / "junk.rtx"
    junk.write_bytes(b"RTXF" + bytes(60))
    done = _cli("decode", str(junk), "-o", str(tmp_path / "x.png"))
    assert done.returncode == 1 and done.stderr.decode().startswith("resilient-tx: error:")


@pytest.mark.slow
def test_stdin_and_stdout_with_dash(small_png: Path) -> None:
    enc = _cli("encode", "-", "-o", "-", stdin=small_png.read_bytes())
    assert enc.returncode == 0, enc.stderr.decode()
    assert enc.stdout.startswith(b"RTXF") and b"bpp" in enc.stderr
    dec = _cli("decode", "-", "-o", "-", stdin=enc.stdout)
    assert dec.returncode == 0, dec.stderr.decode()
    assert dec.stdout.startswith(b"\x89PNG")
    from PIL import Image

    with Image.open(io.BytesIO(dec.stdout)) as im:
        assert im.size == (160, 96)


def test_sigterm_stops_like_ctrl_c() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "resilient_tx", "encode", "-", "-o", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(3)  # it now blocks reading standard input
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert err.decode().strip() == "resilient-tx: terminated"


def test_decompression_bomb_is_one_line(tmp_path) -> None:
    from PIL import Image

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 MP, a few kB on disk
    done = _cli("encode", str(bomb), "-o", str(tmp_path / "x.rtx"))
    err = done.stderr.decode().strip()
    assert done.returncode == 2 and err.startswith("resilient-tx: error:") and "\n" not in err
