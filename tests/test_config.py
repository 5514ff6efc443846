"""Config dataclasses, the one coercion rule and the YAML + flags loader (resilient_tx.config)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from resilient_tx import config as config_module
from resilient_tx.config import (
    DEFAULT_MAX_PACKET,
    DEFAULT_PORT,
    ArConfig,
    FieldError,
    ModelConfig,
    ReceiverConfig,
    RunConfig,
    SenderConfig,
    TrainConfig,
    coerce,
    field_types,
    load_config,
    load_run_config,
    model_config_from_dict,
)
from resilient_tx.errors import ConfigError, InputError

CONFIG_DIR = Path(config_module.__file__).parent / "configs"


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_none_gives_defaults() -> None:
    run = load_run_config(None)
    assert isinstance(run, RunConfig)
    assert run.model == ModelConfig()
    assert run.train == TrainConfig()
    assert run == RunConfig()


@pytest.mark.parametrize("text", ["", "# only a comment\n", "model:\ntrain:\n", "model: {}\n"])
def test_empty_files_and_sections_give_defaults(tmp_path: Path, text: str) -> None:
    assert load_run_config(write(tmp_path, text)) == RunConfig()


def test_yaml_maps_onto_dataclasses(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        """
model:
  downsample: 8
  num_subvectors: 2
  codebook_size: 64
  latent_dim: 32
  widths: [16, 24]
  mim_mlp_ratio: 3.0
  stages: 3
train:
  steps: 12
  lr: 0.0005
  batch_size: 2
  seed: 9
""",
    )
    run = load_run_config(p)
    assert run.model.downsample == 8
    assert run.model.num_subvectors == 2
    assert run.model.codebook_size == 64
    assert run.model.latent_dim == 32
    assert run.model.widths == (16, 24)
    assert isinstance(run.model.widths, tuple)  # lists become tuples: hashable, frozen
    assert run.model.mim_mlp_ratio == 3.0
    assert run.model.stages == 3
    assert run.model.levels == 2
    assert run.train.steps == 12 and run.train.lr == 0.0005
    assert run.train.batch_size == 2 and run.train.seed == 9
    # untouched keys keep their defaults
    assert run.model.lookup_dim == ModelConfig().lookup_dim
    assert run.train.commitment == TrainConfig().commitment
    hash(run)  # frozen dataclasses with tuples hash


def test_only_one_section(tmp_path: Path) -> None:
    run = load_run_config(write(tmp_path, "train:\n  steps: 3\n"))
    assert run.model == ModelConfig() and run.train.steps == 3


def test_ar_section_maps_onto_ar_config(tmp_path: Path) -> None:
    run = load_run_config(write(tmp_path, "ar:\n  window: 8\n  steps: 10\n  lr: 1e-4\n"))
    assert run.ar == ArConfig(window=8, steps=10, lr=1e-4)
    assert run.model == ModelConfig() and run.train == TrainConfig()
    shipped = Path(__file__).resolve().parents[1] / "resilient_tx" / "configs" / "ar.yaml"
    assert load_run_config(shipped).ar.steps > 0


def test_overrides_apply_to_train(tmp_path: Path) -> None:
    run = load_run_config(write(tmp_path, "train:\n  steps: 3\n"), {"steps": 5, "seed": 2})
    assert run.train.steps == 5 and run.train.seed == 2


def test_config_is_frozen() -> None:
    run = load_run_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        run.model.downsample = 8  # type: ignore[misc]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("model:\n  downsampel: 8\n", r"model: unknown key\(s\) downsampel"),
        ("train:\n  stepz: 1\n  lrr: 2\n", r"train: unknown key\(s\) lrr, stepz"),
        ("model: {}\ndata:\n  path: x\n", r"unknown section\(s\) data"),
        ("- model\n- train\n", "top level must be a mapping"),
        ("42\n", "top level must be a mapping"),
        ("model: [1, 2]\n", "model: expected a mapping, got list"),
        ("train: 5\n", "train: expected a mapping, got int"),
        ("model: {downsample: 8\n", "not valid YAML"),
        ("model:\n\tdownsample: 8\n", "not valid YAML"),
        ("model:\n  downsample: 12\n", r"model\.downsample: must be 8, 16 or 32, got 12"),
        ("model:\n  latent_dim: 30\n",
         r"model\.latent_dim: must be a positive multiple of num_subvectors"),
        ("model:\n  num_subvectors: 0\n", r"model\.num_subvectors: must be >= 1"),
        ("model:\n  codebook_size: 1\n", r"codebook_size: must be in \[2, 4096\]"),
        ("model:\n  codebook_size: 5000\n", r"codebook_size: must be in \[2, 4096\]"),
        ("model:\n  downsample: 32\n", "model.widths: needs 4 entries for downsample=32"),
        ("model:\n  stages: 0\n", "model.stages: must be >= 1"),
        ("model:\n  widths: 5\n", "model.widths: expected a list of int, got 5"),
        ("model:\n  widths: [8, 8.5, 8]\n", "model.widths: expected int, got 8.5"),
        ("train:\n  weight_storage: int4\n",
         "train.weight_storage: must be one of fp16, fp32, int8, got 'int4'"),
        ("ar:\n  window: 1\n", r"ar\.window: must be in \[2, 64\]"),
        ("ar:\n  dim: 10\n  heads: 4\n", r"ar\.dim: must be a positive multiple of heads \(4\)"),
        ("ar:\n  max_mask_ratio: 1.0\n", r"ar\.max_mask_ratio: must be in \[0, 1\)"),
        ("ar:\n  steps: -1\n", "ar.steps: must be >= 0"),
        ("train:\n  lr: fast\n", "train.lr: expected float, got 'fast'"),
        ("train:\n  steps: true\n", "train.steps: expected int, got True"),
        ("ar:\n  windoww: 8\n", r"ar: unknown key\(s\) windoww"),
    ],
)
def test_invalid_configs_raise_config_error(tmp_path: Path, text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern) as info:
        load_run_config(write(tmp_path, text))
    assert isinstance(info.value, InputError)  # the CLI reports it as a user error
    assert "\n" not in str(info.value).split("(")[0]  # the lead of the message is one line


def test_error_names_the_file(tmp_path: Path) -> None:
    p = write(tmp_path, "extra: 1\n", name="weird-name.yaml")
    with pytest.raises(ConfigError, match="weird-name.yaml"):
        load_run_config(p)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_run_config(missing)
    assert "nope.yaml" in str(info.value)


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_run_config(tmp_path)


def test_model_config_from_dict() -> None:
    cfg = model_config_from_dict({"downsample": 8, "widths": [4, 4]})
    assert cfg.downsample == 8 and cfg.widths == (4, 4)
    with pytest.raises(ConfigError, match="unknown key"):
        model_config_from_dict({"bogus": 1})
    with pytest.raises(ConfigError):
        model_config_from_dict({"downsample": 12})


def test_direct_construction_validates() -> None:
    with pytest.raises(ConfigError):
        ModelConfig(downsample=12)
    with pytest.raises(ConfigError):
        ModelConfig(latent_dim=10, num_subvectors=4)


@pytest.mark.parametrize("ds,levels", [(8, 2), (16, 3), (32, 4)])
def test_levels(ds: int, levels: int) -> None:
    assert ModelConfig(downsample=ds, widths=(8,) * 4).levels == levels


def test_raw_bits_per_token() -> None:
    assert ModelConfig().raw_bits_per_token == 4 * 8
    assert ModelConfig(num_subvectors=8, codebook_size=256).raw_bits_per_token == 64
    assert ModelConfig(codebook_size=100, latent_dim=8, num_subvectors=2).raw_bits_per_token == 14


# --------------------------------------------------------------------------- shipped configs


@pytest.mark.parametrize("name,m", [("low", 4), ("high", 8)])
def test_shipped_configs_load(name: str, m: int) -> None:
    path = CONFIG_DIR / f"{name}.yaml"
    assert path.is_file()
    run = load_run_config(path)
    assert run.model.downsample == 16
    assert run.model.num_subvectors == m
    assert isinstance(run.train.lr, float) and run.train.lr > 0
    assert run.train.steps > 0 and run.train.batch_size > 0


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("text", ["model: 0\n", "train: false\n", "model: ''\n", "train: []\n"])
def test_falsy_non_mapping_section_is_rejected(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(write(tmp_path, text))


def test_yaml_11_exponent_strings_are_floats(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 1e-3 as the string "1e-3"; float fields take it.
    run = load_run_config(write(tmp_path, "train:\n  lr: 1e-3\n  min_lr: 5E-5\n"))
    assert run.train.lr == 1e-3 and isinstance(run.train.lr, float)
    assert run.train.min_lr == 5e-5


def test_unknown_override_is_config_error() -> None:
    with pytest.raises(ConfigError):
        load_run_config(None, {"stepz": 1})


# --------------------------------------------------------------------------- the one rule

finite = st.floats(allow_nan=False, allow_infinity=False)
ints = st.integers(-(2**40), 2**40)
# The documented spelling of a number in a float field's string: YAML 1.2 / JSON decimals.
DECIMAL = re.compile(r"[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?", re.ASCII)
not_numbers = st.text().filter(lambda t: not DECIMAL.fullmatch(t))


@given(finite)
def test_float_fields_take_floats_and_their_decimal_strings(x: float) -> None:
    assert coerce(float, x) == x
    assert coerce(float, repr(x)) == x  # repr writes 1e-05, 1.5e+300, 0.1 ...
    assert coerce(float, f"{x:e}") == float(f"{x:e}")
    assert coerce(float | None, repr(x)) == x


@given(ints)
def test_float_fields_take_ints_as_floats_and_int_fields_keep_them(n: int) -> None:
    as_float = coerce(float, n)
    assert as_float == float(n) and type(as_float) is float
    assert coerce(int, n) == n and type(coerce(int, n)) is int
    assert coerce(float, str(n)) == float(n)


@given(not_numbers)
def test_float_fields_refuse_other_strings(text: str) -> None:
    with pytest.raises(FieldError, match="expected float"):
        coerce(float, text)


@given(st.one_of(finite, st.text(), st.booleans(), st.none(), st.lists(ints)))
def test_int_fields_take_only_ints(value: Any) -> None:
    with pytest.raises(FieldError, match="expected int"):
        coerce(int, value)


@given(st.one_of(ints, finite, st.text(), st.none()))
def test_bool_fields_take_only_true_or_false(value: Any) -> None:
    with pytest.raises(FieldError, match="expected true or false"):
        coerce(bool, value)


@given(st.booleans())
def test_bools_are_never_numbers(flag: bool) -> None:
    assert coerce(bool, flag) is flag
    for kind in (int, float, str):
        with pytest.raises(FieldError):
            coerce(kind, flag)


@given(st.text(), st.sampled_from(["udp", "webrtc"]))
def test_literal_fields_take_exactly_their_values(text: str, choice: str) -> None:
    hint = Literal["udp", "webrtc"]
    assert coerce(hint, choice) == choice
    if text not in ("udp", "webrtc"):
        with pytest.raises(FieldError, match="must be one of udp, webrtc"):
            coerce(hint, text)


@given(st.lists(ints, max_size=5))
def test_tuple_fields_take_lists(values: list[int]) -> None:
    assert coerce(tuple[int, ...], values) == tuple(values)
    assert coerce(tuple[int, ...], tuple(values)) == tuple(values)


def _valid_sender() -> st.SearchStrategy[SenderConfig]:
    name = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1)
    return st.builds(
        SenderConfig, to=st.none() | name, transport=st.sampled_from(["udp", "webrtc"]),
        rate=name, fec=name, context_depth=st.integers(0, 7),
        pace=st.none() | st.floats(0.1, 1e4), sim_loss=st.floats(0, 0.9),
        loss_model=st.sampled_from(["bernoulli", "gilbert"]), burst=st.floats(1, 100),
        seed=st.integers(0, 2**31), max_packet=st.integers(64, 1200),
        threads=st.integers(0, 64))


@given(_valid_sender())
def test_any_sender_config_survives_a_yaml_round_trip(cfg: SenderConfig) -> None:
    data = yaml.safe_load(yaml.safe_dump({"send": dataclasses.asdict(cfg)}))
    assert load_config(SenderConfig, None, data["send"]) == cfg  # same rule as a file's


@pytest.mark.parametrize("name", sorted(field_types(ReceiverConfig)))
def test_null_means_the_default(tmp_path: Path, name: str) -> None:
    p = write(tmp_path, f"recv:\n  {name}: null\n")
    assert load_config(ReceiverConfig, p, {name: None}) == ReceiverConfig()


def test_every_config_class_uses_the_rule_on_construction() -> None:
    assert TrainConfig(lr="1e-3").lr == 1e-3  # type: ignore[arg-type]
    assert ModelConfig(widths=[8, 8, 8]).widths == (8, 8, 8)  # type: ignore[arg-type]
    assert SenderConfig(pace=20).pace == 20.0
    with pytest.raises(FieldError, match="transport: must be one of udp, webrtc, got 'tcp'"):
        SenderConfig(transport="tcp")  # type: ignore[arg-type]
    with pytest.raises(FieldError, match="json: expected true or false"):
        ReceiverConfig(json=1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- send / recv


def test_role_defaults_are_the_documented_ones() -> None:
    assert SenderConfig().rate == "low" and SenderConfig().context_depth == 2
    assert SenderConfig().max_packet == DEFAULT_MAX_PACKET == 1200
    assert ReceiverConfig().listen == f"0.0.0.0:{DEFAULT_PORT}" == "0.0.0.0:5004"
    assert ReceiverConfig().deadline == 0.5


def test_flags_win_over_the_file_which_wins_over_defaults(tmp_path: Path) -> None:
    p = write(tmp_path, "send:\n  rate: high\n  seed: 3\n  pace: 20\nrecv:\n  count: 2\n")
    cfg = load_config(SenderConfig, p, {"seed": 9, "fec": None})
    assert (cfg.rate, cfg.seed, cfg.pace, cfg.fec) == ("high", 9, 20.0, "auto")
    assert load_config(ReceiverConfig, p).count == 2


@pytest.mark.parametrize("text, flags, needle", [
    ("send:\n  threads: two\n", {}, "{p}: send.threads: expected int, got 'two'"),
    ("send:\n  colour: red\n", {}, "{p}: send: unknown key(s) colour"),
    ("sendd:\n  rate: low\n", {}, "{p}: unknown section(s) sendd"),
    ("send: [1]\n", {}, "{p}: send: expected a mapping, got list"),
    ("", {"context_depth": -1}, "--context-depth: must be >= 0, got -1"),
    ("send:\n  context_depth: -1\n", {}, "{p}: send.context_depth: must be >= 0, got -1"),
])
def test_send_errors_name_where_the_value_came_from(tmp_path: Path, text: str,
                                                    flags: dict[str, Any], needle: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(SenderConfig, p, flags)
    assert str(info.value) == needle.format(p=p)


def test_recv_range_checks_name_the_flag_or_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^--deadline: must be > 0 seconds, got 0$"):
        load_config(ReceiverConfig, None, {"deadline": 0})
    p = write(tmp_path, "recv:\n  count: -1\n")
    with pytest.raises(ConfigError, match=r"recv\.count: must be >= 0 \(0 = run forever\)"):
        load_config(ReceiverConfig, p)


def test_model_dict_errors_name_the_section() -> None:
    with pytest.raises(ConfigError, match="^model.downsample: expected int, got '16'$"):
        model_config_from_dict({"downsample": "16"})
