"""``smiling-cli ingest`` and ``datasets`` against real local Minari datasets recorded with DataCollector.

The stores are built once per session (each dataset takes well under a second): a Humanoid-v5 store
holding ``mujoco/humanoid/expert-v0`` (3 random episodes of at most 30 steps, so 348-dim observations
and 17-dim actions), plus small stores for version resolution, ambiguity and each kind of bad data.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from conftest import assert_user_error, load_episodes, make_dataset, run_cli, tree

pytestmark = pytest.mark.timeout(120)

HUMANOID = "mujoco/humanoid/expert-v0"
REF_MIN, REF_MAX = -12.5, 4321.0


# --- stores ------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def humanoid_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("humanoid-store")
    make_dataset(root, HUMANOID, "Humanoid-v5", episodes=3, max_steps=30, ref_min_score=REF_MIN, ref_max_score=REF_MAX)
    return root


@pytest.fixture(scope="session")
def humanoid_episodes(humanoid_store: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    return load_episodes(humanoid_store, HUMANOID)


@pytest.fixture(scope="session")
def versions_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """expert-v0 (3 episodes) and expert-v1 (2 episodes) of the same dataset."""
    root = tmp_path_factory.mktemp("versions-store")
    make_dataset(root, "mujoco/humanoid/expert-v0", "Humanoid-v5", episodes=3, max_steps=10)
    make_dataset(root, "mujoco/humanoid/expert-v1", "Humanoid-v5", episodes=2, max_steps=10, seed=7)
    return root


@pytest.fixture(scope="session")
def multi_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``smiling/multi`` has two datasets and none named expert; ``smiling/mixed`` has an expert one."""
    root = tmp_path_factory.mktemp("multi-store")
    for dataset_id in ("smiling/multi/medium-v0", "smiling/multi/simple-v0", "smiling/mixed/medium-v0", "smiling/mixed/expert-v0"):
        make_dataset(root, dataset_id, episodes=2, max_steps=8)
    return root


class NaNAtStep(gym.ObservationWrapper):
    """Puts NaN into one component of the observation returned by the ``at``-th step."""

    def __init__(self, env: gym.Env, at: int = 3):
        super().__init__(env)
        self.at, self.t = at, 0

    def reset(self, **kwargs):
        self.t = 0
        return super().reset(**kwargs)

    def step(self, action):
        self.t += 1
        return super().step(action)

    def observation(self, obs):
        obs = np.array(obs, dtype=np.float64)
        if self.t == self.at:
            obs[1] = np.nan
        return obs


class PadObservation(gym.ObservationWrapper):
    """Appends a constant to each observation: 4-dim InvertedPendulum becomes 5-dim."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        n = env.observation_space.shape[0] + 1
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (n,), np.float64)

    def observation(self, obs):
        return np.concatenate([obs, [0.5]])


PADDED_SPACE = gym.spaces.Box(-np.inf, np.inf, (5,), np.float64)


@pytest.fixture(scope="session")
def bad_stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """One store per kind of bad dataset: name -> (store, dataset id)."""
    stores = {}

    def add(name: str, dataset_id: str, **kwargs) -> None:
        root = tmp_path_factory.mktemp(f"bad-{name}")
        make_dataset(root, dataset_id, **kwargs)
        stores[name] = (root, dataset_id)

    add("nan", "smiling/nan/expert-v0", episodes=2, max_steps=10, wrapper=NaNAtStep)
    add("discrete", "smiling/cartpole/expert-v0", env_id="CartPole-v1", episodes=2, max_steps=10)
    # Minari accepts a collector that never recorded an episode: a genuine 0-episode, 0-step dataset.
    add("empty", "smiling/empty/expert-v0", episodes=0)
    add("mismatch", "smiling/padded/expert-v0", episodes=2, max_steps=10, wrapper=PadObservation,
        observation_space=PADDED_SPACE)
    return stores


# --- helpers -----------------------------------------------------------------------------------


def ingest(monkeypatch: pytest.MonkeyPatch, store: Path, workdir: Path, *options: str):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    return run_cli(["ingest", "--workdir", workdir, *options])


def read_output(workdir: Path) -> tuple[dict[str, np.ndarray], dict]:
    out = workdir / "ingest"
    assert tree(workdir) == {"ingest", "ingest/expert.npz", "ingest/meta.json"}, "stray files in the workdir"
    with np.load(out / "expert.npz") as f:
        arrays = {k: f[k] for k in f.files}
    return arrays, json.loads((out / "meta.json").read_text())


def rows(a: np.ndarray) -> Counter:
    """Multiset of the rows of ``a`` (as float32 bytes)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return Counter(r.tobytes() for r in a)


def assert_no_outputs(workdir: Path, store: Path, store_before: set[str], cwd: Path, cwd_before: set[str]) -> None:
    assert not workdir.exists(), f"the failed command wrote {sorted(tree(workdir))}"
    assert tree(store) == store_before, "the failed command changed the Minari store"
    assert tree(cwd) == cwd_before, "the failed command left files in the working folder"


# --- the Humanoid dataset ----------------------------------------------------------------------


def test_bare_namespace_resolves_and_writes_expert_arrays(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    w = tmp_path / "w"
    run = ingest(monkeypatch, humanoid_store, w, "--dataset", "mujoco/humanoid")
    assert run.exit_code == 0, run.output
    assert HUMANOID in run.stdout
    arrays, meta = read_output(w)
    assert set(arrays) == {"train", "val", "mean", "std"}

    states = np.concatenate([obs[:-1] for obs, _, _ in humanoid_episodes])
    n = len(states)
    n_val = int(round(n * 0.1))
    train, val = arrays["train"], arrays["val"]
    assert train.shape == (n - n_val, 348) and val.shape == (n_val, 348)
    assert train.dtype == np.float32 and val.dtype == np.float32
    # train + val are exactly the states actions were taken in, each once
    assert rows(np.concatenate([train, val])) == rows(states)

    assert arrays["mean"].shape == (348,) and arrays["std"].shape == (348,)
    np.testing.assert_allclose(arrays["mean"], train.mean(axis=0), rtol=1e-5, atol=1e-6)
    # ingest stores the raw train std; the score model floors it (score.min_std) when normalising
    np.testing.assert_allclose(arrays["std"], train.std(axis=0), rtol=1e-5, atol=1e-7)
    assert (arrays["std"] >= 0).all() and np.isfinite(arrays["std"]).all()

    returns = [float(r.sum()) for _, _, r in humanoid_episodes]
    assert meta["dataset_id"] == HUMANOID
    assert meta["requested"] == "mujoco/humanoid"
    assert meta["env_id"] == "Humanoid-v5"
    assert (meta["obs_dim"], meta["action_dim"], meta["input_dim"]) == (348, 17, 348)
    assert meta["with_actions"] is False
    assert (meta["ref_min_score"], meta["ref_max_score"]) == (REF_MIN, REF_MAX)
    assert meta["episodes_total"] == meta["episodes_used"] == 3
    assert meta["steps_total"] == meta["states_available"] == n
    assert (meta["train_rows"], meta["val_rows"]) == (n - n_val, n_val)
    assert meta["expert_return_mean"] == pytest.approx(np.mean(returns), rel=1e-6)
    assert re.fullmatch(r"[0-9a-f]{64}", meta["content_hash"])


@pytest.mark.parametrize("query", ["mujoco/humanoid/expert", HUMANOID])
def test_unversioned_and_full_ids_resolve(monkeypatch, humanoid_store, tmp_path, query):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", query)
    assert run.exit_code == 0, run.output
    _, meta = read_output(tmp_path / "w")
    assert meta["dataset_id"] == HUMANOID and meta["requested"] == query


def test_minari_root_option_overrides_environment(monkeypatch, humanoid_store, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty-store"))
    run = run_cli(["ingest", "--workdir", tmp_path / "w", "--dataset", "mujoco/humanoid", "--minari-root", humanoid_store])
    assert run.exit_code == 0, run.output
    assert read_output(tmp_path / "w")[1]["dataset_id"] == HUMANOID


def test_with_actions_appends_the_actions(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--with-actions")
    assert run.exit_code == 0, run.output
    arrays, meta = read_output(tmp_path / "w")
    assert arrays["train"].shape[1] == arrays["val"].shape[1] == 365
    assert arrays["mean"].shape == arrays["std"].shape == (365,)
    assert (meta["obs_dim"], meta["action_dim"], meta["input_dim"], meta["with_actions"]) == (348, 17, 365, True)
    expected = np.concatenate([np.concatenate([obs[:-1], act], axis=1) for obs, act, _ in humanoid_episodes])
    assert rows(np.concatenate([arrays["train"], arrays["val"]])) == rows(expected)


def test_every_keeps_every_kth_step_of_each_episode(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--every", "2")
    assert run.exit_code == 0, run.output
    arrays, meta = read_output(tmp_path / "w")
    expected = np.concatenate([obs[:-1:2] for obs, _, _ in humanoid_episodes])
    assert len(expected) == sum((len(act) + 1) // 2 for _, act, _ in humanoid_episodes)
    assert rows(np.concatenate([arrays["train"], arrays["val"]])) == rows(expected)
    assert meta["states_available"] == len(expected)


def test_max_episodes_reads_only_the_first_episodes(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--max-episodes", "1")
    assert run.exit_code == 0, run.output
    arrays, meta = read_output(tmp_path / "w")
    first_obs, _, first_rewards = humanoid_episodes[0]
    assert rows(np.concatenate([arrays["train"], arrays["val"]])) == rows(first_obs[:-1])
    assert meta["episodes_used"] == 1 and meta["episodes_total"] == 3
    assert meta["expert_return_mean"] == pytest.approx(float(first_rewards.sum()), rel=1e-6)


def test_num_states_takes_a_random_subset_and_splits_it(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--num-states", "20",
                 "--val-fraction", "0.25")
    assert run.exit_code == 0, run.output
    arrays, meta = read_output(tmp_path / "w")
    assert arrays["train"].shape == (15, 348) and arrays["val"].shape == (5, 348)
    picked = rows(np.concatenate([arrays["train"], arrays["val"]]))
    available = rows(np.concatenate([obs[:-1] for obs, _, _ in humanoid_episodes]))
    assert sum(picked.values()) == 20 and not picked - available, "the subset must be 20 distinct dataset states"
    assert (meta["train_rows"], meta["val_rows"]) == (15, 5)


def test_num_states_above_the_available_count_keeps_all(monkeypatch, humanoid_store, humanoid_episodes, tmp_path):
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--num-states", "100000",
                 "--val-fraction", "0")
    assert run.exit_code == 0, run.output
    arrays, _ = read_output(tmp_path / "w")
    n = sum(len(act) for _, act, _ in humanoid_episodes)
    assert arrays["train"].shape == (n, 348) and arrays["val"].shape == (0, 348)


def test_same_seed_gives_the_same_content_hash(monkeypatch, humanoid_store, tmp_path):
    metas, arrays = [], []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        run = ingest(monkeypatch, humanoid_store, tmp_path / name, "--dataset", HUMANOID, "--seed", seed, "--num-states", "30")
        assert run.exit_code == 0, run.output
        a, m = read_output(tmp_path / name)
        arrays.append(a)
        metas.append(m)
    assert metas[0]["content_hash"] == metas[1]["content_hash"]
    for key in arrays[0]:
        np.testing.assert_array_equal(arrays[0][key], arrays[1][key])
    assert metas[2]["content_hash"] != metas[0]["content_hash"], "another seed picks another subset"


def test_rerun_replaces_previous_output(monkeypatch, humanoid_store, tmp_path):
    w = tmp_path / "w"
    assert ingest(monkeypatch, humanoid_store, w, "--dataset", HUMANOID, "--num-states", "10").exit_code == 0
    assert ingest(monkeypatch, humanoid_store, w, "--dataset", HUMANOID, "--num-states", "12").exit_code == 0
    arrays, meta = read_output(w)  # no leftover temp or .old folders
    assert len(arrays["train"]) + len(arrays["val"]) == 12


# --- resolution among several datasets ---------------------------------------------------------


@pytest.mark.parametrize("query", ["mujoco/humanoid/expert", "mujoco/humanoid"])
def test_newest_version_is_chosen(monkeypatch, versions_store, tmp_path, query):
    run = ingest(monkeypatch, versions_store, tmp_path / "w", "--dataset", query)
    assert run.exit_code == 0, run.output
    meta = read_output(tmp_path / "w")[1]
    assert meta["dataset_id"] == "mujoco/humanoid/expert-v1"
    assert meta["episodes_total"] == 2


def test_explicit_older_version_is_used_when_a_newer_one_exists(monkeypatch, versions_store, tmp_path):
    run = ingest(monkeypatch, versions_store, tmp_path / "w", "--dataset", "mujoco/humanoid/expert-v0")
    assert run.exit_code == 0, run.output
    meta = read_output(tmp_path / "w")[1]
    assert meta["dataset_id"] == "mujoco/humanoid/expert-v0"
    assert meta["episodes_total"] == 3


def test_expert_is_preferred_in_a_namespace(monkeypatch, multi_store, tmp_path):
    run = ingest(monkeypatch, multi_store, tmp_path / "w", "--dataset", "smiling/mixed")
    assert run.exit_code == 0, run.output
    assert read_output(tmp_path / "w")[1]["dataset_id"] == "smiling/mixed/expert-v0"


def test_ambiguous_namespace_names_the_candidates(monkeypatch, multi_store, tmp_path):
    before, cwd_before = tree(multi_store), tree(tmp_path)
    run = ingest(monkeypatch, multi_store, tmp_path / "w", "--dataset", "smiling/multi")
    assert_user_error(run, "smiling/multi/medium-v0", "smiling/multi/simple-v0")
    assert_no_outputs(tmp_path / "w", multi_store, before, tmp_path, cwd_before)


# --- errors: one line, non-zero exit, nothing written --------------------------------------------


def test_unknown_id(monkeypatch, humanoid_store, tmp_path):
    before, cwd_before = tree(humanoid_store), tree(tmp_path)
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", "smiling/nothing/here-v0")
    assert_user_error(run, "smiling/nothing/here-v0", "not found")
    assert_no_outputs(tmp_path / "w", humanoid_store, before, tmp_path, cwd_before)


@pytest.mark.parametrize("bad_id", ["bad id", "a//b", "", "mujoco/humanoid/"])
def test_malformed_id(monkeypatch, humanoid_store, tmp_path, bad_id):
    before, cwd_before = tree(humanoid_store), tree(tmp_path)
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", bad_id)
    assert_user_error(run, "malformed")
    assert_no_outputs(tmp_path / "w", humanoid_store, before, tmp_path, cwd_before)


def test_unreachable_remote_fails_fast(monkeypatch, humanoid_store, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    before, cwd_before = tree(humanoid_store), tree(tmp_path)
    start = time.monotonic()
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", "mujoco/hopper/expert-v0")
    elapsed = time.monotonic() - start
    assert_user_error(run, "mujoco/hopper/expert-v0", "unreachable")
    assert elapsed < 5, f"took {elapsed:.1f}s"
    assert_no_outputs(tmp_path / "w", humanoid_store, before, tmp_path, cwd_before)


@pytest.mark.parametrize(
    "kind, fragments",
    [
        ("nan", ("smiling/nan/expert-v0", "NaN", "observations")),
        ("discrete", ("smiling/cartpole/expert-v0", "action_space", "Box")),
        ("empty", ("smiling/empty/expert-v0", "no steps")),
        ("mismatch", ("smiling/padded/expert-v0", "do not match", "environment")),
    ],
)
def test_bad_dataset(monkeypatch, bad_stores, tmp_path, kind, fragments):
    store, dataset_id = bad_stores[kind]
    before, cwd_before = tree(store), tree(tmp_path)
    run = ingest(monkeypatch, store, tmp_path / "w", "--dataset", dataset_id)
    assert_user_error(run, *fragments)
    assert_no_outputs(tmp_path / "w", store, before, tmp_path, cwd_before)


def test_too_few_states_for_training(monkeypatch, humanoid_store, tmp_path):
    before, cwd_before = tree(humanoid_store), tree(tmp_path)
    run = ingest(monkeypatch, humanoid_store, tmp_path / "w", "--dataset", HUMANOID, "--num-states", "2",
                 "--val-fraction", "0.9")
    assert_user_error(run, "at least 2")
    assert_no_outputs(tmp_path / "w", humanoid_store, before, tmp_path, cwd_before)


def test_failed_ingest_keeps_previous_output(monkeypatch, humanoid_store, bad_stores, tmp_path):
    w = tmp_path / "w"
    assert ingest(monkeypatch, humanoid_store, w, "--dataset", HUMANOID).exit_code == 0
    old = (w / "ingest" / "meta.json").read_text()
    store, dataset_id = bad_stores["nan"]
    assert_user_error(ingest(monkeypatch, store, w, "--dataset", dataset_id), "NaN")
    read_output(w)
    assert (w / "ingest" / "meta.json").read_text() == old


# --- datasets ----------------------------------------------------------------------------------


def test_datasets_lists_local_datasets(monkeypatch, humanoid_store):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(humanoid_store))
    run = run_cli(["datasets"])
    assert run.exit_code == 0, run.output
    assert str(humanoid_store.resolve()) in run.stdout
    line = next(row for row in run.stdout.splitlines() if HUMANOID in row)
    assert line.split()[:3] == ["local", HUMANOID, "3"]
    assert line.split()[-2:] == [f"{REF_MIN:.1f}", f"{REF_MAX:.1f}"]


def test_datasets_on_an_empty_store(tmp_path):
    run = run_cli(["datasets", "--minari-root", tmp_path / "nothing-here"])
    assert run.exit_code == 0, run.output
    assert "no datasets" in run.stdout


def test_datasets_remote_unreachable(monkeypatch, humanoid_store):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(humanoid_store))
    assert_user_error(run_cli(["datasets", "--remote"]), "unreachable")
