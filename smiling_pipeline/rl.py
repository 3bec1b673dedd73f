"""SB3 integration: a replay buffer that relabels sampled rewards with an imitation reward (SMILING,
or DAC from ``baselines``), and the callback that refits that reward every iteration
(Follow-the-Leader on the learner's states).

Within an iteration the expert and learner models are fixed, and SMILING's estimator draws are
fixed for the run, so a row's reward is a fixed function of the row: the buffer caches each row's
reward for the current model version and only evaluates stale rows, and it keeps the part that never
changes (SMILING: the expert model's half) for the row's whole life. One SAC update of batch 256
then costs far less than 256 reward evaluations (``benchmarks/`` measures it); per-batch
normalisation is applied after.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3 import __version__ as sb3_version
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples

from smiling_pipeline.config import CostConfig, TrainConfig
from smiling_pipeline.cost import Draws, draw, grid_terms, model_errors, normalize_rewards
from smiling_pipeline.score import FitSettings, GridTerms, ScoreModel, fit

ALGORITHMS: dict[str, Any] = {"sac": SAC, "td3": TD3, "ddpg": DDPG}  # SB3 off-policy learners, by ``train.rl``


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
        self.fixed_version = 0  # bumped whenever :meth:`fixed_part` changes (SMILING with new draws)
        self.evaluations = 0  # rows whose reward was computed (for the overhead benchmark)
        self.seed = seed

    def rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Unnormalised rewards of input rows (states, or [state, action]); ``fixed``: their
        :meth:`fixed_part`, if already known."""
        self.evaluations += len(rows)
        return self._rewards(rows, fixed)

    def fixed_part(self, rows: torch.Tensor) -> Optional[torch.Tensor]:
        """The part of each row's reward that stays the same while :attr:`fixed_version` does (cached
        per row by the buffer, passed back to :meth:`rewards`); None if there is none."""
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


class SmilingReward(RewardModel):
    """The SMILING reward: fixed expert score model, learner score model refit Follow-the-Leader style.

    The estimator's K (timestep, noise) draws are shared by every row (common random numbers across
    all rows, not only within one relabelled chunk). With ``cost.draws: run`` they are made once per
    run from ``seed`` and a row's expert half (:meth:`fixed_part`) is computed once in its life; with
    ``refit`` they are made anew at every refit, so a row's estimation error changes between
    iterations (as with the official per-batch noise) and both halves are recomputed. Each model's
    per-draw terms are computed once per reward version (most calls relabel a handful of rows).
    """

    def __init__(self, expert: ScoreModel, cfg: CostConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 dtype: torch.dtype = torch.float32):
        super().__init__(cfg, action_space, seed)
        self.expert = expert
        self.dtype = dtype  # of the rewards' output-layer matmuls and the refit's forward passes
        self.learner = expert.fresh_copy()  # same normalisation as the expert
        self.optimizer: Optional[torch.optim.Optimizer] = None
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

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        settings = FitSettings(cfg.learner_fit_steps, cfg.learner_batch_size, cfg.learner_lr,
                               eval_every=cfg.learner_fit_steps, dtype=self.dtype)
        self.optimizer, history = fit(self.learner, learner_rows, settings, seed=cfg.seed + iteration,
                                      optimizer=self.optimizer)
        if self.cfg.draws == "refit":
            self.draws = self._draw(self.seed + 1_000_003 * (iteration + 1))
            self.fixed_version += 1
        self.version += 1
        return history.train[-1][1]

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "draws": {"t": self.draws.t, "eps": self.draws.eps},
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "version": self.version, "fixed_version": self.fixed_version, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self._terms.clear()  # new weights, possibly under a version number seen before
        self.draws = Draws(state["draws"]["t"].to(self.draws.t), state["draws"]["eps"].to(self.draws.eps))
        if state["optimizer"] is not None:
            self.optimizer = torch.optim.AdamW(self.learner.parameters())
            self.optimizer.load_state_dict(state["optimizer"])
        self.version, self.evaluations = state["version"], state["evaluations"]
        self.fixed_version = state["fixed_version"]


class SmilingReplayBuffer(ReplayBuffer):
    """``replay_buffer_class`` for SB3 off-policy algorithms: sampled rewards come from a
    :class:`RewardModel` (SMILING or a baseline), never from the environment.

    Set :attr:`reward_model` before training; single-environment only (rows are cached by index).
    :attr:`reward_offset` is added to every normalised reward; with :attr:`absorbing_gamma` set, a
    transition that ended the episode leads to an absorbing state whose reward is the batch's lowest,
    forever (its value ``gamma / (1 - gamma) * min r`` is added to the transition's reward), instead
    of to nothing (value 0): with rewards of mean zero, ending an episode would otherwise beat
    continuing through below-average states.
    """

    reward_model: Optional[RewardModel] = None
    reward_offset: float = 0.0
    absorbing_gamma: Optional[float] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("SmilingReplayBuffer supports a single environment")
        self._cache = np.zeros(self.buffer_size, dtype=np.float32)
        self._cache_version = np.full(self.buffer_size, -1, dtype=np.int64)
        self._fixed = np.zeros(self.buffer_size, dtype=np.float32)  # RewardModel.fixed_part of each row
        self._fixed_version = np.full(self.buffer_size, -1, dtype=np.int64)  # RewardModel.fixed_version of it
        self.relabelled = 0  # batches sampled through :meth:`_get_samples` (see :func:`check_relabelling`)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle (``save_replay_buffer``) without the score models: they are saved on their own."""
        state = dict(self.__dict__)
        state.pop("reward_model", None)
        return state

    def add(self, *args: Any, **kwargs: Any) -> None:
        self._cache_version[self.pos] = -1  # the slot is about to hold a new transition
        self._fixed_version[self.pos] = -1
        super().add(*args, **kwargs)

    def _model(self) -> RewardModel:
        if self.reward_model is None:
            raise RuntimeError("SmilingReplayBuffer.reward_model is not set")
        return self.reward_model

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> ReplayBufferSamples:
        samples = super()._get_samples(batch_inds, env)
        self.relabelled += 1
        r = torch.as_tensor(self.rewards_at(batch_inds), device=samples.rewards.device)
        r = normalize_rewards(r, self._model().cfg).reshape(-1, 1) + self.reward_offset
        if self.absorbing_gamma is not None:
            r = r + samples.dones * (self.absorbing_gamma / (1.0 - self.absorbing_gamma)) * r.min()
        return samples._replace(rewards=r)

    def rewards_at(self, idx: np.ndarray) -> np.ndarray:
        """Current unnormalised rewards of the rows at ``idx``: only stale rows are evaluated, and
        each row's fixed part once per :attr:`RewardModel.fixed_version`."""
        model = self._model()
        stale = np.unique(idx[self._cache_version[idx] != model.version])
        if len(stale):
            rows = self._rows(stale)
            missing = self._fixed_version[stale] != model.fixed_version
            if missing.any():
                part = model.fixed_part(rows[torch.as_tensor(missing, device=rows.device)])
                if part is not None:
                    self._fixed[stale[missing]] = part.cpu().numpy()
                    self._fixed_version[stale[missing]] = model.fixed_version
            known = (self._fixed_version[stale] == model.fixed_version).all()
            fixed = torch.as_tensor(self._fixed[stale], device=rows.device) if known else None
            self._cache[stale] = model.rewards(rows, fixed).cpu().numpy()
            self._cache_version[stale] = model.version
        return self._cache[idx]

    def _rows(self, idx: np.ndarray, on_device: bool = True) -> torch.Tensor:
        """Score-model inputs of the rows at ``idx``: on the learner's device, or CPU tensors over the
        gathered arrays (no further copy)."""
        convert = self.to_torch if on_device else torch.as_tensor
        obs, acts = convert(self.observations[idx, 0, :]), convert(self.actions[idx, 0, :])
        return score_inputs(obs, acts, self.reward_model.action_space if self.reward_model else None)

    def newest(self, window: Optional[int]) -> np.ndarray:
        """Indices of the stored rows, oldest first (the newest ``window`` of them)."""
        n = self.buffer_size if self.full else self.pos
        idx = np.arange(n) if not self.full else (np.arange(n) + self.pos) % n
        return idx if window is None else idx[-window:]

    def learner_rows(self, window: Optional[int]) -> np.ndarray:
        """The learner's score-model inputs stored so far (the newest ``window`` of them)."""
        return self._rows(self.newest(window), on_device=False).float().numpy()


def attach(model: Any, reward_model: RewardModel, cfg: TrainConfig) -> SmilingReplayBuffer:
    """Point an SB3 learner's relabelling buffer at ``reward_model`` with the run's fall handling."""
    buffer = model.replay_buffer
    if not isinstance(buffer, SmilingReplayBuffer):
        raise TypeError(f"{type(model).__name__} must be built with replay_buffer_class=SmilingReplayBuffer")
    buffer.reward_model = reward_model
    buffer.reward_offset = cfg.reward_offset
    buffer.absorbing_gamma = cfg.gamma if cfg.termination == "absorbing" else None
    return buffer


def grow(buffer: SmilingReplayBuffer, size: int) -> None:
    """Make room for ``size`` rows in a buffer that has not wrapped around (a run extended to more env steps),
    each per-row array padded as a new buffer of that size would start it."""
    if size <= buffer.buffer_size:
        return
    if buffer.full:
        raise ValueError("a replay buffer that has wrapped around cannot grow")
    fresh = type(buffer)(size, buffer.observation_space, buffer.action_space, device=buffer.device,
                         optimize_memory_usage=buffer.optimize_memory_usage,
                         handle_timeout_termination=buffer.handle_timeout_termination)
    for name, rows in list(vars(buffer).items()):
        if isinstance(rows, np.ndarray) and rows.shape[:1] == (buffer.buffer_size,):
            padded = getattr(fresh, name)
            padded[: buffer.buffer_size] = rows
            setattr(buffer, name, padded)
    buffer.buffer_size = size


def check_relabelling(model: Any) -> None:
    """Fail loudly if SB3 trained without sampling through :meth:`SmilingReplayBuffer._get_samples`
    (a private hook): the learner would be optimising the environment's reward."""
    buffer = model.replay_buffer
    if model._n_updates > 0 and buffer.relabelled == 0:
        raise RuntimeError(f"stable-baselines3 {sb3_version} made {model._n_updates} updates without sampling "
                           "through SmilingReplayBuffer._get_samples, so no reward was relabelled; "
                           "this SB3 version is not supported")


@dataclass
class IterationStats:
    """What one reward refit produced (logged per iteration)."""

    iteration: int
    env_steps: int
    refit_loss: float  # learner score model (SMILING) or discriminator (DAC)
    reward_mean_expert: float  # SMILING: the DS divergence estimate
    reward_mean_learner: float
    # Pearson correlation of the imitation reward with the environment's reward on the newest learner
    # transitions: how well the learned reward tracks the task (a diagnostic; training never sees it)
    reward_true_corr: float


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant."""
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


class LearnerRefit:
    """Step (b) of Algorithm 1: refit the reward model on the learner's rows (all of them, or the
    newest ``learner_window``) and report what the new reward says."""

    def __init__(self, reward_model: RewardModel, cfg: TrainConfig, expert_val: np.ndarray):
        self.reward_model = reward_model
        self.cfg = cfg
        self.expert_val = torch.as_tensor(expert_val[:2048], dtype=torch.float32)
        self._expert_val_fixed: tuple[int, Optional[torch.Tensor]] = (-1, None)  # (fixed_version, their fixed part)
        self.iteration = 0

    def __call__(self, buffer: SmilingReplayBuffer, env_steps: int) -> IterationStats:
        """Refit on the stored learner rows (the model bumps its version), report statistics."""
        rows = buffer.learner_rows(self.cfg.learner_window)
        loss = self.reward_model.refit(rows, self.cfg, self.iteration)
        self.iteration += 1
        if self._expert_val_fixed[0] != self.reward_model.fixed_version:
            self._expert_val_fixed = (self.reward_model.fixed_version, self.reward_model.fixed_part(self.expert_val))
        newest = buffer.newest(2048)
        learner = buffer.rewards_at(newest)  # through the buffer's cache: then known for the new version
        return IterationStats(
            iteration=self.iteration,
            env_steps=env_steps,
            refit_loss=loss,
            reward_mean_expert=float(self.reward_model.rewards(self.expert_val, self._expert_val_fixed[1]).mean()),
            reward_mean_learner=float(learner.mean()),
            reward_true_corr=correlation(learner, buffer.rewards[newest, 0]),
        )
