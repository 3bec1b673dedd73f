"""The committed expert datasets (Gym locomotion and the paper's DMC tasks): readable by Minari itself, complete,
and trainable from a fresh clone without making an expert."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]
STORE = REPO / "data" / "minari"
COMMITTED = {"smiling/hopper/expert-v0": ("Hopper-v5", 11, 3), "smiling/walker2d/expert-v0": ("Walker2d-v5", 17, 6),
             "smiling/halfcheetah/expert-v0": ("HalfCheetah-v5", 17, 6),
             "smiling/cheetah-run/expert-v0": ("dm_control/cheetah-run-v0", 17, 6),  # flattened Dict observations
             "smiling/ball-in-cup-catch/expert-v0": ("dm_control/ball_in_cup-catch-v0", 8, 2)}


@pytest.mark.parametrize("dataset_id", sorted(COMMITTED))
def test_committed_dataset_loads_with_minari_and_has_what_training_needs(dataset_id, monkeypatch):
    import minari

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(STORE))
    env_id, obs_dim, act_dim = COMMITTED[dataset_id]
    dataset = minari.load_dataset(dataset_id)
    assert dataset.spec.env_spec.id == env_id and dataset.total_episodes >= 10
    assert dataset.observation_space.shape == (obs_dim,) and dataset.action_space.shape == (act_dim,)
    episode = next(dataset.iterate_episodes())
    assert episode.actions.shape[1] == act_dim and len(episode.observations) == len(episode.actions) + 1
    ref_min, ref_max = dataset.storage.metadata["ref_min_score"], dataset.storage.metadata["ref_max_score"]
    assert ref_max > ref_min
    returns = [float(ep.rewards.sum()) for ep in dataset.iterate_episodes()]
    assert abs(sum(returns) / len(returns) - ref_max) < 1e-3 * abs(ref_max)  # ref_max = the recorded episodes' mean
    made = json.loads((REPO / "data" / "experts" / dataset_id.split("/")[1] / "demos" / "demos.json").read_text())
    assert made["dataset_id"] == dataset_id and made["episodes"] == dataset.total_episodes


def test_train_starts_on_a_committed_dataset_without_making_an_expert(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "ingest": {"num_states": 1000}, "pretrain": {"steps": 50},
        "train": {"steps": 300, "learning_starts": 100, "iteration_steps": 100, "learner_fit_steps": 5,
                  "eval_every": 300, "eval_episodes": 1, "checkpoint_every": 300, "net": [16, 16]}}))
    before = sorted(p.relative_to(STORE) for p in STORE.rglob("*"))
    run = run_cli(["train", "--params", params, "--dataset", "smiling/hopper/expert-v0", "--minari-root", STORE])
    assert run.exit_code == 0, run.output
    assert "pretraining first" in run.stderr
    work = tmp_path / "data" / "smiling-hopper-expert-v0"
    assert json.loads((work / "train_metrics" / "metrics.json").read_text())["env_steps"] == 300
    assert not (work / "demos").exists()  # no expert was trained
    assert sorted(p.relative_to(STORE) for p in STORE.rglob("*")) == before  # the committed store is untouched
