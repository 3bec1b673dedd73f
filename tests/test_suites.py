"""Any Gymnasium suite: dm_control through shimmy end to end (an expert dataset made by ``demos``, recorded
flat, then train, evaluate and resume), Dict observations flattened by a wrapper the dataset's spec
records and rebuilt identically from it, and checkpoints of environments without a MuJoCo state, whose
resumed runs start a new episode."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import assert_user_error, load_episodes, make_dataset, offline_in, run_cli, terminal_lines

from smiling_pipeline import envs
from smiling_pipeline.envs import make_env, make_env_from_id
from smiling_pipeline.errors import UserError

pytest.importorskip("shimmy.dm_control_compatibility", reason="dm_control needs the dmc extra (in dev)")
pytestmark = pytest.mark.timeout(600)
DMC_ENV, DMC_DATASET = "dm_control/cheetah-run-v0", "smiling/cheetah-run/expert-v0"
DMC_STEPS = 1000  # dm_control's own time limit for cheetah-run (10 s at 0.01 s a step)
RESTART = "starts a new episode"


def tiny(path: Path, dataset: str, **train: object) -> Path:
    """A params file with tiny budgets for ``dataset``; ``train`` overrides train settings."""
    path.write_text(yaml.safe_dump({
        "ingest": {"dataset": dataset}, "score": {"hidden": 16}, "pretrain": {"steps": 20, "eval_every": 10},
        "train": {"steps": 300, "learning_starts": 150, "iteration_steps": 50, "learner_fit_steps": 5, "eval_every": 300,
                  "eval_episodes": 1, "checkpoint_every": 300, "net": [16], "batch_size": 32, **train},
        "baselines": {"dac_hidden": 16, "dac_fit_steps": 5},
        "evaluate": {"episodes": 1, "video": False}}))
    return path


@pytest.fixture(scope="module")
def dmc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An expert dataset of cheetah-run made by ``smiling-cli demos`` (SAC, 200 true-reward steps, one
    recorded episode) and ingested by the CLI."""
    base = tmp_path_factory.mktemp("dmc")
    store, workdir = base / "store", base / "w"
    with offline_in(store, base):
        made = run_cli(["demos", "--env", DMC_ENV, "--dataset-id", DMC_DATASET, "--algorithm", "sac",
                        "--expert-steps", "200", "--episodes", "1", "--random-episodes", "1", "--device", "cpu",
                        "--workdir", workdir / "demos", "--seed", "0"])
        assert made.exit_code == 0, made.output
        ingested = run_cli(["ingest", "--dataset", DMC_DATASET, "--workdir", workdir])
        assert ingested.exit_code == 0, ingested.output
    return {"base": base, "store": store, "workdir": workdir}


def meta_of(workdir: Path) -> dict:
    return json.loads((workdir / "ingest" / "meta.json").read_text())


def recorded_episode(store: Path) -> tuple[np.ndarray, np.ndarray]:
    """Observations and actions of the dm_control dataset's first episode, read with Minari."""
    observations, actions, _ = load_episodes(store, DMC_DATASET)[0]
    return observations, actions


def test_demos_records_dm_control_flat_with_the_flattening_in_the_spec(dmc):
    spec = json.loads(meta_of(dmc["workdir"])["env_spec"])
    assert spec["id"] == DMC_ENV and spec["entry_point"] == "smiling_pipeline.envs:dm_control_suite"
    assert spec["kwargs"] == {"domain_name": "cheetah", "task_name": "run"}
    assert [w["name"] for w in spec["additional_wrappers"]] == ["FlattenObservation"]
    observations, actions = recorded_episode(dmc["store"])
    assert observations.shape == (DMC_STEPS + 1, 17) and actions.shape == (DMC_STEPS, 6)  # position 8 + velocity 9


def test_the_stored_spec_rebuilds_the_recorded_episode_exactly(dmc):
    """Replaying the recorded actions from the recorded seed on ``make_env``'s environment gives the recorded
    (flattened) observations bit for bit; they are the flattening of the raw Dict observations."""
    observations, actions = recorded_episode(dmc["store"])
    env = make_env(meta_of(dmc["workdir"]))
    raw = gym.make(DMC_ENV)  # shimmy's own registration, Dict observations
    seed = 1_000_000  # demos records episode i with seed demos.seed + 1,000,000 + i
    obs, _ = env.reset(seed=seed)
    raw_obs, _ = raw.reset(seed=seed)
    replayed = [obs]
    for action in actions[:100]:
        obs, *_ = env.step(action)
        replayed.append(obs)
        raw_obs, *_ = raw.step(action)
    np.testing.assert_array_equal(np.stack(replayed), observations[:101])
    np.testing.assert_array_equal(replayed[-1], gym.spaces.flatten(raw.observation_space, raw_obs))
    env.close()
    raw.close()


def test_dm_control_trains_evaluates_and_resumes_from_its_dataset(dmc, monkeypatch, tmp_path):
    """SMILING on the dm_control dataset: train to a checkpoint mid-episode, evaluate, then resume with a
    larger budget, which says once that it starts a new episode (dm_control's task state is not saved)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dmc["store"]))
    monkeypatch.chdir(dmc["base"])
    p = tiny(tmp_path / "p.yaml", DMC_DATASET)
    trained = run_cli(["train", "--params", p, "--workdir", dmc["workdir"]])
    assert trained.exit_code == 0, trained.output
    assert RESTART not in trained.stderr
    evaluated = run_cli(["evaluate", "--params", p, "--workdir", dmc["workdir"]])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((dmc["workdir"] / "evaluate" / "metrics.json").read_text())
    assert result["episodes"] == 1 and np.isfinite(result["normalized_return"])

    resumed = run_cli(["train", "--params", p, "--workdir", dmc["workdir"], "--resume", "--steps", "400"])
    assert resumed.exit_code == 0, resumed.output
    notes = [line for line in terminal_lines(resumed.stderr) if RESTART in line]
    assert len(notes) == 1 and "DmControlCompatibilityV0 is not a Gymnasium MuJoCo environment" in notes[0]
    assert json.loads((dmc["workdir"] / "train_metrics" / "metrics.json").read_text())["env_steps"] == 400


def test_ignoring_termination_on_dm_control_is_one_line(dmc, monkeypatch, tmp_path):
    """dm_control's tasks end only at their time limit: ``train.termination: ignore`` does not apply."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(dmc["store"]))
    shutil.copytree(dmc["workdir"] / "ingest", tmp_path / "w" / "ingest")
    p = tiny(tmp_path / "p.yaml", DMC_DATASET, termination="ignore")
    assert_user_error(run_cli(["train", "--params", p, "--workdir", tmp_path / "w"]),
                      "dm_control/cheetah-run-v0 has no terminate_when_unhealthy option", "use env or absorbing")


def test_ball_in_cup_is_made_flat_and_rebuilt_from_its_spec():
    env = make_env_from_id("dm_control/ball_in_cup-catch-v0")
    assert env.observation_space.shape == (8,)  # position 4 + velocity 4
    rebuilt = envs.make_from_spec(gym.envs.registration.EnvSpec.from_json(env.spec.to_json()))
    np.testing.assert_array_equal(env.reset(seed=3)[0], rebuilt.reset(seed=3)[0])
    env.close()
    rebuilt.close()


def test_a_suite_whose_package_is_missing_names_what_to_install(monkeypatch):
    monkeypatch.setitem(envs.SUITES, "othersuite", ("othersuite_pkg", "othersuite-gym"))
    with pytest.raises(UserError, match="othersuite/walk-v0 is registered by othersuite_pkg.*install othersuite-gym"):
        make_env_from_id("othersuite/walk-v0")


def test_dac_on_pendulum_resumes_at_the_start_of_a_new_episode(monkeypatch, tmp_path):
    """Pendulum-v1 (classic control, no MuJoCo state): the final checkpoint is written, and a run resumed from
    it at step 300, mid-episode, starts a new 200-step episode there: the next episode end is at step 500,
    where an uninterrupted run would have ended one at 400."""
    store = tmp_path / "store"
    make_dataset(store, "smiling/pendulum/random-v0", "Pendulum-v1", episodes=2, max_steps=200)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    p = tiny(tmp_path / "p.yaml", "smiling/pendulum/random-v0", algorithm="dac")
    workdir = tmp_path / "w"
    first = run_cli(["train", "--params", p, "--workdir", workdir])
    assert first.exit_code == 0, first.output
    resumed = run_cli(["train", "--params", p, "--workdir", workdir, "--resume", "--steps", "600"])
    assert resumed.exit_code == 0, resumed.output
    notes = [line for line in terminal_lines(resumed.stderr) if RESTART in line]
    assert len(notes) == 1 and "PendulumEnv is not a Gymnasium MuJoCo environment" in notes[0] and "at 300 env steps" in notes[0]
    with open(workdir / "train" / "checkpoint" / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    assert list(np.flatnonzero(buffer.dones[:600, 0])) == [199, 499]
    assert buffer.timeouts[[199, 499], 0].all()


def test_a_dataset_recorded_with_dict_observations_is_refused_with_the_way_to_record_it_flat(monkeypatch, tmp_path):
    def as_dict(env: gym.Env) -> gym.Env:
        return gym.wrappers.TransformObservation(env, lambda obs: {"x": obs}, gym.spaces.Dict({"x": env.observation_space}))

    make_dataset(tmp_path / "store", "smiling/dict/random-v0", wrapper=as_dict, episodes=2)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    assert_user_error(run_cli(["ingest", "--dataset", "smiling/dict/random-v0", "--workdir", tmp_path / "w"]),
                      "observation_space is Dict", "smiling-cli demos, which flattens Dict observations")
    assert not (tmp_path / "w").exists()
