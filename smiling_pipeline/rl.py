"""SB3 integration: a replay buffer that relabels sampled rewards with an imitation reward (SMILING,
or DAC from ``baselines``), and the callback that refits that reward every iteration
(Follow-the-Leader on the learner's states).

Within an iteration the expert and learner models are fixed, so a state's reward is a fixed
function of the state: the buffer caches each row's reward for the current model version and only
evaluates rows that are stale. One SAC update of batch 256 then costs, on average, far less than
256 reward evaluations (``benchmarks/`` measures it); per-batch normalisation is applied after.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
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


class RewardModel(ABC):
    """An imitation reward refit on learner data every iteration: what the relabelling buffer and
    the refit callback need (SMILING here, DAC in ``baselines``)."""

    def __init__(self, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int):
        self.cfg = cfg
        self.action_space = action_space  # set for the state-action variant
        self.version = 0  # bumped whenever the reward changes
        self.evaluations = 0  # rows whose reward was computed (for the overhead benchmark)
        self.seed = seed

    def rewards(self, rows: torch.Tensor) -> torch.Tensor:
        """Unnormalised rewards of input rows (states, or [state, action])."""
        self.evaluations += len(rows)
        return self._rewards(rows)

    @abstractmethod
    def _rewards(self, rows: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        """Refit on all learner rows so far (warm start); returns the fit's final loss."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]: ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SmilingReward(RewardModel):
    """The SMILING reward: fixed expert score model, learner score model refit Follow-the-Leader style."""

    def __init__(self, expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0):
        super().__init__(cfg, action_space, seed)
        self.expert = expert
        self.learner = expert.fresh_copy()
        self.optimizer: Optional[torch.optim.Optimizer] = None
        self.generator = torch.Generator(device=expert.mean.device).manual_seed(seed)

    def _rewards(self, rows: torch.Tensor) -> torch.Tensor:
        return reward(self.expert, self.learner, rows, k=self.cfg.timesteps, antithetic=self.cfg.antithetic,
                      generator=self.generator)

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        settings = FitSettings(cfg.learner_fit_steps, cfg.learner_batch_size, cfg.learner_lr,
                               eval_every=cfg.learner_fit_steps)
        self.optimizer, history = fit(self.learner, learner_rows, settings, seed=cfg.seed + iteration,
                                      optimizer=self.optimizer)
        self.version += 1
        return history.train[-1][1]

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "generator": self.generator.get_state(),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "version": self.version, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.generator.set_state(state["generator"])
        if state["optimizer"] is not None:
            self.optimizer = torch.optim.AdamW(self.learner.parameters())
            self.optimizer.load_state_dict(state["optimizer"])
        self.version, self.evaluations = state["version"], state["evaluations"]


class SmilingReplayBuffer(ReplayBuffer):
    """``replay_buffer_class`` for SB3 off-policy algorithms: sampled rewards come from a
    :class:`RewardModel` (SMILING or a baseline), never from the environment.

    Set :attr:`reward_model` before training; single-environment only (rows are cached by index).
    """

    reward_model: Optional[RewardModel] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("SmilingReplayBuffer supports a single environment")
        self._cache = np.zeros(self.buffer_size, dtype=np.float32)
        self._cache_version = np.full(self.buffer_size, -1, dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``save_replay_buffer``) without the score models: they are saved on their own."""
        state = dict(self.__dict__)
        state.pop("reward_model", None)
        return state

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._cache_version[self.pos] = -1  # the slot is about to hold a new transition
        super().add(*args, **kwargs)

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        model = self.reward_model
        if model is None:
            raise RuntimeError("SmilingReplayBuffer.reward_model is not set")
        stale = np.unique(batch_inds[self._cache_version[batch_inds] != model.version])
        if len(stale):
            obs = self.to_torch(self.observations[stale, 0, :])
            acts = self.to_torch(self.actions[stale, 0, :])
            rows = score_inputs(obs, acts, model.action_space)
            self._cache[stale] = model.rewards(rows).cpu().numpy()
            self._cache_version[stale] = model.version
        r = torch.as_tensor(self._cache[batch_inds], device=samples.rewards.device)
        return samples._replace(rewards=normalize_rewards(r, model.cfg).reshape(-1, 1))

    def learner_rows(self, window: Optional[int]) -> np.ndarray:
        """The learner's score-model inputs stored so far (the newest ``window`` of them)."""
        n = self.buffer_size if self.full else self.pos
        idx = np.arange(n) if not self.full else (np.arange(n) + self.pos) % n  # oldest first
        if window is not None:
            idx = idx[-window:]
        obs = torch.as_tensor(self.observations[idx, 0, :])
        acts = torch.as_tensor(self.actions[idx, 0, :])
        action_space = self.reward_model.action_space if self.reward_model else None
        return score_inputs(obs, acts, action_space).float().numpy()


@dataclass
class IterationStats:
    """What one reward refit produced (logged per iteration)."""

    iteration: int
    env_steps: int
    refit_loss: float  # learner score model (SMILING) or discriminator (DAC)
    reward_mean_expert: float  # SMILING: the DS divergence estimate
    reward_mean_learner: float


class RewardRefit(BaseCallback):
    """Every ``iteration_steps`` env steps (from ``learning_starts`` on), refit the reward model on the
    learner's rows (all of them, or the newest ``learner_window``)."""

    def __init__(self, reward_model: RewardModel, cfg: TrainConfig, expert_val: np.ndarray,
                 on_iteration: Optional[Callable[[IterationStats], None]] = None):
        super().__init__()
        self.reward_model = reward_model
        self.cfg = cfg
        self.expert_val = torch.as_tensor(expert_val[:2048], dtype=torch.float32)
        self.on_iteration = on_iteration
        self.iteration = 0

    def due(self, steps: int) -> bool:
        start = self.cfg.learning_starts
        return steps >= start and (steps - start) % self.cfg.iteration_steps == 0

    def _on_step(self) -> bool:
        if self.due(self.num_timesteps):
            self.refit()
        return True

    def refit(self) -> IterationStats:
        """Refit on the stored learner rows (the model bumps its version), report statistics."""
        buffer: SmilingReplayBuffer = self.model.replay_buffer  # type: ignore[assignment]
        rows = buffer.learner_rows(self.cfg.learner_window)
        loss = self.reward_model.refit(rows, self.cfg, self.iteration)
        self.iteration += 1
        stats = IterationStats(
            iteration=self.iteration,
            env_steps=self.num_timesteps,
            refit_loss=loss,
            reward_mean_expert=float(self.reward_model.rewards(self.expert_val).mean()),
            reward_mean_learner=float(self.reward_model.rewards(torch.as_tensor(rows[-2048:])).mean()),
        )
        if self.on_iteration:
            self.on_iteration(stats)
        return stats
