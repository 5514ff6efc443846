"""Files and packets made before the package redesign still decode to the same tokens.

``tests/fixtures/wire_v1`` was written by the code at commit 70099c1 (the generator is kept
beside it as ``make_fixture_pre_redesign.py.txt``): a 128 x 192 crop of the bundled sample,
coded at ``low`` and ``low-k64`` as an ``.rtx`` file and as packets (context depth 2, small
packets, ``light`` FEC), with the receiver's outcome under two fixed loss patterns.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from resilient_tx.codec.container import EncodedImage
from resilient_tx.codec.image_codec import Codec
from resilient_tx.resilience import fec
from resilient_tx.resilience.packet import Packet
from resilient_tx.resilience.packetizer import Packetizer, spread_stages
from resilient_tx.resilience.reassembly import ImageAssembler, decode
from resilient_tx.zoo.registry import get_model

FIXTURE = Path(__file__).parent / "fixtures" / "wire_v1"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
RATES = sorted(EXPECTED)


def _packets(rate: str) -> list[bytes]:
    blob = (FIXTURE / f"{rate}_packets.bin").read_bytes()
    out, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<H", blob, pos)
        out.append(blob[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


@pytest.fixture(scope="module", params=RATES)
def case(request: pytest.FixtureRequest) -> tuple[str, Codec, torch.Tensor]:
    rate = request.param
    codec = Codec(get_model(rate))
    tokens = torch.from_numpy(np.load(FIXTURE / f"{rate}_tokens.npy").astype(np.int64))
    return rate, codec, tokens


def test_model_ids_unchanged(case) -> None:
    rate, codec, _ = case
    assert codec.model.model_id.hex() == EXPECTED[rate]["model_id"]


def test_rtx_decodes_to_the_same_tokens_and_reencodes_byte_identically(case) -> None:
    rate, codec, tokens = case
    blob = (FIXTURE / f"{rate}.rtx").read_bytes()
    enc = EncodedImage.parse(blob)
    assert bytes(enc) == blob
    assert torch.equal(codec.decode_tokens(enc.stages, *tokens.shape[1:]), tokens)
    again = EncodedImage(enc.model_id, enc.width, enc.height, codec.encode_tokens(tokens))
    assert bytes(again) == blob


def test_packetizer_reproduces_the_packets_byte_for_byte(case) -> None:
    rate, codec, tokens = case
    pk = Packetizer(codec, fec.get_profile("light"), rate_point=7, max_packet=120,
                    context_depth=2, wire_version=1)
    plans = pk.plan_stages(tokens)
    h, w = 128, 192
    first = Packet.parse(_packets(rate)[0])
    assert (first.width, first.height) == (w, h)
    ours = spread_stages([pk._stage_packets(p, first.image_id, w, h) for p in plans])
    assert [bytes(p) for p in ours] == _packets(rate)


@pytest.mark.parametrize("drop", [4, 2])
def test_receiver_outcome_unchanged_under_fixed_loss(case, drop: int) -> None:
    rate, codec, tokens = case
    kept = [Packet.parse(b) for i, b in enumerate(_packets(rate)) if i % drop != drop - 1]
    asm = ImageAssembler(kept[0])
    for p in kept[1:]:
        asm.add(p)
    exact = decode(codec, asm)
    got, known, r = exact.tokens, exact.known, exact.report
    want = EXPECTED[rate][f"drop{drop}"]
    assert np.array_equal(known.numpy(), np.load(FIXTURE / f"{rate}_drop{drop}_known.npy"))
    assert torch.equal(got[:, known], tokens[:, known])
    assert (len(kept), r.tokens_decoded, r.packets_recovered, r.complete_stages,
            r.bytes_unusable) == (want["kept"], want["tokens_decoded"],
                                  want["packets_recovered"], want["complete_stages"],
                                  want["bytes_unusable"])
