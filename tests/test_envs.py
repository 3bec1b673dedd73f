"""The one environment factory: training, evaluation and videos run on the environment a dataset was
recorded on (its spec's kwargs and time limit), with ``train.termination: ignore`` applied only where the
environment has that option, and one clear line for a spec whose entry point is not installed here."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from conftest import assert_user_error, make_dataset, offline_in, run_cli

from smiling_pipeline.envs import make_env, make_env_from_id
from smiling_pipeline.errors import UserError
from smiling_pipeline.evaluate import References, evaluate_policy

pytestmark = pytest.mark.timeout(300)
DATASET = "smiling/hopper-modified/random-v0"
LIMIT, Z_RANGE = 300, (0.5, 2.0)  # the modified environment: registered Hopper-v5 has 1000 and (0.7, inf)


def upright(obs: np.ndarray) -> np.ndarray:
    """Holds Hopper's joints straight: it stands for 1,000 steps and more without falling."""
    return np.clip(-obs[2:5], -1.0, 1.0)


@pytest.fixture(scope="module")
def modified(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two random-action episodes of Hopper-v5 with ``max_episode_steps=300`` and ``healthy_z_range=(0.5,
    2.0)``, recorded with DataCollector and ingested by the CLI."""
    base = tmp_path_factory.mktemp("modified")
    store, workdir = base / "store", base / "w"
    make_dataset(store, DATASET, "Hopper-v5", episodes=2, max_steps=LIMIT, env_kwargs={"healthy_z_range": Z_RANGE})
    with offline_in(store, base):
        run = run_cli(["ingest", "--dataset", DATASET, "--workdir", workdir])
    assert run.exit_code == 0, run.output
    return {"store": store, "workdir": workdir}


def meta_of(modified: dict[str, Path]) -> dict:
    return json.loads((modified["workdir"] / "ingest" / "meta.json").read_text())


def test_ingest_keeps_the_recorded_env_spec_whole(modified):
    spec = json.loads(meta_of(modified)["env_spec"])
    assert spec["id"] == "Hopper-v5" and spec["max_episode_steps"] == LIMIT
    assert spec["kwargs"] == {"healthy_z_range": list(Z_RANGE)}


@pytest.mark.parametrize("purpose", ["training", "evaluation", "video"])
def test_every_purpose_gets_the_recorded_environment(modified, purpose):
    env = make_env(meta_of(modified), purpose)
    assert env.spec.max_episode_steps == LIMIT and tuple(env.unwrapped._healthy_z_range) == Z_RANGE
    assert env.unwrapped._terminate_when_unhealthy is True
    assert env.render_mode == ("rgb_array" if purpose == "video" else None)
    env.close()


def test_an_evaluation_of_a_policy_that_never_falls_ends_at_the_recorded_limit(modified):
    steps = []
    policy = lambda obs: steps.append(1) or upright(obs)  # noqa: E731
    result = evaluate_policy(policy, meta_of(modified), References(0.0, 1.0, "test"), episodes=2, seed=0)
    assert len(steps) == 2 * LIMIT  # the registered Hopper-v5 would run to 1000 steps
    assert LIMIT * 0.9 < result.return_mean < LIMIT * 1.1  # healthy reward 1 per step, standing still


def test_training_without_early_termination_keeps_the_rest_of_the_recorded_spec(modified):
    env = make_env(meta_of(modified), "training", termination="ignore")
    assert env.unwrapped._terminate_when_unhealthy is False
    assert env.spec.max_episode_steps == LIMIT and tuple(env.unwrapped._healthy_z_range) == Z_RANGE
    assert make_env(meta_of(modified), "evaluation", termination="ignore").unwrapped._terminate_when_unhealthy


def test_ignoring_termination_is_refused_where_the_environment_has_no_such_option():
    pendulum = {"dataset_id": "x", "env_id": "InvertedPendulum-v5", "obs_dim": 4, "action_dim": 1,
                "env_spec": gym.spec("InvertedPendulum-v5").to_json()}
    with pytest.raises(UserError, match="InvertedPendulum-v5 has no terminate_when_unhealthy option.*use env or absorbing"):
        make_env(pendulum, "training", termination="ignore")
    make_env(pendulum, "training").close()


def test_an_environment_with_other_dims_than_the_data_is_refused(modified):
    with pytest.raises(UserError, match="dims 11 / 3 but the expert data of .* has 12 / 3"):
        make_env({**meta_of(modified), "obs_dim": 12})


def test_an_unknown_environment_id_is_one_line():
    with pytest.raises(UserError, match="unknown environment 'Hopper-v99'"):
        make_env_from_id("Hopper-v99")


def test_train_runs_on_the_recorded_environment_and_its_episodes_end_at_its_limit(modified, monkeypatch, tmp_path):
    """``smiling-cli train`` with ``termination: ignore``: the random steps before learning never fall, so
    the first training episode is cut by the recorded limit of 300 (the registered one is 1000)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(modified["store"]))
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "ingest": {"dataset": DATASET}, "score": {"hidden": 16}, "pretrain": {"steps": 20, "eval_every": 10},
        "train": {"steps": 400, "learning_starts": 350, "iteration_steps": 50, "learner_fit_steps": 5,
                  "eval_every": 400, "eval_episodes": 1, "checkpoint_every": 400, "net": [16], "batch_size": 32,
                  "termination": "ignore"},
        "evaluate": {"episodes": 1, "video": False}}))
    run = run_cli(["train", "--params", params, "--workdir", modified["workdir"]])
    assert run.exit_code == 0, run.output
    with open(modified["workdir"] / "train" / "checkpoint" / "replay_buffer.pkl", "rb") as f:
        buffer = pickle.load(f)
    ended = np.flatnonzero(buffer.dones[:400, 0])
    assert ended[0] == LIMIT - 1 and buffer.timeouts[LIMIT - 1, 0]  # truncated by the limit, not a fall


def test_an_entry_point_that_is_not_installed_names_what_to_install(modified, monkeypatch, tmp_path):
    workdir = tmp_path / "w"
    (workdir / "ingest").mkdir(parents=True)
    for name in ("expert.npz", "meta.json"):
        (workdir / "ingest" / name).write_bytes((modified["workdir"] / "ingest" / name).read_bytes())
    meta = meta_of(modified)
    spec = json.loads(meta["env_spec"]) | {"entry_point": "hopper_sim_pkg.envs:HopperEnv"}
    (workdir / "ingest" / "meta.json").write_text(json.dumps(meta | {"env_spec": json.dumps(spec)}))
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(modified["store"]))
    assert_user_error(run_cli(["train", "--dataset", DATASET, "--workdir", workdir]),
                      "hopper_sim_pkg.envs:HopperEnv", "install the package that provides hopper_sim_pkg")
