"""The SMILING reward and the Diffusion Score (DS) divergence estimator.

For a state (or state-action row) s, with one shared noise draw for both score models,

    reward(s) = E_{t, eps} [ mean_d (eps_L(x_t, t) - eps)^2 - mean_d (eps_E(x_t, t) - eps)^2 ],

high where the expert model denoises s well and the learner model does not. Its mean over expert
samples is the (noise-form) DS divergence between expert and learner, because the cross term
vanishes for the expert's optimal denoiser.

How it is estimated (each choice measured in ``benchmarks/cost_estimator.py``):
- t only on the informative range ``[0, t_max)`` (``score.informative_steps``), where the score
  models are trained; the official grid spends 58 % of its samples on pure noise;
- K stratified timesteps (one per stratum of ``[0, t_max)``) and one noise vector per timestep,
  all shared by the rows compared and by both models (common random numbers: the draws' error is
  common to the rows and cancels when rewards are compared or normalised per batch). Training
  draws them once per run (``rewards.SmilingReward``), so every row of every sampled batch shares them
  and the expert's half of a row's reward is computed once in the row's life;
- antithetic noise: neighbouring strata use eps and -eps;
- x_t is linear in (x_0, eps), so each model's first layer costs a (B, H) and a (K, H) product
  instead of a (B*K, H) one (``ScoreModel.grid_errors``); the (K, H) part depends only on the
  draws and the weights (``grid_terms``), so training computes it once per model version; no autograd.

Compared with the official computation (K = 500 fixed grid, fresh per-row noise) on the same models
in ``reports/cost_estimator.md``: K = 32 is as accurate or more, at a fraction of the cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from smiling_pipeline.config import CostConfig, ScoreConfig
from smiling_pipeline.errors import DataError, UserError
from smiling_pipeline.score import FitSettings, GridTerms, ScoreModel, fit


def stratified_timesteps(t_max: int, k: int, generator: Optional[torch.Generator], device: torch.device) -> torch.Tensor:
    """One uniform timestep in each of ``k`` equal strata of ``[0, t_max)``."""
    u = torch.rand(k, generator=generator, device=device)
    return ((torch.arange(k, device=device) + u) * (t_max / k)).long().clamp_(max=t_max - 1)


def antithetic_noise(k: int, d: int, antithetic: bool, generator: Optional[torch.Generator],
                     device: torch.device) -> torch.Tensor:
    """One noise vector per timestep, shape (k, d); with ``antithetic`` draw 2j+1 is the negation of draw 2j."""
    if not antithetic or k < 2:
        return torch.randn(k, d, generator=generator, device=device)
    half = torch.randn((k + 1) // 2, d, generator=generator, device=device)
    return torch.stack([half, -half], dim=1).reshape(-1, d)[:k]


def _check_pair(expert: ScoreModel, learner: ScoreModel) -> None:
    """Both models must see the same inputs: dimension, timestep range and normalisation."""
    if expert.dim != learner.dim or expert.t_max != learner.t_max:
        raise DataError(f"expert (dim {expert.dim}) and learner (dim {learner.dim}) score models do not match")
    if not (torch.equal(expert.mean, learner.mean) and torch.equal(expert.std, learner.std)):
        raise DataError("expert and learner score models normalise differently; make the learner with "
                        "expert.fresh_copy() so both use the expert's statistics")


@dataclass(frozen=True)
class Draws:
    """The estimator's K (timestep, noise) pairs: ``t`` (K,) and ``eps`` (K, d)."""

    t: torch.Tensor
    eps: torch.Tensor


def draw(t_max: int, dim: int, k: int, antithetic: bool = True, generator: Optional[torch.Generator] = None,
         device: torch.device | str = "cpu") -> Draws:
    """K stratified timesteps on ``[0, t_max)`` with one (antithetic) noise vector each."""
    device = torch.device(device)
    return Draws(stratified_timesteps(t_max, k, generator, device), antithetic_noise(k, dim, antithetic, generator, device))


def grid_terms(model: ScoreModel, draws: Draws, dtype: torch.dtype = torch.float32) -> GridTerms:
    """The model's per-draw terms (reusable while its weights and the draws stay the same); ``dtype``
    of the output layer's matmul."""
    return model.grid_terms(draws.t, draws.eps, dtype)


def model_errors(model: ScoreModel, x_raw: torch.Tensor, terms: GridTerms) -> torch.Tensor:
    """One model's half of the reward: per row, the mean over the draws of mean_d (eps_theta(x_t, t) - eps)^2."""
    if x_raw.ndim != 2 or x_raw.shape[1] != model.dim:
        raise DataError(f"reward inputs must have shape (batch, {model.dim}), got {tuple(x_raw.shape)}")
    return model.grid_errors(model.normalize(x_raw), terms) / len(terms.signal)


def reward(
    expert: ScoreModel,
    learner: ScoreModel,
    x_raw: torch.Tensor,
    k: int = 32,
    antithetic: bool = True,
    generator: Optional[torch.Generator] = None,
    draws: Optional[Draws] = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-row SMILING reward (unnormalised) of raw inputs ``x_raw`` (B, d), estimated with K timesteps.

    The K (timestep, noise) draws (new ones, or the given ``draws``) are shared by all rows; each
    row's estimate is unbiased, and the draws' error is common to the rows, so it cancels when rows
    are compared. ``dtype``: of the output layers' matmuls (``runtime.resolve_precision``).
    """
    _check_pair(expert, learner)
    draws = draws or draw(expert.t_max, expert.dim, k, antithetic, generator, expert.mean.device)
    return (model_errors(learner, x_raw, grid_terms(learner, draws, dtype))
            - model_errors(expert, x_raw, grid_terms(expert, draws, dtype)))


CLIP_STD = 3.0  # cost.reward_norm: clip bounds a standardised reward at this many std


def normalize_rewards(r: torch.Tensor, cfg: CostConfig) -> torch.Tensor:
    """Per-batch normalisation to mean 0, std ``reward_std``: of the rewards as in the paper (``batch``), of their
    ranks (``rank``), clipped at ``CLIP_STD`` (``clip``), or none."""
    if cfg.reward_norm == "none":
        return r
    if cfg.reward_norm == "rank":
        r = torch.argsort(torch.argsort(r)).to(r.dtype)
    z = (r - r.mean()) / (r.std(correction=0) + 1e-8)
    return (z.clamp(-CLIP_STD, CLIP_STD) if cfg.reward_norm == "clip" else z) * cfg.reward_std


def fit_annealed(model: ScoreModel, x: np.ndarray, steps: int, seed: int = 0, every: int = 25) -> ScoreModel:
    """``score.fit`` (default ``FitSettings``) with the learning rate annealed from its start to 0 on a
    cosine, updated every ``every`` steps; returns ``model``.

    Why: at a constant learning rate the weights keep jittering, and the predictions' error is then as
    large as a small divergence (d = 4, 3,000 steps at 5e-3: mean squared distance to the optimal
    predictor 0.0016 per dimension, annealed 0.00025, against a divergence of 0.003-0.005).
    """
    settings = FitSettings(steps=steps, eval_every=every)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)

    def anneal(step: int, *_: object) -> None:
        for group in opt.param_groups:
            group["lr"] = settings.lr * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    fit(model, x, settings, seed=seed, optimizer=opt, on_eval=anneal)
    return model


@torch.inference_mode()
def independent_rewards(expert: ScoreModel, learner: ScoreModel, x_raw: torch.Tensor, k: int = 16,
                        generator: Optional[torch.Generator] = None, chunk: int = 8_192) -> torch.Tensor:
    """Per-row reward of raw inputs ``x_raw`` (B, d) from K draws of each row's own: one timestep in each
    of K strata of ``[0, t_max)`` and antithetic noise pairs (both models share them).

    For a *mean* over rows, unlike :func:`reward`'s draws shared by the rows: there the part of the
    reward linear in the noise is common to all rows and does not average out (10,000 rows of N(0, I_4):
    the mean's standard deviation 0.0026 with K = 256 shared draws, 0.00003 with K = 16 per row).
    """
    _check_pair(expert, learner)
    if x_raw.ndim != 2 or x_raw.shape[1] != expert.dim:
        raise DataError(f"reward inputs must have shape (batch, {expert.dim}), got {tuple(x_raw.shape)}")
    x0 = expert.normalize(x_raw)
    n, d, device = len(x0), expert.dim, x0.device
    out = torch.empty(n, device=device)
    rows = max(1, chunk // k)
    for i in range(0, n, rows):
        block = x0[i : i + rows]
        m = len(block)
        u = torch.rand(m, k, generator=generator, device=device)
        t = ((torch.arange(k, device=device) + u) * (expert.t_max / k)).long().clamp_(max=expert.t_max - 1).view(-1)
        half = torch.randn(m, (k + 1) // 2, d, generator=generator, device=device)
        eps = torch.stack([half, -half], dim=2).view(m, -1, d)[:, :k].reshape(m * k, d)
        x_t = expert.diffuse(block.repeat_interleave(k, dim=0), t, eps)
        r = ((learner(x_t, t) - eps) ** 2).mean(1) - ((expert(x_t, t) - eps) ** 2).mean(1)
        out[i : i + m] = r.view(m, k).mean(1)
    return out


def ds_divergence(
    p_samples: np.ndarray,
    q_samples: np.ndarray,
    steps: int = 3_000,
    k: int = 16,
    seed: int = 0,
    cfg: Optional[ScoreConfig] = None,
    folds: int = 2,
    anneal: bool = True,
) -> float:
    """Public API: estimate the DS divergence D(P, Q) from two sample arrays.

    Target: E_t E_{x_t~P_t} mean_d || eps*_Q - eps*_P ||^2, t uniform on the informative range, in
    P-normalised coordinates, i.e. (1 - abar_t) / d times the score-form integrand. Fits a score model
    to Q and, by ``folds``-fold cross-fitting, one to all of P but each fold; averages the reward of
    every P row, with the P model that did not see it, over K draws of its own.

    Why: the reward's mean is D plus the Q model's error minus the P model's error at P's rows. A P
    model scored on its own training rows errs less there (+10 % at D = 0.003-0.005), and a constant
    learning rate leaves errors as large as D itself (hence ``anneal``: :func:`fit_annealed`).
    ``folds=1`` fits one P model on all of P and scores its training rows. Cost: ``folds + 1`` fits
    of ``steps`` steps.
    """
    p = np.asarray(p_samples, dtype=np.float32)
    q = np.asarray(q_samples, dtype=np.float32)
    if p.ndim != 2 or q.ndim != 2 or p.shape[1] != q.shape[1]:
        raise DataError(f"samples must be 2-D arrays with the same number of columns, got {p.shape} and {q.shape}")
    if folds < 1:
        raise UserError(f"folds must be at least 1, got {folds}")
    if len(p) < 2 * folds:
        raise DataError(f"{len(p)} P samples are too few for {folds}-fold cross-fitting")
    cfg = cfg or ScoreConfig(normalize=True)  # the divergence is defined in P-normalised coordinates
    torch.manual_seed(seed)
    mean, std = p.mean(0), p.std(0)

    def fitted(x: np.ndarray, fit_seed: int) -> ScoreModel:
        model = ScoreModel(p.shape[1], cfg, mean, std)
        if anneal:
            return fit_annealed(model, x, steps, seed=fit_seed)
        fit(model, x, FitSettings(steps=steps), seed=fit_seed)
        return model

    learner = fitted(q, seed + 1)
    g = torch.Generator().manual_seed(seed)
    if folds == 1:
        return float(independent_rewards(fitted(p, seed), learner, torch.as_tensor(p), k, g).mean())
    fold = np.random.default_rng(seed).permutation(len(p)) % folds
    total = 0.0
    for j in range(folds):
        expert = fitted(p[fold != j], seed + 2 * j)
        total += float(independent_rewards(expert, learner, torch.as_tensor(p[fold == j]), k, g).sum())
    return total / len(p)
