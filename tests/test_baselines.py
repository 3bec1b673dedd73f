"""DAC's discriminator reward and behaviour cloning, on small real problems."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

from conftest import DEMOS_DATASET, assert_user_error, run_cli
from smiling_pipeline.baselines import DacReward, behaviour_cloning, discriminator, gradient_penalty, scale_actions
from smiling_pipeline.config import BaselinesConfig, CostConfig, TrainConfig

pytestmark = pytest.mark.timeout(600)


def gaussian(n: int, d: int, mean: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, d)) + mean).astype(np.float32)


def test_dac_reward_is_higher_on_expert_rows_and_positive():
    expert = gaussian(2000, 3, 0.0, 0)
    model = DacReward(expert, expert.mean(0), expert.std(0), CostConfig(),
                      BaselinesConfig(dac_hidden=32, dac_fit_steps=300), None)
    before = model.version
    model.refit(gaussian(2000, 3, 2.0, 1), TrainConfig(learner_fit_steps=1, learner_batch_size=256), 0)
    assert model.version == before + 1
    on_expert = model.rewards(torch.as_tensor(gaussian(500, 3, 0.0, 2)))
    on_learner = model.rewards(torch.as_tensor(gaussian(500, 3, 2.0, 3)))
    assert (on_expert > 0).all() and (on_learner > 0).all()  # -log(1 - sigmoid(D)) > 0
    assert on_expert.mean() > 2 * on_learner.mean()


def test_gradient_penalty_is_zero_for_unit_slope_and_positive_otherwise():
    d = torch.nn.Linear(3, 1)
    with torch.no_grad():
        d.weight.copy_(torch.tensor([[0.6, 0.8, 0.0]]))  # ||grad|| = 1 everywhere
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 3), torch.randn(64, 3)
    assert gradient_penalty(d, a, b, g).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        d.weight.mul_(3.0)  # ||grad|| = 3 -> penalty (3 - 1)^2 = 4
    assert gradient_penalty(d, a, b, g).item() == pytest.approx(4.0, rel=1e-5)
    assert isinstance(discriminator(5, 8)[-1], torch.nn.Linear)


def test_behaviour_cloning_recovers_a_linear_expert():
    from stable_baselines3 import SAC

    env = gym.make("InvertedPendulum-v5")
    states = gaussian(3000, 4, 0.0, 0) * 0.1
    actions = np.clip(states @ np.array([[5.0], [-8.0], [3.0], [-2.0]], dtype=np.float32), -3, 3)
    model = SAC("MlpPolicy", env, policy_kwargs={"net_arch": [64, 64]}, seed=0, device="cpu")
    test = gaussian(200, 4, 0.0, 9) * 0.1
    target = np.clip(test @ np.array([[5.0], [-8.0], [3.0], [-2.0]], dtype=np.float32), -3, 3)

    def error() -> float:
        predicted = np.stack([model.policy.predict(s, deterministic=True)[0] for s in test])
        return float(np.abs(predicted - target).mean())

    untrained = error()
    losses = behaviour_cloning(model.policy, states, actions, env.action_space,
                               BaselinesConfig(bc_steps=1500, bc_lr=3e-3), seed=0, eval_every=500)
    assert len(losses) == 3
    assert error() < 0.1 * untrained and error() < 0.1 * np.abs(target).mean(), (untrained, error())
    assert np.allclose(scale_actions(np.array([[-3.0], [3.0]]), env.action_space), [[-0.999], [0.999]])


def tiny_params(path, **train):
    data = {"ingest": {"dataset": DEMOS_DATASET, "num_states": 2000, "with_actions": True},
            "train": {"steps": 600, "learning_starts": 200, "iteration_steps": 200, "learner_fit_steps": 30,
                      "eval_every": 300, "eval_episodes": 2, "checkpoint_every": 600, "net": [32, 32], **train},
            "baselines": {"dac_hidden": 32, "bc_steps": 400}}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("algorithm", ["dac", "bc"])
def test_baselines_run_through_the_cli_and_log_like_smiling(recorded, monkeypatch, tmp_path, algorithm):
    import mlflow

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
    p = tiny_params(tmp_path / "p.yaml", algorithm=algorithm)
    run = run_cli(["train", "--params", p])
    assert run.exit_code == 0, run.output
    assert "pretraining" not in run.stderr  # baselines need no score model
    work = tmp_path / "data" / "smiling-invertedpendulum-expert-v0"
    info = json.loads((work / "train_metrics" / "run.json").read_text())
    assert info["algorithm"] == algorithm and (work / "train" / "policy.zip").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    train_run = client.get_run(info["mlflow_run_id"])
    assert train_run.data.tags["algorithm"] == algorithm and train_run.data.tags["variant"] == "state-action"
    assert len(client.get_metric_history(info["mlflow_run_id"], "normalized_return")) >= 2
    evaluation = run_cli(["evaluate", "--params", p])
    assert evaluation.exit_code == 0, evaluation.output
    report = run_cli(["report", "--params", p, "--out", tmp_path / "reports"])
    assert report.exit_code == 0, report.output
    summary = (tmp_path / "reports" / "summary.md").read_text()
    assert ("gradient steps on expert pairs" in summary) == (algorithm == "bc")


def test_bc_without_actions_is_refused(recorded, monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
    p = tiny_params(tmp_path / "p.yaml", algorithm="bc")
    assert_user_error(run_cli(["train", "--params", p, "--states-only"]), "BC needs expert actions", "--with-actions")
