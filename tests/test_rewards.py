"""The reward models behind the relabelling buffer: the official estimator pinned to the official formula,
and what the buffer does with a reward that is not a fixed function of the row."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from smiling_pipeline.config import CostConfig, Params, ScoreConfig, TrainConfig, apply_presets, check
from smiling_pipeline.errors import UserError
from smiling_pipeline.rewards import OfficialReward, SmilingReward, official_grid, smiling_reward
from smiling_pipeline.score import ScoreModel

OFFICIAL = apply_presets(Params(), ["official-reward"])


def official_reward_fn(expert, current, obs, t_sample_cnt, num_train_timesteps, target_std, generator):
    """A direct transcription of ziqian2000/SMILING ``Diff.__reward_compute`` and ``Diff.reward_fn`` (2-D
    inputs), with diffusers' DDPMScheduler(num_train_timesteps) defaults (linear betas 1e-4..0.02, float32)
    written out for ``add_noise``; the noise comes from ``generator``."""
    betas = torch.linspace(0.0001, 0.02, num_train_timesteps, dtype=torch.float32)
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    batch_size = obs.shape[0]
    t_obs = obs.repeat(t_sample_cnt, 1)
    timesteps = torch.arange(0, num_train_timesteps, num_train_timesteps // t_sample_cnt,
                             dtype=torch.int64).repeat(batch_size)
    noise = torch.randn(t_obs.shape, generator=generator)
    sqrt_alpha_prod = (alphas_cumprod[timesteps] ** 0.5).flatten().unsqueeze(-1)
    sqrt_one_minus_alpha_prod = ((1 - alphas_cumprod[timesteps]) ** 0.5).flatten().unsqueeze(-1)
    noisy_obs = sqrt_alpha_prod * t_obs + sqrt_one_minus_alpha_prod * noise
    expert_pred = expert(noisy_obs, timesteps)
    current_pred = current(noisy_obs, timesteps)
    term1 = torch.mean((expert_pred - noise) ** 2, axis=1, keepdim=True)
    term2 = torch.mean((current_pred - noise) ** 2, axis=1, keepdim=True)
    reward = term2 - term1
    reward = reward.view(t_sample_cnt, batch_size).mean(dim=0)
    r = reward.unsqueeze(1)
    return ((r - r.mean()) / (r.std() + 1e-6) * target_std).squeeze(1)


def official_pair(dim: int = 5, seed: int = 0) -> OfficialReward:
    torch.manual_seed(seed)
    expert = ScoreModel(dim, OFFICIAL.score, np.ones(dim), np.full(dim, 3.0))  # statistics unused: raw inputs
    model = OfficialReward(expert, OFFICIAL.cost, None, seed=7, chunk_rows=1_000)  # chunked: same draws as whole
    with torch.no_grad():
        for w in model.learner.parameters():
            w.add_(0.3 * torch.randn_like(w))
    return model


def test_the_official_reward_is_the_official_formula_on_a_fixed_batch():
    model = official_pair()
    x = torch.randn(12, 5) * torch.tensor([1.0, 5.0, 0.1, 20.0, 1.0])  # raw scales, as the official code sees them
    ours = model.normalize_batch(model.rewards(x))
    with torch.no_grad():
        theirs = official_reward_fn(model.expert, model.learner, x, 500, 5000, 0.1, torch.Generator().manual_seed(7))
    assert torch.allclose(ours, theirs, atol=2e-5), (ours - theirs).abs().max()
    assert ours.std().item() == pytest.approx(0.1, rel=1e-3)


def test_the_official_preset_is_raw_states_all_timesteps_and_the_500_grid():
    model = official_pair()
    assert model.expert.t_max == 5000  # trained on every t
    assert torch.equal(model.expert.mean, torch.zeros(5)) and torch.equal(model.expert.std, torch.ones(5))
    assert torch.equal(model.grid, torch.arange(0, 5000, 10))
    assert isinstance(smiling_reward(model.expert, OFFICIAL.cost, None), OfficialReward)
    assert isinstance(smiling_reward(model.expert, CostConfig(), None), SmilingReward)


def test_each_batch_gets_fresh_noise_and_the_buffer_never_caches_it():
    from gymnasium.spaces import Box

    from smiling_pipeline.rl import SmilingReplayBuffer

    model = official_pair()
    buffer = SmilingReplayBuffer(20, Box(-10, 10, (5,)), Box(-1, 1, (1,)), device="cpu")
    for i in range(10):
        buffer.add(np.full((1, 5), i / 10, np.float32), np.zeros((1, 5), np.float32), np.zeros((1, 1), np.float32),
                   np.zeros(1), np.zeros(1), [{}])
    buffer.reward_model = model
    idx = np.arange(10)
    first, second = buffer.rewards_at(idx), buffer.rewards_at(idx)
    assert not np.allclose(first, second)  # fresh noise: the same rows score differently
    assert np.corrcoef(first, second)[0, 1] > 0.5  # but it is the same reward
    assert model.evaluations == 20


def test_resume_restores_the_noise_stream():
    a, b = official_pair(), official_pair()
    x = torch.randn(4, 5)
    a.rewards(x)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.rewards(x), b.rewards(x))


def test_the_official_grid_must_divide_the_schedule():
    with pytest.raises(UserError, match="divide"):
        official_grid(5000, 32)
    p = dataclasses.replace(OFFICIAL, cost=dataclasses.replace(OFFICIAL.cost, timesteps=32))
    with pytest.raises(UserError, match="must divide it"):
        check(p)


def test_the_official_refit_trains_the_learner_on_every_timestep():
    model = official_pair()
    rows = np.random.default_rng(0).normal(size=(256, 5)).astype(np.float32)
    before = model.version
    loss = model.refit(rows, TrainConfig(learner_fit_steps=3, learner_batch_size=64), iteration=0)
    assert np.isfinite(loss) and model.version == before + 1
    assert model.learner.t_max == ScoreConfig().num_timesteps


def test_the_halves_sum_to_the_reward_in_both_estimators():
    x = torch.randn(16, 5)
    fast = SmilingReward(official_pair().expert, CostConfig(), None, seed=3)
    with torch.no_grad():
        for w in fast.learner.parameters():
            w.add_(0.3 * torch.randn_like(w))
    parts = fast.halves(x)
    torch.testing.assert_close(parts["expert"] + parts["learner"], fast.rewards(x))
    assert (parts["expert"] < 0).all() and (parts["learner"] > 0).all()  # minus one model's error, the other's error
    a, b = official_pair(), official_pair()  # same weights and noise stream
    parts = a.halves(x)
    torch.testing.assert_close(parts["expert"] + parts["learner"], b.rewards(x))


def test_each_refit_reports_how_each_half_follows_the_true_reward():
    """The true reward set to the expert half itself: that half correlates perfectly, the learner half is
    measured too, and a reward without halves (DAC) reports NaN."""
    from gymnasium.spaces import Box

    from smiling_pipeline.baselines import DacReward
    from smiling_pipeline.config import BaselinesConfig
    from smiling_pipeline.rl import LearnerRefit, SmilingReplayBuffer

    model = SmilingReward(official_pair().expert, CostConfig(), None, seed=3)
    rows = np.random.default_rng(0).normal(size=(64, 5)).astype(np.float32)
    true = model.halves(torch.as_tensor(rows))["expert"].numpy()
    buffer = SmilingReplayBuffer(100, Box(-10, 10, (5,)), Box(-1, 1, (1,)), device="cpu")
    for i, (row, r) in enumerate(zip(rows, true, strict=True)):  # episodes of 16 steps
        buffer.add(row[None], row[None], np.zeros((1, 1), np.float32), np.array([r]), np.array([i % 16 == 15]), [{}])
    buffer.reward_model = model
    cfg = TrainConfig(learner_fit_steps=5, learner_batch_size=32)
    stats = LearnerRefit(model, cfg, rows)(buffer, 64)
    assert stats.reward_true_corr_expert == pytest.approx(1.0)
    assert -1 <= stats.reward_true_corr_learner < 1 and -1 <= stats.reward_true_corr < 1
    assert -1 <= stats.reward_rtg_corr <= 1
    dac = DacReward(rows, rows.mean(0), rows.std(0), CostConfig(), BaselinesConfig(), None)
    buffer.reward_model = dac
    stats = LearnerRefit(dac, cfg, rows)(buffer, 64)
    assert np.isnan(stats.reward_true_corr_expert) and np.isfinite(stats.reward_true_corr)


def test_return_to_go_discounts_to_each_episodes_end_and_leaves_the_unfinished_one_out():
    from smiling_pipeline.rl import return_to_go

    rtg = return_to_go(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([False, True, False, True, False]), 0.5)
    np.testing.assert_allclose(rtg[:4], [1 + 0.5 * 2, 2, 3 + 0.5 * 4, 4])
    assert np.isnan(rtg[4])
