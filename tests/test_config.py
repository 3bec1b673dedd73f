"""``params.yaml`` parsing (unknown keys and wrong types are errors naming the key), params + option
precedence through the CLI, and ``--help`` of every registered command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer.main
from conftest import assert_user_error, make_dataset, run_cli, tree

from smiling_pipeline import config as C
from smiling_pipeline.cli import app
from smiling_pipeline.errors import UserError

pytestmark = pytest.mark.timeout(60)


def load(tmp_path: Path, text: str) -> C.Params:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return C.load_params(path)


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(UserError) as info:
        load(tmp_path, text)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- load_params ---------------------------------------------------------------------------------


def test_defaults_without_a_params_file(tmp_path):
    assert not (tmp_path / "params.yaml").exists()  # cwd is tmp_path
    assert C.load_params(None) == C.Params()


def test_empty_file_gives_defaults(tmp_path):
    assert load(tmp_path, "") == C.Params()
    assert load(tmp_path, "# only a comment\n") == C.Params()


def test_unknown_key_is_named(tmp_path):
    message = error_of(tmp_path, "train:\n  steps: 10\n  stepz: 5\n")
    assert "train.stepz" in message and "unknown" in message
    assert "train.steps" not in message.replace("train.stepz", "")


def test_all_unknown_keys_are_named(tmp_path):
    message = error_of(tmp_path, "trian:\n  steps: 1\ningest:\n  datset: x\n  every: 2\n")
    assert "trian" in message and "ingest.datset" in message


@pytest.mark.parametrize(
    "text, field",
    [
        ("train:\n  steps: many\n", "train.steps"),
        ("train:\n  steps: 5.5\n", "train.steps"),
        ("train:\n  lr: abc\n", "train.lr"),
        ("train:\n  net: [32, x]\n", "train.net"),
        ("runtime:\n  threads: '2'\n", "runtime.threads"),
        ("runtime:\n  precision: half\n", "runtime.precision"),
        ("score:\n  normalize: 1\n", "score.normalize"),
        ("ingest:\n  with_actions: maybe\n", "ingest.with_actions"),
        ("ingest:\n  num_states: lots\n", "ingest.num_states"),
        ("pretrain:\n  lr: null\n", "pretrain.lr"),
    ],
)
def test_wrong_type_names_the_field(tmp_path, text, field):
    message = error_of(tmp_path, text)
    assert field in message, message


def test_an_unregistered_algorithm_is_refused_naming_the_registered_ones(tmp_path):
    """``train.algorithm`` is checked against the registry (not a literal in config.py) with the other
    rules on final settings."""
    from smiling_pipeline import algorithms

    p = load(tmp_path, "train:\n  algorithm: ppo2\n")
    with pytest.raises(UserError, match="train.algorithm must be one of smiling, dac, bc, iqlearn, got 'ppo2'"):
        algorithms.check(p)



@pytest.mark.parametrize(
    "text, field",
    [
        ("train:\n  steps: true\n", "train.steps"),
        ("train:\n  lr: false\n", "train.lr"),
    ],
)
def test_booleans_are_not_numbers(tmp_path, text, field):
    message = error_of(tmp_path, text)
    assert field in message, message


def test_section_must_be_a_mapping(tmp_path):
    assert "train" in error_of(tmp_path, "train: [1, 2]\n")


def test_float_fields_accept_exponents_and_ints(tmp_path):
    # YAML 1.1 reads 5e-3 (no dot) as a string and 1 as an int; both must become floats
    p = load(tmp_path, "pretrain:\n  lr: 5e-3\n  weight_decay: 0\ntrain:\n  lr: 1\ncost:\n  reward_std: 1.5E-1\n"
                       "score:\n  beta_start: 1e-4\n")
    assert p.pretrain.lr == 5e-3 and isinstance(p.pretrain.lr, float)
    assert p.pretrain.weight_decay == 0.0 and isinstance(p.pretrain.weight_decay, float)
    assert p.train.lr == 1.0 and isinstance(p.train.lr, float)
    assert p.cost.reward_std == pytest.approx(0.15)
    assert p.score.beta_start == 1e-4


def test_values_are_read(tmp_path):
    p = load(tmp_path, "train:\n  net: [32, 16]\n  learner_window: null\n  algorithm: dac\n  rl: td3\n"
                       "ingest:\n  num_states: null\n  with_actions: true\n")
    assert p.train.net == (32, 16) and p.train.learner_window is None and p.train.algorithm == "dac" and p.train.rl == "td3"
    assert p.ingest.num_states is None and p.ingest.with_actions is True
    assert p.pretrain == C.PretrainConfig()  # untouched sections keep their defaults


def test_invalid_yaml_is_one_line(tmp_path):
    message = error_of(tmp_path, "train:\n  steps: [1, 2\n")
    assert "not valid YAML" in message


def test_top_level_must_be_a_mapping(tmp_path):
    assert "mapping" in error_of(tmp_path, "- a\n- b\n")


def test_missing_params_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        C.load_params(tmp_path / "nope.yaml")


def test_override_skips_unset_options():
    cfg = C.IngestConfig()
    assert C.override(cfg, every=None, seed=None) is cfg
    new = C.override(cfg, every=3, with_actions=False, num_states=None)
    assert (new.every, new.with_actions, new.num_states) == (3, False, cfg.num_states)


# --- through the CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("train:\n  stepz: 5\n", "train.stepz"),
        ("ingest:\n  every: often\n", "ingest.every"),
        ("pretrain:\n  lr: fast\n", "pretrain.lr"),
        ("ingest: [\n", "not valid YAML"),
        ("- 1\n", "mapping"),
    ],
)
def test_cli_bad_params_file(tmp_path, text, fragment):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    before = tree(tmp_path)
    line = assert_user_error(run_cli(["ingest", "--params", bad, "--workdir", tmp_path / "w"]), fragment)
    assert str(bad) in line
    assert tree(tmp_path) == before


def test_cli_unknown_precision(tmp_path):
    assert_user_error(run_cli(["pretrain", "--precision", "half", "--workdir", tmp_path / "w"]), "precision", "half")
    assert tree(tmp_path) == set()


def test_precision_resolution():
    import torch

    from smiling_pipeline.runtime import native_bfloat16, resolve_precision

    cpu = torch.device("cpu")
    assert resolve_precision("float32", cpu) is torch.float32
    assert resolve_precision("bfloat16", cpu) is torch.bfloat16
    assert resolve_precision("auto", cpu) is (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    with pytest.raises(UserError, match="precision"):
        resolve_precision("fp8", cpu)


def test_cli_missing_params_file(tmp_path):
    assert_user_error(run_cli(["ingest", "--params", tmp_path / "absent.yaml"]), "absent.yaml", "not found")
    assert tree(tmp_path) == set()


@pytest.fixture(scope="module")
def pendulum_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pendulum-store")
    make_dataset(root, "smiling/pend/expert-v0", episodes=5, max_steps=20)
    return root


def test_cli_reads_params_yaml_in_the_working_folder(monkeypatch, tmp_path, pendulum_store):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(pendulum_store))
    (tmp_path / "params.yaml").write_text("runtime:\n  workdir: out\ningest:\n  dataset: smiling/pend\n  num_states: 7\n"
                                          "  val_fraction: 0.3\n")
    run = run_cli(["ingest"])
    assert run.exit_code == 0, run.output
    with np.load(tmp_path / "out" / "ingest" / "expert.npz") as f:
        assert f["train"].shape == (5, 4) and f["val"].shape == (2, 4)
    meta = json.loads((tmp_path / "out" / "ingest" / "meta.json").read_text())
    assert meta["dataset_id"] == "smiling/pend/expert-v0" and meta["states_available"] > 7

    # options override single params fields, the rest still comes from params.yaml
    run = run_cli(["ingest", "--num-states", "4"])
    assert run.exit_code == 0, run.output
    with np.load(tmp_path / "out" / "ingest" / "expert.npz") as f:
        assert f["train"].shape == (3, 4) and f["val"].shape == (1, 4)


def test_cli_uses_params_minari_root_without_the_environment_variable(monkeypatch, tmp_path, pendulum_store):
    monkeypatch.delenv("MINARI_DATASETS_PATH")
    (tmp_path / "params.yaml").write_text(f"runtime:\n  minari_root: {pendulum_store}\n  workdir: out\n")
    run = run_cli(["ingest", "--dataset", "smiling/pend/expert"])
    assert run.exit_code == 0, run.output
    assert (tmp_path / "out" / "ingest" / "expert.npz").is_file()


# --- help ----------------------------------------------------------------------------------------


COMMANDS = sorted(typer.main.get_command(app).commands)


def test_expected_commands_are_registered():
    assert {"datasets", "demos", "ingest"} <= set(COMMANDS)


def test_top_level_help():
    run = run_cli(["--help"])
    assert run.exit_code == 0, run.output
    for name in COMMANDS:
        assert name in run.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help(command):
    run = run_cli([command, "--help"])
    assert run.exit_code == 0, run.output
    assert "Usage" in run.stdout and command in run.stdout
    assert run.stderr == ""
