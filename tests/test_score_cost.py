"""Score models and the SMILING cost against closed forms for Gaussian data.

For P = N(mu, s^2 I) the diffused P_t = N(sqrt(abar) mu, (abar s^2 + 1 - abar) I), so the optimal
epsilon-predictor's loss per dimension is abar s^2 / (abar s^2 + 1 - abar), and the noise-form DS
divergence between two isotropic Gaussians is (1 - abar) times the squared score difference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smiling_pipeline.config import CostConfig, ScoreConfig
from smiling_pipeline.cost import antithetic_noise, ds_divergence, normalize_rewards, reward, stratified_timesteps
from smiling_pipeline.errors import DataError
from smiling_pipeline.score import (
    FitSettings,
    ScoreModel,
    alphas_bar,
    evaluate_loss,
    fit,
    fit_score_model,
    informative_steps,
    load_model,
    save_model,
)

RAW = ScoreConfig(normalize=False)  # closed forms below are in the data's own coordinates
SMALL = ScoreConfig(normalize=False, hidden=64)  # enough for 2-D Gaussians, 4x faster to fit


def abar_range(cfg: ScoreConfig) -> np.ndarray:
    """abar_t on the informative range the models train and the estimator samples on."""
    return alphas_bar(cfg).numpy()[: informative_steps(cfg)]


def optimal_loss(s: float, cfg: ScoreConfig) -> float:
    a = abar_range(cfg)
    return float(np.mean(a * s**2 / (a * s**2 + 1 - a)))


def gaussian_ds(d: int, m: float, s: float, cfg: ScoreConfig) -> float:
    """Noise-form DS divergence D(N(0, I), N(m 1, s^2 I)) per dimension, averaged over t."""
    a = abar_range(cfg)
    v1, v2 = np.ones_like(a), a * s**2 + 1 - a
    per_dim = v1 * (1 / v2 - 1 / v1) ** 2 + (np.sqrt(a) * m) ** 2 / v2**2
    return float(np.mean((1 - a) * per_dim))


def gaussian(n: int, d: int, mean: float, std: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(n, d)) * std + mean).astype(np.float32)


def test_informative_range_of_the_paper_schedule():
    cfg = ScoreConfig()
    t_max = informative_steps(cfg)
    signal = alphas_bar(cfg).sqrt()
    assert 2000 < t_max < 2200  # about 42 % of T = 5000
    assert signal[t_max - 1] >= cfg.min_signal > signal[t_max]


def test_trained_loss_approaches_the_optimum():
    s = 0.5
    x = gaussian(20_000, 2, 1.0, s, seed=0)
    model = fit_score_model(x, RAW, steps=1_500, seed=0)
    val = torch.as_tensor(gaussian(20_000, 2, 1.0, s, seed=1))
    loss = evaluate_loss(model, val)
    best = optimal_loss(s, RAW)
    assert best <= loss * 1.01  # nothing beats the Bayes-optimal denoiser (up to sampling noise)
    assert loss < best * 1.10, (loss, best)  # within 10 % of it


def test_ds_divergence_matches_closed_form():
    d, m, s = 2, 1.0, 1.5
    p = gaussian(20_000, d, 0.0, 1.0, seed=0)
    q = gaussian(20_000, d, m, s, seed=1)
    estimate = ds_divergence(p, q, steps=1_000, cfg=SMALL)  # k = 16 draws per row
    exact = gaussian_ds(d, m, s, SMALL)
    assert estimate == pytest.approx(exact, rel=0.15), (estimate, exact)


def test_divergence_of_a_distribution_with_itself_is_near_zero():
    d, m, s = 2, 1.0, 1.5
    p1 = gaussian(20_000, d, 0.0, 1.0, seed=0)
    p2 = gaussian(20_000, d, 0.0, 1.0, seed=2)
    same = ds_divergence(p1, p2, steps=1_000, cfg=SMALL)
    assert abs(same) < 0.05 * gaussian_ds(d, m, s, SMALL), same


def test_reward_ranks_expert_like_states_above_others():
    d = 4
    p = gaussian(10_000, d, 0.0, 1.0, seed=0)
    q = gaussian(10_000, d, 2.0, 1.0, seed=1)
    expert = ScoreModel(d, ScoreConfig(), p.mean(0), p.std(0))
    learner = expert.fresh_copy()
    fit(expert, p, FitSettings(steps=800), seed=0)
    fit(learner, q, FitSettings(steps=800), seed=1)
    rp = reward(expert, learner, torch.as_tensor(gaussian(300, d, 0.0, 1.0, seed=5)), k=32)
    rq = reward(expert, learner, torch.as_tensor(gaussian(300, d, 2.0, 1.0, seed=6)), k=32)
    assert rp.mean() > 0 > rq.mean()
    pairs = (rp[:, None] > rq[None, :]).float().mean()  # AUC of the reward as an expert detector
    assert pairs > 0.95, float(pairs)


def test_estimator_is_unbiased_in_k():
    """Small-K estimates average to the large-K value (stratification and antithetics add no bias)."""
    d = 3
    p = gaussian(5_000, d, 0.0, 1.0, seed=0)
    expert = ScoreModel(d, ScoreConfig(), p.mean(0), p.std(0))
    learner = expert.fresh_copy()
    fit(expert, p, FitSettings(steps=300), seed=0)
    fit(learner, gaussian(5_000, d, 1.0, 1.0, seed=1), FitSettings(steps=300), seed=1)
    x = torch.as_tensor(gaussian(64, d, 0.5, 1.0, seed=3))
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([reward(expert, learner, x, k=4, generator=g) for _ in range(400)])
    big = torch.stack([reward(expert, learner, x, k=1024, generator=g) for _ in range(4)])
    se = torch.sqrt(draws.var(0) / len(draws) + big.var(0) / len(big))
    z = (draws.mean(0) - big.mean(0)) / se
    assert z.abs().max() < 4.5, z  # 64 states: |z| > 4.5 has probability ~4e-4 without bias
    assert abs(float(z.mean())) < 4.5 / 8, float(z.mean())  # no common shift either


def test_stratified_timesteps_and_antithetic_noise():
    g = torch.Generator().manual_seed(0)
    t = stratified_timesteps(1000, 10, g, torch.device("cpu"))
    assert torch.equal(t // 100, torch.arange(10))  # exactly one per stratum
    eps = antithetic_noise(6, 3, True, g, torch.device("cpu"))
    assert eps.shape == (6, 3) and torch.equal(eps[1::2], -eps[0::2])


@pytest.mark.parametrize("cfg", [ScoreConfig(hidden=32), ScoreConfig(hidden=16, depth=2), ScoreConfig(linear=True)])
def test_grid_errors_equal_the_plain_computation(cfg):
    """The split-first-layer evaluation gives what diffusing every (state, timestep) row would."""
    model = ScoreModel(3, cfg, np.ones(3), np.full(3, 2.0))
    x0 = model.normalize(torch.randn(7, 3))
    t = torch.tensor([0, 5, 300, 2000, 17])
    eps = torch.randn(5, 3)
    with torch.no_grad():
        # chunks of 3 (rows 3, 3, 1 one draw at a time), 14 (all rows, 2 draws) and all 35 (row, draw) pairs
        terms = model.grid_terms(t, eps)
        fast = [model.grid_errors(x0, terms, chunk_bytes=4 * pairs * (cfg.hidden + 3)) for pairs in (3, 14, 35)]
        rows_x = x0.repeat(5, 1)
        rows_t = t.repeat_interleave(7)
        rows_e = eps.repeat_interleave(7, dim=0)
        plain = ((model(model.diffuse(rows_x, rows_t, rows_e), rows_t) - rows_e) ** 2).mean(1).view(5, 7).sum(0)
    for errors in fast:
        assert torch.allclose(errors, plain, rtol=1e-5, atol=1e-6)
    assert model.grid_errors(x0[:0], terms).shape == (0,)


@pytest.mark.parametrize("cfg", [ScoreConfig(hidden=32), ScoreConfig(hidden=16, depth=2), ScoreConfig(linear=True)])
def test_cycled_errors_equal_the_plain_computation(cfg):
    """The official estimator's pass (timesteps cycling through a grid, time terms added once per grid) gives
    what the plain forward pass does on the same noisy rows."""
    model = ScoreModel(3, cfg, np.ones(3), np.full(3, 2.0))
    t = torch.tensor([0, 5, 300, 2000, 17])
    x_t, eps = torch.randn(15, 3), torch.randn(15, 3)  # 3 cycles of the 5 timesteps
    with torch.no_grad():
        plain = ((model(x_t, t.repeat(3)) - eps) ** 2).mean(1)
        assert torch.allclose(model.cycled_errors(x_t, eps, model.time_terms(t)), plain, rtol=1e-5, atol=1e-6)


def test_bfloat16_output_layers_round_only_and_only_on_large_chunks():
    """``dtype=bfloat16`` changes the reward by rounding (well under 1 % of its scale) where the narrower
    matmul pays (wide inputs, big chunks); small calls and narrow inputs stay float32 exactly."""
    torch.manual_seed(0)
    expert = ScoreModel(40, ScoreConfig(), np.zeros(40), np.ones(40))
    learner = expert.fresh_copy()
    x = torch.randn(256, 40)
    full, narrow = (reward(expert, learner, x, generator=torch.Generator().manual_seed(3), dtype=dtype)
                    for dtype in (torch.float32, torch.bfloat16))
    assert not torch.equal(full, narrow)  # the bfloat16 path ran
    assert float((narrow - full).abs().max()) < 1e-2 * float(full.abs().max())
    assert np.corrcoef(full.numpy(), narrow.numpy())[0, 1] > 0.999
    narrow_inputs = ScoreModel(17, ScoreConfig(), np.zeros(17), np.ones(17))
    for e, lrn, rows in ((expert, learner, x[:1]), (narrow_inputs, narrow_inputs.fresh_copy(), torch.randn(256, 17))):
        assert torch.equal(*(reward(e, lrn, rows, generator=torch.Generator().manual_seed(3), dtype=dtype)
                             for dtype in (torch.float32, torch.bfloat16)))


def test_bfloat16_fitting_matches_float32():
    """Mixed-precision fitting (autocast) reaches the float32 fit's validation loss; below
    ``NARROW_MIN_DIM`` inputs (where it would be slower) the fit stays float32 exactly."""
    for d, narrow in ((40, True), (2, False)):
        x, val = gaussian(8_000, d, 1.0, 0.5, seed=0), torch.as_tensor(gaussian(8_000, d, 1.0, 0.5, seed=1))
        losses = {}
        for dtype in (torch.float32, torch.bfloat16):
            torch.manual_seed(0)
            model = ScoreModel(d, SMALL)
            before = evaluate_loss(model, val)
            fit(model, x, FitSettings(steps=300, dtype=dtype), seed=0)
            losses[dtype] = evaluate_loss(model, val)
            assert losses[dtype] < 0.5 * before
        assert (losses[torch.bfloat16] != losses[torch.float32]) == narrow, losses
        assert abs(losses[torch.bfloat16] - losses[torch.float32]) < 0.03 * losses[torch.float32], losses


def test_rank_normalisation_keeps_a_spike_from_squashing_the_batch_and_clip_bounds_it():
    """A batch of small differences and one row 1,000x off (the heavy tail seen in HalfCheetah runs): per-batch
    std normalisation shrinks the others' spread to ~0.001 and hands the spike -1.6; ranks keep the others' spread
    at the target; clipping keeps batch's spread and bounds the spike at 3 std."""
    r = torch.cat([torch.linspace(-0.01, 0.01, 255, dtype=torch.float64), torch.tensor([-10.0], dtype=torch.float64)])
    spread = {how: normalize_rewards(r, CostConfig(reward_norm=how))[:255].std().item()
              for how in ("batch", "rank", "clip")}
    assert spread["batch"] < 0.002 and spread["rank"] > 0.09 and spread["clip"] == spread["batch"], spread
    assert normalize_rewards(r, CostConfig(reward_norm="batch"))[-1].item() < -1.5
    for how in ("batch", "rank", "clip"):
        z = normalize_rewards(r, CostConfig(reward_norm=how))
        assert torch.argsort(z[:255]).tolist() == list(range(255))  # the order of the rows is kept
        if how != "clip":
            assert z.mean().item() == pytest.approx(0, abs=1e-9) and z.std(correction=0).item() == pytest.approx(0.1)
    ranks = normalize_rewards(r, CostConfig(reward_norm="rank"))
    assert torch.equal(ranks, normalize_rewards(torch.exp(r), CostConfig(reward_norm="rank")))  # monotone-invariant
    assert normalize_rewards(r, CostConfig(reward_norm="clip")).abs().max().item() == pytest.approx(0.3)
    assert torch.equal(normalize_rewards(r, CostConfig(reward_norm="none")), r)


def test_reward_rejects_mismatched_inputs():
    model = ScoreModel(3, ScoreConfig())
    with pytest.raises(DataError):
        reward(model, model.fresh_copy(), torch.zeros(4, 5))
    with pytest.raises(DataError):
        reward(model, ScoreModel(4, ScoreConfig()), torch.zeros(4, 3))


def test_linear_variant_is_affine_in_its_input():
    model = ScoreModel(5, ScoreConfig(linear=True))
    assert not any(isinstance(m, torch.nn.LeakyReLU) for m in model.modules())
    x1, x2 = torch.randn(8, 5), torch.randn(8, 5)
    t = torch.full((8,), 100)
    with torch.no_grad():
        lhs = model(x1 + x2, t) + model(torch.zeros(8, 5), t)
        rhs = model(x1, t) + model(x2, t)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    nonlinear = ScoreModel(5, ScoreConfig())
    with torch.no_grad():
        gap = (nonlinear(x1 + x2, t) + nonlinear(torch.zeros(8, 5), t) - nonlinear(x1, t) - nonlinear(x2, t)).abs().max()
    assert gap > 1e-4


def test_normalisation_never_magnifies_more_than_min_std_allows():
    model = ScoreModel(2, ScoreConfig(normalize=True, min_std=0.1), np.zeros(2), np.array([0.001, 5.0]))
    assert torch.allclose(model.std, torch.tensor([0.1, 5.0]))


def test_save_and_load_round_trip(tmp_path):
    model = fit_score_model(gaussian(500, 3, 0.0, 1.0, seed=0), ScoreConfig(hidden=32), steps=20)
    save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt")
    x, t = torch.randn(4, 3), torch.tensor([0, 10, 100, 1000])
    with torch.no_grad():
        assert torch.equal(model(x, t), loaded(x, t))
    assert torch.equal(model.std, loaded.std) and loaded.cfg == model.cfg


def test_fit_rejects_bad_data():
    with pytest.raises(DataError):
        fit_score_model(np.array([[0.0, np.nan]]), steps=1)
    model = ScoreModel(3, ScoreConfig())
    with pytest.raises(DataError):
        fit(model, np.zeros((10, 4), dtype=np.float32), FitSettings(steps=1))
