"""SB3 integration: a replay buffer that relabels sampled rewards with the SMILING cost, and the
callback that refits the learner score model every iteration (Follow-the-Leader on learner states).

Within an iteration the expert and learner models are fixed, so a state's reward is a fixed
function of the state: the buffer caches each row's reward for the current model version and only
evaluates rows that are stale. One SAC update of batch 256 then costs, on average, far less than
256 reward evaluations (``benchmarks/`` measures it); per-batch normalisation is applied after.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from smiling_pipeline.config import CostConfig, TrainConfig
from smiling_pipeline.cost import normalize_rewards, reward
from smiling_pipeline.score import FitSettings, ScoreModel, fit

RewardFn = Callable[[torch.Tensor], torch.Tensor]


def score_inputs(obs: torch.Tensor, actions: torch.Tensor, action_space: Optional[gym.spaces.Box]) -> torch.Tensor:
    """Rows the score models see: states, or [state, env action] when ``action_space`` is given.

    SB3 stores actions rescaled to [-1, 1]; the expert data holds environment actions, so they are
    mapped back with the space's bounds.
    """
    if action_space is None:
        return obs
    low = torch.as_tensor(action_space.low, device=actions.device)
    high = torch.as_tensor(action_space.high, device=actions.device)
    return torch.cat([obs, low + 0.5 * (actions + 1.0) * (high - low)], dim=1)


@dataclass
class CostState:
    """The models and estimator settings shared by the buffer and the refit callback."""

    expert: ScoreModel
    learner: ScoreModel
    cfg: CostConfig
    action_space: Optional[gym.spaces.Box]  # set for the state-action variant
    seed: int = 0
    version: int = 0  # bumped whenever the learner model changes
    evaluations: int = 0  # rows whose reward was computed (for the overhead benchmark)
    generator: torch.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.generator = torch.Generator(device=self.expert.mean.device).manual_seed(self.seed)

    def rewards(self, rows: torch.Tensor) -> torch.Tensor:
        """Unnormalised SMILING rewards of score-model input rows."""
        self.evaluations += len(rows)
        return reward(self.expert, self.learner, rows, k=self.cfg.timesteps, antithetic=self.cfg.antithetic,
                      generator=self.generator)


class SmilingReplayBuffer(ReplayBuffer):
    """``replay_buffer_class`` for SB3 off-policy algorithms: sampled rewards are SMILING rewards.

    The environment's rewards are stored but never returned. Set :attr:`cost` before training;
    single-environment only (rows are cached by buffer index).
    """

    cost: Optional[CostState] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("SmilingReplayBuffer supports a single environment")
        self._cache = np.zeros(self.buffer_size, dtype=np.float32)
        self._cache_version = np.full(self.buffer_size, -1, dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``save_replay_buffer``) without the score models: they are saved on their own."""
        state = dict(self.__dict__)
        state.pop("cost", None)
        return state

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._cache_version[self.pos] = -1  # the slot is about to hold a new transition
        super().add(*args, **kwargs)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        if self.cost is None:
            raise RuntimeError("SmilingReplayBuffer.cost is not set")
        stale = np.unique(batch_inds[self._cache_version[batch_inds] != self.cost.version])
        if len(stale):
            obs = self.to_torch(self.observations[stale, 0, :])
            acts = self.to_torch(self.actions[stale, 0, :])
            rows = score_inputs(obs, acts, self.cost.action_space)
            self._cache[stale] = self.cost.rewards(rows).cpu().numpy()
            self._cache_version[stale] = self.cost.version
        r = torch.as_tensor(self._cache[batch_inds], device=samples.rewards.device)
        return samples._replace(rewards=normalize_rewards(r, self.cost.cfg).reshape(-1, 1))

    def learner_rows(self, window: Optional[int]) -> np.ndarray:
        """The learner's score-model inputs stored so far (the newest ``window`` of them)."""
        n = self.buffer_size if self.full else self.pos
        idx = np.arange(n) if not self.full else (np.arange(n) + self.pos) % n  # oldest first
        if window is not None:
            idx = idx[-window:]
        obs = torch.as_tensor(self.observations[idx, 0, :])
        acts = torch.as_tensor(self.actions[idx, 0, :])
        action_space = self.cost.action_space if self.cost else None
        return score_inputs(obs, acts, action_space).float().numpy()


@dataclass
class IterationStats:
    """What one learner refit produced (logged per iteration)."""

    iteration: int
    env_steps: int
    learner_loss: float
    ds_divergence: float  # mean reward on expert states
    reward_mean_learner: float


class LearnerRefit(BaseCallback):
    """Every ``iteration_steps`` env steps (from ``learning_starts`` on), refit the learner score model
    on the learner's states, warm-started with a persistent optimizer (Follow-the-Leader)."""

    def __init__(self, cost: CostState, cfg: TrainConfig, expert_val: np.ndarray,
                 on_iteration: Optional[Callable[[IterationStats], None]] = None):
        super().__init__()
        self.cost = cost
        self.cfg = cfg
        self.expert_val = torch.as_tensor(expert_val[:2048], dtype=torch.float32)
        self.on_iteration = on_iteration
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.iteration = 0

    def due(self, steps: int) -> bool:
        start = self.cfg.learning_starts
        return steps >= start and (steps - start) % self.cfg.iteration_steps == 0

    def _on_step(self) -> bool:
        if self.due(self.num_timesteps):
            self.refit()
        return True

    def refit(self) -> IterationStats:
        """Fit the learner model on the stored learner rows, bump the cost version, report statistics."""
        buffer: SmilingReplayBuffer = self.model.replay_buffer  # type: ignore[assignment]
        rows = buffer.learner_rows(self.cfg.learner_window)
        settings = FitSettings(self.cfg.learner_fit_steps, self.cfg.learner_batch_size, self.cfg.learner_lr,
                               eval_every=self.cfg.learner_fit_steps)
        self.optimizer, history = fit(self.cost.learner, rows, settings, seed=self.cfg.seed + self.iteration,
                                      optimizer=self.optimizer)
        self.cost.version += 1
        self.iteration += 1
        sample = torch.as_tensor(rows[-2048:])
        stats = IterationStats(
            iteration=self.iteration,
            env_steps=self.num_timesteps,
            learner_loss=history.train[-1][1],
            ds_divergence=float(self.cost.rewards(self.expert_val).mean()),
            reward_mean_learner=float(self.cost.rewards(sample).mean()),
        )
        if self.on_iteration:
            self.on_iteration(stats)
        return stats
