"""DAC's discriminator reward and behaviour cloning, on small real problems."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml
from conftest import DEMOS_DATASET, assert_user_error, run_cli
from torch.nn import functional as F

from smiling_pipeline.baselines import DacReward, behaviour_cloning, dac_loss, gradient_penalty, scale_actions
from smiling_pipeline.config import BaselinesConfig, CostConfig, TrainConfig
from smiling_pipeline.cost import normalize_rewards

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
    a, b, alpha = torch.randn(64, 3), torch.randn(64, 3), torch.rand(64, 1)
    assert gradient_penalty(d, a, b, alpha).item() == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        d.weight.mul_(3.0)  # ||grad|| = 3 -> penalty (3 - 1)^2 = 4
    assert gradient_penalty(d, a, b, alpha).item() == pytest.approx(4.0, rel=1e-5)


class OfficialDac:
    """Direct transcription of ziqian2000/SMILING algorithm/dac.py (config/alg/dac.yaml defaults):
    the oracle the baseline is pinned to."""

    def __init__(self, obs_dim: int):
        self.model = torch.nn.Sequential(torch.nn.Linear(obs_dim, 256), torch.nn.LeakyReLU(), torch.nn.Linear(256, 1))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=0.005)

    def loss(self, policy_obs, expert_obs, alpha):
        policy_output, expert_output = self.model(policy_obs), self.model(expert_obs)
        zeros = torch.zeros(expert_output.shape[0], 1)
        ones = torch.ones(policy_output.shape[0], 1)
        loss_policy = F.binary_cross_entropy_with_logits(policy_output, zeros, reduction="mean")
        loss_expert = F.binary_cross_entropy_with_logits(expert_output, ones, reduction="mean")
        gan_loss = (loss_policy + loss_expert) / 2
        interpolated = alpha * policy_obs + (1 - alpha) * expert_obs
        interpolated.requires_grad = True
        output = self.model(interpolated)
        grad = torch.autograd.grad(outputs=output, inputs=interpolated, grad_outputs=torch.ones_like(output),
                                   create_graph=True, retain_graph=True)[0]
        grad_penalty = ((grad.norm(2, dim=1) - 1) ** 2).mean()
        return gan_loss + 10 * grad_penalty

    @torch.no_grad()
    def reward_fn(self, obs):
        return -torch.log(1.0 - torch.sigmoid(self.model(obs)) + 1e-8)  # reward_style gail, normalize_reward false


def test_dac_matches_the_official_loss_reward_and_update_on_a_fixed_batch():
    d = 11
    expert = torch.as_tensor(gaussian(1024, d, 0.0, 0) * 3.0)  # raw, unstandardised rows, as the official sees them
    learner = torch.as_tensor(gaussian(1024, d, 1.0, 1) * 3.0)
    alpha = torch.rand(1024, 1, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(7)
    official = OfficialDac(d)
    ours = DacReward(expert.numpy(), np.zeros(d), np.ones(d), CostConfig(), BaselinesConfig(), None, seed=7)
    assert [type(m) for m in ours.d] == [type(m) for m in official.model]
    ours.d.load_state_dict(official.model.state_dict())
    assert isinstance(ours.optimizer, torch.optim.AdamW) and ours.optimizer.defaults["lr"] == 0.005
    assert ours.optimizer.defaults["weight_decay"] == official.optimizer.defaults["weight_decay"]
    assert ours.penalty == 10.0 and ours.fit_steps == 98  # one epoch over 100k pairs at batch 1,024

    mine, theirs = dac_loss(ours.d, expert, learner, alpha, ours.penalty), official.loss(learner, expert, alpha)
    assert mine.item() == pytest.approx(theirs.item(), rel=1e-6)
    for optimizer, loss in ((ours.optimizer, mine), (official.optimizer, theirs)):  # one step each, same batch
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for a, b in zip(ours.d.parameters(), official.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

    rows = torch.cat([expert[:64], learner[:64]])
    r = ours.rewards(rows)
    torch.testing.assert_close(r, official.reward_fn(rows).squeeze(1), rtol=1e-6, atol=1e-6)
    assert torch.equal(normalize_rewards(r, ours.cfg), r)  # what the relabelling buffer hands SAC: unnormalised
    standardised = DacReward(expert.numpy(), np.full(d, 5.0), np.full(d, 2.0), CostConfig(),
                             BaselinesConfig(dac_standardize=True, dac_reward_norm="batch"), None, seed=7)
    assert torch.allclose(standardised.normalize(torch.full((1, d), 7.0)), torch.ones(1, d))
    assert normalize_rewards(r, standardised.cfg).std(correction=0).item() == pytest.approx(0.1, rel=1e-4)


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
            "baselines": {"dac_hidden": 32, "bc_steps": 400}, "iqlearn": {"net": [32, 32]}, "evaluate": {"video": False}}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("algorithm", ["dac", "bc", "iqlearn"])
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
    # without a video the folder and image the DVC stages declare still exist (a dvc exp with video off succeeds)
    assert list((work / "evaluate" / "video").iterdir()) == []
    assert (tmp_path / "reports" / "policy_frames.png").is_file() and "policy_frames.png" not in summary


def test_bc_without_actions_is_refused(recorded, monkeypatch, tmp_path):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(recorded["store"]))
    p = tiny_params(tmp_path / "p.yaml", algorithm="bc")
    assert_user_error(run_cli(["train", "--params", p, "--states-only"]), "BC needs expert actions", "--with-actions")
