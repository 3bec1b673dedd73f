"""Input contracts: each bad setting or input the issue tracker listed gives one ``error:`` line, exit 1,
and changes nothing on disk or in MLflow."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEMOS_DATASET, assert_user_error, run_cli, tree

pytestmark = pytest.mark.timeout(600)
TINY = {
    "ingest": {"dataset": DEMOS_DATASET, "num_states": 1000},
    "score": {"hidden": 32},
    "pretrain": {"steps": 100, "eval_every": 50},
    "train": {"steps": 800, "learning_starts": 400, "iteration_steps": 400, "learner_fit_steps": 20,
              "eval_every": 400, "eval_episodes": 1, "checkpoint_every": 400, "net": [16, 16]},
}


def params(path: Path, **changes: dict) -> Path:
    data = {k: dict(v) for k, v in TINY.items()}
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, options, fragments", [
    ({"cost": {"timesteps": 0}}, [], ["cost.timesteps", ">= 1"]),  # was a division by zero in the estimator
    ({"baselines": {"bc_steps": 0}}, ["--algorithm", "bc", "--with-actions"], ["baselines.bc_steps"]),
    ({"score": {"depth": 0}}, [], ["score.depth"]),  # was a network whose first layer was its last
    ({"cost": {"reward_std": -0.1}}, [], ["cost.reward_std", "> 0"]),  # silently flipped the reward's sign
    ({"train": {"lr": float("nan")}}, [], ["train.lr", "finite"]),
    ({}, ["--steps", "300"], ["learning_starts", "below train.steps"]),  # a CLI option checked like params
    ({"train": {"algorithm": "bc"}}, [], ["BC needs expert actions"]),
    ({"train": {"algorithm": "iqlearn", "termination": "absorbing"}}, [], ["absorbing", "IQLEARN", "use env"]),
    ({}, ["--algorithm", "gail"], ["train.algorithm", "smiling, dac, bc"]),
])
def test_bad_settings_get_one_line_and_change_nothing(store, tmp_path, changes, options, fragments):
    p = params(tmp_path / "p.yaml", **changes)
    before = tree(tmp_path)
    assert_user_error(run_cli(["train", "--params", p, *options]), *fragments)
    assert tree(tmp_path) == before  # no ingest, no pretrain, no MLflow store


def test_a_dataset_without_an_environment_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    import minari
    from gymnasium.envs.mujoco.inverted_pendulum_v5 import InvertedPendulumEnv
    from gymnasium.wrappers import TimeLimit

    store = tmp_path / "store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collector = minari.DataCollector(TimeLimit(InvertedPendulumEnv(), 30), record_infos=False)  # no spec
        for ep in range(3):
            collector.reset(seed=ep)
            done = False
            while not done:
                *_, terminated, truncated, _ = collector.step(collector.action_space.sample())
                done = terminated or truncated
        collector.create_dataset(dataset_id="test/nospec-v0", algorithm_name="random", author="tests",
                                 description="no environment spec")
    p = params(tmp_path / "p.yaml", ingest={"dataset": "test/nospec-v0", "num_states": 60})
    before = tree(tmp_path)
    assert_user_error(run_cli(["train", "--params", p]), "no environment spec", "train and evaluate need")
    assert tree(tmp_path) == before
    assert run_cli(["pretrain", "--params", p]).exit_code == 0  # the score model needs no environment


def test_resume_refuses_a_checkpoint_made_with_another_expert_model(store, tmp_path):
    p = params(tmp_path / "p.yaml")
    assert run_cli(["train", "--params", p]).exit_code == 0
    other = params(tmp_path / "other.yaml", pretrain={"seed": 1})
    assert run_cli(["pretrain", "--params", other]).exit_code == 0  # another expert model
    assert_user_error(run_cli(["train", "--params", other, "--resume"]), "inputs.expert_model", "without --resume")


def test_a_stage_that_fails_inside_its_run_ends_it_failed_with_the_error(tmp_path):
    import mlflow

    from smiling_pipeline import tracking
    from smiling_pipeline.errors import UserError

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with pytest.raises(UserError), tracking.run("train", "some/dataset-v0", {"train": {"steps": 1}}):
        raise UserError("the environment diverged")
    runs = mlflow.MlflowClient().search_runs([tracking.experiment_id("some/dataset-v0")])
    assert [(r.info.status, r.data.tags["error"]) for r in runs] == [("FAILED", "UserError: the environment diverged")]


@pytest.fixture(scope="module")
def trained(recorded, tmp_path_factory) -> Path:
    """A workdir with ingested data, an expert model, a trained policy and its checkpoint (made once)."""
    assert recorded["run"].exit_code == 0, recorded["run"].output
    base = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
        mp.chdir(base)
        run = run_cli(["train", "--params", params(base / "p.yaml"), "--workdir", base / "w"])
    assert run.exit_code == 0, run.output
    return base / "w"


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\x00garbage" + data[64:])


@pytest.mark.parametrize("how", ["truncated", "garbled"])
@pytest.mark.parametrize("file, command, named", [
    ("ingest/expert.npz", ["pretrain"], "ingest is unreadable"),
    ("ingest/meta.json", ["pretrain"], "ingest is unreadable"),
    ("pretrain/expert_score.pt", ["train"], "expert_score.pt"),
    ("train/policy.zip", ["evaluate"], "policy.zip"),
    ("train/checkpoint/state.pt", ["train", "--resume"], "state.pt"),
    ("train/checkpoint/model.zip", ["train", "--resume"], "checkpoint is unreadable"),
    ("train/checkpoint/replay_buffer.pkl", ["train", "--resume"], "checkpoint is unreadable"),
])
def test_damaged_files_get_one_line_and_nothing_is_written(trained, store, tmp_path, file, command, named, how):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    damage(work / file, how)
    before = tree(work)
    assert_user_error(run_cli([*command, "--params", params(tmp_path / "p.yaml"), "--workdir", work]), named)
    assert tree(work) == before


@pytest.mark.parametrize("how", ["truncated", "garbled"])
def test_a_damaged_minari_file_gets_one_line(store, tmp_path, monkeypatch, how):
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(copy))
    (hdf5,) = (copy / DEMOS_DATASET / "data").glob("*.hdf5")
    damage(hdf5, how)
    p = params(tmp_path / "p.yaml")
    before = tree(tmp_path)
    assert_user_error(run_cli(["ingest", "--params", p]), DEMOS_DATASET, "damaged")
    assert tree(tmp_path) == before


def test_files_written_by_another_version_get_one_line(trained, store, tmp_path):
    work = tmp_path / "w"
    shutil.copytree(trained, work)
    model = torch.load(work / "pretrain" / "expert_score.pt", weights_only=False)
    model["config"]["clip"] = None  # a setting an earlier version had
    torch.save(model, work / "pretrain" / "expert_score.pt")
    p = params(tmp_path / "p.yaml")
    assert_user_error(run_cli(["train", "--params", p, "--workdir", work]), "expert_score.pt", "another version",
                      "pretrain again")
    shutil.copy(trained / "pretrain" / "expert_score.pt", work / "pretrain" / "expert_score.pt")
    state = torch.load(work / "train" / "checkpoint" / "state.pt", weights_only=False)
    del state["format"]  # as written before checkpoints had a format number
    torch.save(state, work / "train" / "checkpoint" / "state.pt")
    assert_user_error(run_cli(["train", "--params", p, "--workdir", work, "--resume"]), "state.pt", "another version")
