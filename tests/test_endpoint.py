"""Whole-image Sender/Receiver steps (resilient_tx.resilience.endpoint)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient_tx.app.demo import sample_path
from resilient_tx.codec.inpaint import ArInpainter, MimInpainter, NeighborInpainter
from resilient_tx.config import SenderConfig
from resilient_tx.errors import InputError, ResilientTxError
from resilient_tx.images import load_rgb
from resilient_tx.resilience.collector import Collector
from resilient_tx.resilience.endpoint import Receiver, Sender
from resilient_tx.resilience.packet import KEYED_FLAG, Packet
from resilient_tx.zoo.registry import get_model


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


def test_stage_count_knows_the_shipped_models_only() -> None:
    rx = Receiver("mim", torch.device("cpu"))
    assert rx.stage_count(get_model("low").model_id) == get_model("low").cfg.stages
    assert rx.stage_count(get_model("low-k16").model_id) == get_model("low-k16").cfg.stages
    assert rx.stage_count(b"\x00" * 8) is None


# ----------------------------------------------------------------------------- fuzzing
# "The receiver never crashes on any packet": CRC-valid packets with any header the wire
# format can carry go through the real Collector and Receiver.finish. The only exception
# allowed is ResilientTxError (e.g. a model this receiver does not have), which recv
# reports as a skipped image; anything else would kill `resilient-tx recv`.

_FUZZ_IMAGE_ID = 77


@pytest.fixture(scope="module")
def genuine() -> list[Packet]:
    from resilient_tx.app.demo import sample_path
    from resilient_tx.config import SenderConfig
    from resilient_tx.images import load_rgb
    from resilient_tx.resilience.endpoint import Sender

    image = load_rgb(sample_path())[:40, :72]
    sender = Sender(SenderConfig(fec="light", max_packet=120), torch.device("cpu"))
    return list(sender.packets(image, _FUZZ_IMAGE_ID).packets)


@pytest.fixture(scope="module")
def receiver() -> Receiver:
    return Receiver("mim", torch.device("cpu"))


def _mutant(draw, p: Packet) -> Packet:
    n = draw(st.integers(1, 12))
    k = draw(st.integers(1, n))
    fields = {
        "stage": draw(st.sampled_from([p.stage, 1, 5, 6, 255])),
        "shape": {"k": k, "n": n, "index": draw(st.integers(0, n - 1))},  # valid together
        "width": draw(st.sampled_from([p.width, 1, 17, 200])),
        "height": draw(st.sampled_from([p.height, 1, 33])),
        "flags": draw(st.integers(0, 255)) & ~KEYED_FLAG,
        "rate_point": draw(st.integers(0, 255)),
        "payload": draw(st.sampled_from([p.payload, b"", p.payload[:3]]) | st.binary(max_size=90)),
        "model_id": draw(st.sampled_from([p.model_id, get_model("high").model_id,
                                          get_model("low-k16").model_id, b"\x00" * 8])),
    }
    keep = draw(st.sets(st.sampled_from(sorted(fields)), max_size=3))
    changes = {f: fields[f] for f in keep if f != "shape"}
    return replace(p, **changes, **(fields["shape"] if "shape" in keep else {}))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_receiver_never_crashes_on_crc_valid_packets(genuine, receiver, data) -> None:
    chosen = data.draw(st.lists(st.sampled_from(genuine), max_size=len(genuine)))
    packets = [_mutant(data.draw, p) if data.draw(st.booleans()) else p for p in chosen]
    collector = Collector(receiver.stage_count, deadline=0.1)
    due = [d for d in (collector.feed(bytes(p), "peer", 0.0) for p in packets) if d]
    due += collector.flush()
    for d in due:
        try:
            rec = receiver.finish(d)
        except ResilientTxError:
            continue  # reported and skipped by recv
        assert rec.image.shape == (d.assembler.height, d.assembler.width, 3)
        assert rec.image.dtype == np.uint8


def test_a_byte_budget_picks_the_rate_point_with_the_parity() -> None:
    from resilient_tx.eval.metrics import psnr

    crop = load_rgb(sample_path())[:64, :96]
    budgets, rates = [600, 1500], []
    for budget in budgets:
        sender = Sender(SenderConfig(budget=budget, fec="for_loss:0.2"), torch.device("cpu"),
                        quality=psnr)
        out = sender.packets(crop, 1, "crop.png")
        plan = sender.last_plan
        assert plan is not None and plan.budget == budget and plan.expected_lost is not None
        assert out.total_bytes <= budget
        rates.append(plan.rate)
    assert rates[0] != rates[1]  # more bytes buy a better rate point, not just parity
    with pytest.raises(InputError, match="no rate point fits"):
        Sender(SenderConfig(budget=200), torch.device("cpu"), quality=psnr).packets(crop, 2)
    with pytest.raises(InputError, match="quality"):
        Sender(SenderConfig(budget=2000), torch.device("cpu"))
    light = Sender(SenderConfig(budget=6000, fec="light"), torch.device("cpu"), quality=psnr)
    with pytest.raises(InputError, match="budget needs"):
        light.packets(crop, 3)
