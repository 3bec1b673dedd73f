"""Reference estimators of the SMILING reward, for benchmarks and as test oracles.

All functions are pure: they read two trained score models and a batch of raw states, draw every
random number from the ``generator`` (or ``seed``) they are given, and return one reward per state
(learner error minus expert error, averaged over timesteps and noise). They use only these members
of the models (``smiling_pipeline.score.ScoreModel`` has them): ``normalize(x)``, ``diffuse(x0, t,
eps)``, ``sqrt_ab`` / ``sqrt_1mab`` (per-timestep schedule tensors), ``t_max``, ``cfg.num_timesteps``
and ``model(x_t, t)`` (the predicted noise).

- ``official_reward``: ``Diff.__reward_compute`` of ziqian2000/SMILING, line for line (K = 500 grid).
- ``per_state_reward``: shared stratified timesteps, fresh noise per (state, timestep); the design
  ``smiling_pipeline.cost.reward`` had at commit b806158.
- ``shared_noise_plain``: what ``smiling_pipeline.cost.reward`` computes (one noise vector per
  timestep, shared by the batch), written the plain way: x_t built, both nets on every row.
- ``truth``: a high-sample estimate with independent stratified timesteps and noise per state.
"""

from __future__ import annotations

import math

import numpy as np
import torch

OFFICIAL_K = 500  # the official ``t_sample_cnt``


def stratified_timesteps(t_max: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """One uniform integer timestep in each of ``k`` equal strata of ``[0, t_max)``, shape (k,).

    The same draws as ``smiling_pipeline.cost.stratified_timesteps`` on CPU (one ``torch.rand(k)``).
    """
    u = torch.rand(k, generator=generator)
    return ((torch.arange(k) + u) * (t_max / k)).long().clamp_(max=t_max - 1)


def antithetic_noise(k: int, d: int, antithetic: bool, generator: torch.Generator | None) -> torch.Tensor:
    """One noise vector per timestep, shape (k, d); with ``antithetic``, row 2j+1 is the negation of row 2j.

    The same draws as ``smiling_pipeline.cost.antithetic_noise`` on CPU.
    """
    if not antithetic or k < 2:
        return torch.randn(k, d, generator=generator)
    half = torch.randn((k + 1) // 2, d, generator=generator)
    return torch.stack([half, -half], dim=1).reshape(-1, d)[:k]


def distinct_official_timesteps(batch: int, k: int = OFFICIAL_K) -> int:
    """Distinct grid timesteps one state sees under the official tiling: ``k / gcd(batch, k)``."""
    return k // math.gcd(batch, k)


@torch.no_grad()
def official_reward(expert, learner, x_raw: torch.Tensor, generator: torch.Generator,
                    t_sample_cnt: int = OFFICIAL_K) -> torch.Tensor:
    """``Diff.__reward_compute`` of ziqian2000/SMILING (``algorithm/diffusion.py``), line for line.

    Fixed grid ``arange(0, T, T // K)``; ``obs.repeat(K, 1)`` tiled against ``grid.repeat(batch)``
    (row r pairs state ``r % batch`` with grid step ``r % K``, so each state sees only
    ``distinct_official_timesteps(batch)`` grid points, each with K / that many noise draws: 125 x 4
    at batch 256); fresh noise per row; both nets on batch*K rows; ``view(K, batch).mean(0)``.

    One deviation: ``obs`` is the *normalised* state (``expert.normalize``), because the models it
    is compared on were trained on normalised states; the official code feeds raw states.
    ``expert.diffuse`` is diffusers' ``DDPMScheduler.add_noise`` with the same linear betas
    (1e-4..0.02, T = 5000). Returns a (batch,) tensor.
    """
    obs = expert.normalize(x_raw)  # deviation: the official code feeds raw states
    T = expert.cfg.num_timesteps
    assert T % t_sample_cnt == 0
    batch_size = obs.shape[0]
    t_obs = obs.repeat(t_sample_cnt, 1)  # [bs * K, d]: row r holds state r % bs
    timesteps = torch.arange(0, T, T // t_sample_cnt, dtype=torch.int64).repeat(batch_size)  # row r: grid[r % K]
    noise = torch.randn(t_obs.shape, generator=generator)
    noisy_obs = expert.diffuse(t_obs, timesteps, noise)
    expert_pred = expert(noisy_obs, timesteps)
    current_pred = learner(noisy_obs, timesteps)
    term1 = torch.mean((expert_pred - noise) ** 2, dim=1, keepdim=True)
    term2 = torch.mean((current_pred - noise) ** 2, dim=1, keepdim=True)
    reward = term2 - term1
    return reward.view(t_sample_cnt, batch_size).mean(dim=0)


@torch.inference_mode()
def per_state_reward(expert, learner, x_raw: torch.Tensor, k: int, antithetic: bool,
                     generator: torch.Generator, chunk_rows: int = 2_048) -> torch.Tensor:
    """K stratified timesteps on ``[0, t_max)`` shared by the batch, fresh noise per (state, timestep).

    With ``antithetic``, neighbouring strata 2j, 2j+1 use a noise draw and its negation (per state).
    Both nets run on all B*K rows, ``chunk_rows`` rows at a time (the chunking changes the speed,
    not the result). Returns a (batch,) tensor.
    """
    x0 = expert.normalize(x_raw)
    n, d = x0.shape
    t = stratified_timesteps(expert.t_max, k, generator)
    if antithetic and k >= 2:
        half = torch.randn((k + 1) // 2, n, d, generator=generator)
        eps = torch.stack([half, -half], dim=1).reshape(-1, n, d)[:k]
    else:
        eps = torch.randn(k, n, d, generator=generator)
    out = torch.zeros(n)
    step = max(1, chunk_rows // n)
    for i in range(0, k, step):
        tk, ek = t[i : i + step], eps[i : i + step]
        m = len(tk)
        x_t = (expert.sqrt_ab[tk, None, None] * x0 + expert.sqrt_1mab[tk, None, None] * ek).reshape(m * n, d)
        t_rows = tk.repeat_interleave(n)
        e = ek.reshape(m * n, d)
        err_l = ((learner(x_t, t_rows) - e) ** 2).mean(dim=1)
        err_e = ((expert(x_t, t_rows) - e) ** 2).mean(dim=1)
        out += (err_l - err_e).reshape(m, n).sum(dim=0)
    return out / k


@torch.inference_mode()
def shared_noise_plain(expert, learner, x_raw: torch.Tensor, k: int, antithetic: bool,
                       generator: torch.Generator) -> torch.Tensor:
    """K stratified timesteps on ``[0, t_max)`` and one noise vector per timestep, all shared by the batch.

    The estimator of ``smiling_pipeline.cost.reward``, computed the plain way (x_t built, both nets
    on all K*B rows): with the same generator state it must return the same rewards up to float
    rounding. Returns a (batch,) tensor.
    """
    x0 = expert.normalize(x_raw)
    n, d = x0.shape
    t = stratified_timesteps(expert.t_max, k, generator)
    eps = antithetic_noise(k, d, antithetic, generator)  # (k, d)
    x_t = (expert.sqrt_ab[t, None, None] * x0 + expert.sqrt_1mab[t, None, None] * eps[:, None, :]).reshape(k * n, d)
    t_rows, e = t.repeat_interleave(n), eps.repeat_interleave(n, dim=0)
    diff = ((learner(x_t, t_rows) - e) ** 2).mean(1) - ((expert(x_t, t_rows) - e) ** 2).mean(1)
    return diff.view(k, n).mean(0)


@torch.inference_mode()
def truth(expert, learner, x_raw: torch.Tensor, t_hi: int, k: int, seed: int,
          chunk_rows: int = 4_096) -> tuple[np.ndarray, np.ndarray]:
    """High-sample reward: for every state independently, ``k`` timesteps stratified on ``[0, t_hi)`` and i.i.d. noise.

    Its expectation is the reward with t uniform on ``[0, t_hi)``. Returns the estimate, shape
    (batch,), and its two halves (even and odd strata, each itself stratified), shape (2, batch),
    for a split-half reliability.
    """
    g = torch.Generator().manual_seed(seed)
    x0 = expert.normalize(x_raw.to(torch.float32))
    n, d = x0.shape
    halves = torch.zeros(2, n, dtype=torch.float64)
    step = max(2, (chunk_rows // n) // 2 * 2)
    for j0 in range(0, k, step):
        m = min(step, k - j0)
        strata = torch.arange(j0, j0 + m)
        u = torch.rand(m, n, generator=g)
        t = ((strata[:, None] + u) * (t_hi / k)).long().clamp_(max=t_hi - 1)  # (m, n), independent per state
        eps = torch.randn(m, n, d, generator=g)
        x_t = expert.sqrt_ab[t][..., None] * x0 + expert.sqrt_1mab[t][..., None] * eps
        rows, tr, er = x_t.reshape(m * n, d), t.reshape(-1), eps.reshape(m * n, d)
        diff = (((learner(rows, tr) - er) ** 2).mean(1) - ((expert(rows, tr) - er) ** 2).mean(1)).view(m, n).double()
        halves[0] += diff[strata % 2 == 0].sum(0)
        halves[1] += diff[strata % 2 == 1].sum(0)
    total = (halves.sum(0) / k).numpy()
    return total, (halves / torch.tensor([[(k + 1) // 2], [k // 2]])).numpy()
