"""``smiling-cli demos``: one real PPO training run on InvertedPendulum-v5 (about 25 s here), recorded
with Minari's DataCollector, then checked with Minari itself; plus the fast refusals."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import (
    DEMOS_DATASET as DATASET,
)
from conftest import (
    DEMOS_EPISODES as EPISODES,
)
from conftest import (
    assert_user_error,
    make_dataset,
    minari_store,
    run_cli,
    tree,
)

pytestmark = pytest.mark.timeout(300)

ENV = "InvertedPendulum-v5"
RANDOM_EPISODES = 20
MAX_RETURN = 1000.0  # InvertedPendulum-v5: reward 1 per step, 1000 steps


def open_dataset(store: Path, dataset_id: str = DATASET):
    import minari

    with minari_store(store), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.load_dataset(dataset_id)
        episodes = [(np.asarray(e.observations), np.asarray(e.actions), np.asarray(e.rewards)) for e in ds.iterate_episodes()]
    return ds, episodes


def independent_random_returns(episodes: int, seed: int) -> np.ndarray:
    env = gym.make(ENV)
    env.action_space.seed(seed)
    returns = np.zeros(episodes)
    for ep in range(episodes):
        env.reset(seed=seed + ep)
        done = False
        while not done:
            _, r, terminated, truncated, _ = env.step(env.action_space.sample())
            returns[ep] += r
            done = terminated or truncated
    return returns


def test_demos_records_an_expert_dataset_with_reference_scores(recorded, monkeypatch):
    import minari

    run, store, workdir = recorded["run"], recorded["store"], recorded["workdir"]
    assert run.exit_code == 0, run.output
    assert f"recorded {EPISODES} episodes" in run.stdout and DATASET in run.stdout

    ds, episodes = open_dataset(store)
    assert ds.total_episodes == EPISODES
    assert ds.spec.env_spec.id == ENV
    assert ds.observation_space.shape == (4,) and ds.action_space.shape == (1,)
    returns = np.array([r.sum() for _, _, r in episodes])
    assert returns.mean() >= 0.95 * MAX_RETURN, f"expert returns {returns}"
    assert ds.total_steps == sum(len(a) for _, a, _ in episodes)

    meta = ds.storage.metadata
    ref_min, ref_max = meta["ref_min_score"], meta["ref_max_score"]
    assert ref_max == pytest.approx(returns.mean(), rel=1e-6)
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([ref_max])), [1.0])
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([ref_min])), [0.0], atol=1e-12)

    # ref_min is a random policy's mean return: far below the expert, and where an independent
    # random rollout (other seeds) lands
    random_returns = independent_random_returns(100, seed=12345)
    assert 1.0 <= ref_min < 0.1 * ref_max
    assert abs(ref_min - random_returns.mean()) < 5 * random_returns.std() / np.sqrt(RANDOM_EPISODES) + 1.0

    summary = json.loads((workdir / "demos" / "demos.json").read_text())
    assert summary["dataset_id"] == DATASET and summary["episodes"] == EPISODES
    assert summary["random_return"] == pytest.approx(ref_min) and summary["expert_return"] == pytest.approx(ref_max)
    assert summary["steps"] == ds.total_steps
    assert (workdir / "demos" / "expert_policy.zip").is_file()

    # the store holds just the dataset: no staging or collector temp folders left behind
    assert not [p for p in tree(store) if p.split("/")[0].startswith(".") or "tmp" in p.split("/")[0]]
    with minari_store(store), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert list(minari.list_local_datasets()) == [DATASET]

    # and ingest reads it, carrying the reference scores through
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    run = run_cli(["ingest", "--dataset", "smiling/invertedpendulum", "--workdir", workdir, "--num-states", "500"])
    assert run.exit_code == 0, run.output
    ingested = json.loads((workdir / "ingest" / "meta.json").read_text())
    assert ingested["dataset_id"] == DATASET and ingested["obs_dim"] == 4
    assert (ingested["ref_min_score"], ingested["ref_max_score"]) == (ref_min, ref_max)
    assert ingested["expert_return_mean"] == pytest.approx(ref_max)


def test_force_replaces_a_dataset_using_a_saved_policy(recorded, monkeypatch, tmp_path):
    """--force with --policy (the expert saved by the run above): no training, the dataset is replaced."""
    assert recorded["run"].exit_code == 0, recorded["run"].output
    store = tmp_path / "store"
    shutil.copytree(recorded["store"], store)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    policy = recorded["workdir"] / "demos" / "expert_policy.zip"
    args = ["demos", "--env", ENV, "--dataset-id", DATASET, "--algorithm", "ppo", "--policy", policy,
            "--episodes", "2", "--random-episodes", "3", "--device", "cpu", "--workdir", tmp_path / "w",
            "--deterministic"]  # the mean action: the saved expert balances the whole episode

    assert_user_error(run_cli(args), DATASET, "already exists", "--force")
    run = run_cli([*args, "--force"])
    assert run.exit_code == 0, run.output
    ds, episodes = open_dataset(store)
    assert ds.total_episodes == 2
    assert np.mean([r.sum() for _, _, r in episodes]) >= 0.95 * MAX_RETURN
    assert not (tmp_path / "w" / "demos" / "expert_policy.zip").exists(), "--policy must not train a new expert"


# --- refusals (fast: they happen before any training) -------------------------------------------


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_refuses_to_overwrite_without_force(monkeypatch, tmp_path):
    store = tmp_path / "store"
    make_dataset(store, "smiling/taken/expert-v0", episodes=1, max_steps=5)
    before = digest(store)
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    run = run_cli(["demos", "--dataset-id", "smiling/taken/expert-v0", "--algorithm", "ppo", "--expert-steps", "100000",
                   "--workdir", tmp_path / "w"])
    assert_user_error(run, "smiling/taken/expert-v0", "already exists", "--force")
    assert digest(store) == before
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize(
    "options, fragments",
    [
        (["--dataset-id", "mujoco/invertedpendulum/expert-v0"], ("mujoco/invertedpendulum/expert-v0", "namespace")),
        (["--dataset-id", "D4RL/pen/expert-v0"], ("D4RL/pen/expert-v0",)),
        (["--dataset-id", "smiling/pendulum/expert"], ("version",)),
        (["--dataset-id", "bad id-v0"], ("malformed",)),
        (["--env", "NoSuchEnv-v0"], ("NoSuchEnv-v0",)),
        (["--env", "CartPole-v1"], ("CartPole-v1", "Box")),
        (["--algorithm", "dqn"], ("algorithm", "dqn")),
        (["--policy", "missing.zip"], ("missing.zip", "not found")),
    ],
)
def test_refusals(monkeypatch, tmp_path, options, fragments):
    store = tmp_path / "store"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    run = run_cli(["demos", "--dataset-id", "smiling/ok/expert-v0", "--expert-steps", "100000", "--workdir",
                   tmp_path / "w", *options])
    assert_user_error(run, *fragments)
    assert not (tmp_path / "w").exists()
    assert tree(store) == set(), f"left {sorted(tree(store))} in the store"
