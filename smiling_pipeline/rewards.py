"""Reward models: the imitation rewards the relabelling buffer (``rl``) asks for and refits every iteration.

:class:`RewardModel` is the interface (DAC's discriminator in ``baselines`` implements it too). SMILING's
reward comes in two estimators of the same quantity, chosen by ``cost.estimator``
(:func:`smiling_reward`):

- ``fast`` (:class:`SmilingReward`): K draws shared by every row and fixed for the run, so a row's reward
  is a fixed function of the row and the buffer caches it (``cost.py`` says why each choice);
- ``official`` (:class:`OfficialReward`): the official code's ``__reward_compute`` as it runs
  (ziqian2000/SMILING ``algorithm/diffusion.py``): every sampled batch is scored on the fixed grid of
  ``cost.timesteps`` timesteps over all of [0, T) with fresh noise for every (row, timestep) pair, and
  normalised with the unbiased std. Nothing is cached; its cost is K forward passes of both models
  per row of every batch. With the ``official-reward`` preset (raw states, all timesteps in training,
  K = 500) it is the official reward exactly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from smiling_pipeline.config import CostConfig, TrainConfig
from smiling_pipeline.cost import Draws, draw, grid_terms, model_errors, normalize_rewards
from smiling_pipeline.errors import UserError
from smiling_pipeline.score import FitSettings, GridTerms, ScoreModel, fit, save_model


class RewardModel(ABC):
    """An imitation reward refit on learner data every iteration: what the relabelling buffer and
    the refit callback need (SMILING here, DAC in ``baselines``)."""

    # whether a row's reward is a fixed function of the row while :attr:`version` stays the same (the
    # buffer then caches it); False: every sampled batch is scored afresh
    cacheable: bool = True

    def __init__(self, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int):
        self.cfg = cfg
        self.action_space = action_space  # set for the state-action variant
        self.version = 0  # bumped whenever the reward changes
        self.fixed_version = 0  # bumped whenever :meth:`fixed_part` changes (SMILING with new draws)
        self.evaluations = 0  # rows whose reward was computed (for the overhead benchmark)
        self.seed = seed

    def rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised rewards of input rows (states, or [state, action]); ``fixed``: their
        :meth:`fixed_part`, if already known."""
        self.evaluations += len(rows)
        return self._rewards(rows, fixed)

    def normalize_batch(self, r: torch.Tensor) -> torch.Tensor:
        """One sampled batch's rewards as SAC sees them (``cost.reward_norm``)."""
        return normalize_rewards(r, self.cfg)

    def fixed_part(self, rows: torch.Tensor) -> Optional[torch.Tensor]:
        """The part of each row's reward that stays the same while :attr:`fixed_version` does (cached
        per row by the buffer, passed back to :meth:`rewards`); None if there is none."""
        return None

    def halves(self, rows: torch.Tensor) -> Optional[dict[str, torch.Tensor]]:
        """The reward's additive parts by the model they come from (summing to the unnormalised reward), for
        diagnostics: which part follows the task and which works against it; None where there are none."""
        return None

    @abstractmethod
    def _rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        """Refit on all learner rows so far (warm start); returns the fit's final loss."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    @abstractmethod
    def save(self, path: Path) -> tuple[str, torch.nn.Module]:
        """Write the learned network to ``path`` (``train/reward_model.pt``); returns its MLflow model name
        and the network."""


class ScoreMatchingReward(RewardModel):
    """What both SMILING estimators share: the fixed expert score model and the learner score model,
    refit Follow-the-Leader style on the learner's rows (warm-started AdamW)."""

    def __init__(self, expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__(cfg, action_space, seed)
        self.expert = expert
        self.dtype = dtype  # of the refit's forward passes (and the fast estimator's output-layer matmuls)
        self.learner = expert.fresh_copy()  # same normalisation as the expert
        self.optimizer: Optional[torch.optim.Optimizer] = None

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        settings = FitSettings(cfg.learner_fit_steps, cfg.learner_batch_size, cfg.learner_lr,
                               eval_every=cfg.learner_fit_steps, dtype=self.dtype)
        self.optimizer, history = fit(self.learner, learner_rows, settings, seed=cfg.seed + iteration,
                                      optimizer=self.optimizer)
        self.version += 1
        return history.train[-1][1]

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "version": self.version, "fixed_version": self.fixed_version, "evaluations": self.evaluations}

    def save(self, path: Path) -> tuple[str, torch.nn.Module]:
        save_model(self.learner, path)
        return "learner_score_model", self.learner

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        if state["optimizer"] is not None:
            self.optimizer = torch.optim.AdamW(self.learner.parameters())
            self.optimizer.load_state_dict(state["optimizer"])
        self.version, self.evaluations = state["version"], state["evaluations"]
        self.fixed_version = state["fixed_version"]


class SmilingReward(ScoreMatchingReward):
    """The fast SMILING estimator (``cost.estimator: fast``).

    The estimator's K (timestep, noise) draws are shared by every row (common random numbers across
    all rows, not only within one relabelled chunk). With ``cost.draws: run`` they are made once per
    run from ``seed`` and a row's expert half (:meth:`fixed_part`) is computed once in its life; with
    ``refit`` they are made anew at every refit, so a row's estimation error changes between
    iterations (as with the official per-batch noise) and both halves are recomputed. Each model's
    per-draw terms are computed once per reward version (most calls relabel a handful of rows).
    """

    def __init__(self, expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__(expert, cfg, action_space, seed, dtype)
        self.draws = self._draw(seed)
        self._terms: dict[str, tuple[int, GridTerms]] = {}  # "expert" / "learner" -> (version, its grid terms)

    def _draw(self, seed: int) -> Draws:
        generator = torch.Generator(device=self.expert.mean.device).manual_seed(seed)
        return draw(self.expert.t_max, self.expert.dim, self.cfg.timesteps, self.cfg.antithetic, generator,
                    self.expert.mean.device)

    def _errors(self, name: str, rows: torch.Tensor) -> torch.Tensor:
        """``model_errors`` of the expert or learner model, its per-draw terms computed once per version."""
        model: ScoreModel = getattr(self, name)
        version, terms = self._terms.get(name, (None, None))
        if terms is None or version != self.version:
            terms = grid_terms(model, self.draws, self.dtype)
            self._terms[name] = (self.version, terms)
        return model_errors(model, rows, terms)

    def fixed_part(self, rows: torch.Tensor) -> torch.Tensor:
        """Minus the expert model's denoising error: the reward is the learner's error plus this."""
        return -self._errors("expert", rows)

    def _rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
        return self._errors("learner", rows) + (self.fixed_part(rows) if fixed is None else fixed)

    def halves(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """``expert``: minus the expert model's denoising error; ``learner``: the learner model's error."""
        return {"expert": self.fixed_part(rows), "learner": self._errors("learner", rows)}

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        loss = super().refit(learner_rows, cfg, iteration)
        if self.cfg.draws == "refit":
            self.draws = self._draw(self.seed + 1_000_003 * (iteration + 1))
            self.fixed_version += 1
        return loss

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "draws": {"t": self.draws.t, "eps": self.draws.eps}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._terms.clear()  # new weights, possibly under a version number seen before
        self.draws = Draws(state["draws"]["t"].to(self.draws.t), state["draws"]["eps"].to(self.draws.eps))


def official_grid(num_timesteps: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The official estimator's timesteps: ``0, T/K, 2T/K, ...`` (K of them over all of [0, T))."""
    if k < 1 or num_timesteps % k:
        raise UserError(f"cost.estimator official needs cost.timesteps to divide score.num_timesteps "
                        f"({num_timesteps}), got {k}; the official grid is 500 of 5000")
    return torch.arange(0, num_timesteps, num_timesteps // k, device=device, dtype=torch.int64)


class OfficialReward(ScoreMatchingReward):
    """The official SMILING reward computation (``cost.estimator: official``), for fidelity checks.

    For a batch of B rows: the rows tiled K times (``repeat(K, 1)``), the grid tiled B times
    (``grid.repeat(B)``), one fresh noise vector per tiled row, both models' mean squared noise errors,
    and the mean over the K tiled copies of each row. As in the official code, tiled row i pairs row
    ``i % B`` with grid timestep ``i % K``, so when gcd(B, K) > 1 a row sees K / gcd(B, K) distinct
    timesteps, each gcd(B, K) times with different noise (B = 256 or 1,024, K = 500: 125 of the 500).
    The noise comes from a generator seeded with the run's seed, saved with the model for resume.
    """

    cacheable = False

    def __init__(self, expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 dtype: torch.dtype = torch.float32, chunk_rows: Optional[int] = None):
        super().__init__(expert, cfg, action_space, seed, dtype)
        device = expert.mean.device
        self.grid = official_grid(expert.cfg.num_timesteps, cfg.timesteps, device)
        self.generator = torch.Generator(device=device).manual_seed(seed)
        # tiled rows per pass, rounded to whole grids (memory and speed only: the noise is drawn whole first); small
        # chunks stay in a CPU's cache, large ones keep an accelerator busy
        self.chunk_rows = chunk_rows or (2_048 if device.type == "cpu" else 131_072)

    def _rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
        parts = self.halves(rows)
        return parts["learner"] + parts["expert"]

    @torch.inference_mode()
    def halves(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both models' errors on the same tiled rows and noise: ``expert`` (negated) and ``learner``."""
        x0 = self.expert.normalize(rows)  # the identity with score.normalize: false (the official raw inputs)
        (b, d), k = x0.shape, len(self.grid)
        noise = torch.randn((b * k, d), generator=self.generator, device=x0.device)  # as the official tiled draw
        signal, spread = self.expert.sqrt_ab[self.grid, None], self.expert.sqrt_1mab[self.grid, None]
        terms = {name: getattr(self, name).time_terms(self.grid) for name in ("expert", "learner")}
        errors = {name: torch.empty(b * k, device=x0.device) for name in terms}
        source = torch.arange(b * k, device=x0.device) % b  # tiled row i is row i % B at grid timestep i % K
        step = max(1, self.chunk_rows // k) * k
        for i in range(0, b * k, step):
            j = slice(i, i + step)
            x_t = (x0[source[j]].view(-1, k, d) * signal + noise[j].view(-1, k, d) * spread).view(-1, d)
            for name, e in errors.items():
                e[j] = getattr(self, name).cycled_errors(x_t, noise[j], terms[name])
        return {"expert": -errors["expert"].view(k, b).mean(0), "learner": errors["learner"].view(k, b).mean(0)}

    def normalize_batch(self, r: torch.Tensor) -> torch.Tensor:
        """The official ``reward_fn``: ``(r - mean) / (std + 1e-6) * target_std`` with the unbiased std (other
        ``cost.reward_norm`` choices as for the fast estimator)."""
        if self.cfg.reward_norm != "batch":
            return super().normalize_batch(r)
        return (r - r.mean()) / (r.std() + 1e-6) * self.cfg.reward_std

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])


def smiling_reward(expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                   dtype: torch.dtype = torch.float32) -> ScoreMatchingReward:
    """The SMILING reward model around the pretrained ``expert``, with the estimator ``cfg.estimator`` names."""
    kinds: dict[str, type[ScoreMatchingReward]] = {"fast": SmilingReward, "official": OfficialReward}
    return kinds[cfg.estimator](expert, cfg, action_space, seed, dtype)
