"""The ``derive-rate`` command: writes a usable k-means rate point, refuses bad input."""

from __future__ import annotations

import pytest

from resilient_tx.app.cli import main
from resilient_tx.images import save_rgb
from resilient_tx.zoo.registry import get_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_cli_derive_rate(tmp_path, sample_crop, capsys) -> None:
    data = tmp_path / "train"
    save_rgb(sample_crop, data / "a.png")
    save_rgb(sample_crop[:, ::-1].copy(), data / "b.png")
    out = tmp_path / "low-k8.pt"
    assert main(["derive-rate", "--base", "low", "--k", "8", "--data", str(data),
                 "-o", str(out), "--threads", "1"]) == 0
    assert "low-k8" in capsys.readouterr().out
    model = get_model(str(out))  # a derived file by path, like --model does
    assert model.cfg.codebook_size == 8
    # 2 images and their mirror images, 8 x 10 tokens each, per sub-quantizer.
    assert model.marginals.sum(1).tolist() == [4 * 80] * 4
    rtx = tmp_path / "x.rtx"
    assert main(["encode", str(tmp_path / "train" / "a.png"), "-o", str(rtx),
                 "--model", str(out), "--threads", "1"]) == 0
    assert main(["decode", str(rtx), "-o", str(tmp_path / "x.png"), "--model", str(out)]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["--k", "256"], "k must be"),
    (["--k", "1"], "k must be"),
    (["--k", "8", "--data", "/no/such/dir"], "not found"),
    (["--k", "8", "4", "-o", "x.pt"], "single --k"),
    (["--base", "no-such-rate", "--k", "8"], "not a shipped rate"),
    (["--base", "no-such-rate", "--k", "8", "-o", "x.pt"], "unknown rate"),
    (["--base", "low-k64", "--k", "8", "-o", "x.pt"], "itself a derived"),
])
def test_cli_derive_rate_errors(capsys, argv, message) -> None:
    assert main(["derive-rate", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_derive_rate_refuses_kodak(tmp_path, sample_crop, capsys) -> None:
    save_rgb(sample_crop, tmp_path / "kodak" / "kodim99.png")
    assert main(["derive-rate", "--k", "8", "--data", str(tmp_path / "kodak"),
                 "-o", str(tmp_path / "x.pt")]) == 2
    assert "Kodak" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_cli_derive_rate_says_where_to_get_training_images(tmp_path, monkeypatch,
                                                           capsys) -> None:
    # A fresh clone has no ../shared/data/bsds500: the default is missing.
    from resilient_tx.app import derive_rate

    monkeypatch.setattr(derive_rate, "DEFAULT_DATA", tmp_path / "bsds500")
    assert main(["derive-rate", "--k", "8", "-o", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "BSDS500" in err and "--data DIR" in err
    assert not (tmp_path / "x.pt").exists()
