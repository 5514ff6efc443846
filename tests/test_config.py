"""YAML run configs (resilient_tx.config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from resilient_tx import config as config_module
from resilient_tx.config import (
    ArConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
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
        ("model:\n  downsample: 12\n", "downsample must be 8, 16 or 32, got 12"),
        ("model:\n  latent_dim: 30\n", "latent_dim must be a positive multiple of num_subvectors"),
        ("model:\n  num_subvectors: 0\n", "num_subvectors"),
        ("model:\n  codebook_size: 1\n", r"codebook_size must be in \[2, 4096\]"),
        ("model:\n  codebook_size: 5000\n", r"codebook_size must be in \[2, 4096\]"),
        ("model:\n  downsample: 32\n", "widths needs 4 entries for downsample=32"),
        ("model:\n  stages: 0\n", "stages must be >= 1"),
        ("model:\n  widths: 5\n", "model.widths: expected tuple"),
        ("train:\n  weight_storage: int4\n", "weight_storage must be fp16, fp32 or int8"),
        ("ar:\n  window: 1\n", r"ar.window must be in \[2, 64\]"),
        ("ar:\n  dim: 10\n  heads: 4\n", "ar.dim must be a positive multiple of ar.heads"),
        ("ar:\n  max_mask_ratio: 1.0\n", r"ar.max_mask_ratio must be in \[0, 1\)"),
        ("ar:\n  steps: -1\n", "ar.steps must be >= 0"),
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


def test_train_values_are_type_checked(tmp_path: Path) -> None:
    try:
        run = load_run_config(write(tmp_path, "train:\n  lr: 1e-3\n"))
    except ConfigError:
        return
    assert isinstance(run.train.lr, float)


def test_unknown_override_is_config_error() -> None:
    with pytest.raises(ConfigError):
        load_run_config(None, {"stepz": 1})
