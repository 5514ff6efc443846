"""The argparse edge (resilient_tx.app.options): flags and YAML meet the config classes."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import yaml

from resilient_tx.app.cli import build_parser, main
from resilient_tx.app.demo import sample_path
from resilient_tx.app.options import add_option, config_from_args
from resilient_tx.config import ReceiverConfig, SenderConfig, field_types, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "resilient_tx/configs/transport.example.yaml"


@pytest.mark.parametrize("section, line, needle", [
    ("send", "threads: two", "send.threads: expected int, got 'two'"),
    ("send", "max_packet: 1200.5", "send.max_packet: expected int"),
    ("send", "transport: tcp", "send.transport: must be one of udp, webrtc"),
    ("send", "sim_loss: lots", "send.sim_loss: expected float"),
    ("send", "rate: 3", "send.rate: expected str, got 3"),
    ("recv", "json: 1", "recv.json: expected true or false"),
    ("recv", "inpainter: magic", "recv.inpainter: must be one of mim, ar, neighbor, none"),
    ("recv", "deadline: [1]", "recv.deadline: expected float"),
])
def test_config_values_are_checked_like_flags(tmp_path: Path, capsys, section: str,
                                              line: str, needle: str) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"{section}:\n  {line}\n  to: 127.0.0.1\n" if section == "send"
                   else f"{section}:\n  {line}\n")
    argv = (["send", str(sample_path())] if section == "send" else ["recv"])
    assert main([*argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert needle in err and str(cfg) in err
    assert "Traceback" not in err


def test_config_numbers_become_the_fields_types(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("send:\n  pace: 20\n  burst: 3\n  seed: null\n  sim_loss: 1e-1\n")
    args = build_parser().parse_args(["send", "x.png", "--config", str(cfg)])
    sent = config_from_args(SenderConfig, args)
    assert sent.pace == 20.0 and isinstance(sent.pace, float)
    assert sent.burst == 3.0 and isinstance(sent.burst, float)
    assert sent.sim_loss == 0.1  # YAML 1.1 reads 1e-1 as a string; the rule takes it
    assert sent.fec == "auto"  # untouched keys keep their defaults
    assert sent.seed == 0  # null in the file means "the default"


def test_flags_win_over_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("recv:\n  count: 3\n  json: true\n  deadline: 2\n")
    args = build_parser().parse_args(["recv", "--config", str(cfg), "--count", "5"])
    got = config_from_args(ReceiverConfig, args)
    assert (got.count, got.json, got.deadline) == (5, True, 2.0)


def test_flags_take_type_and_choices_from_the_fields() -> None:
    p = argparse.ArgumentParser()
    for name in field_types(ReceiverConfig):
        add_option(p, ReceiverConfig, name, "help")
    args = p.parse_args(["--count", "2", "--deadline", "0.25", "--json", "--ar-window", "8"])
    assert (args.count, args.deadline, args.json, args.ar_window) == (2, 0.25, True, 8)
    assert args.listen is None and args.transport is None  # unset: the file may fill them
    with pytest.raises(SystemExit):
        p.parse_args(["--inpainter", "magic"])


def test_example_config_documents_every_option() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert set(data) == {"send", "recv"}
    assert set(data["send"]) == set(field_types(SenderConfig))
    assert set(data["recv"]) == set(field_types(ReceiverConfig))
    assert load_config(ReceiverConfig, EXAMPLE) == ReceiverConfig()  # recv: the defaults
    sent = load_config(SenderConfig, EXAMPLE)
    changed = {k for k, v in dataclasses.asdict(sent).items()
               if v != getattr(SenderConfig(), k)}
    assert changed == {"to", "pace"}  # the two values an example has to fill in
