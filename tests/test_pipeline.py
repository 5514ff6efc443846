"""Sender/Receiver steps shared by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import pytest
import torch

from resilient_tx.errors import InputError
from resilient_tx.inpaint import ArInpainter, MimInpainter, NeighborInpainter
from resilient_tx.pipeline import Receiver, fec_profile
from resilient_tx.zoo import get_model


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_ar_receiver_falls_back_to_mim_where_no_prior_is_shipped(capsys) -> None:
    rx = Receiver("ar", torch.device("cpu"))
    assert isinstance(rx._inpainter(get_model("low")), ArInpainter)
    assert capsys.readouterr().err == ""
    assert isinstance(rx._inpainter(get_model("low-k64")), MimInpainter)
    assert "inpainted with the MIM instead" in capsys.readouterr().err


def test_other_inpainters_are_used_as_named() -> None:
    rx = Receiver("neighbor", torch.device("cpu"))
    assert isinstance(rx._inpainter(get_model("low-k64")), NeighborInpainter)


def test_fec_profile_names() -> None:
    assert fec_profile("strong").name == "strong"
    assert fec_profile("for_loss:0.3").loss_rate == 0.3
    with pytest.raises(InputError, match="loss rate"):
        fec_profile("for_loss:lots")
