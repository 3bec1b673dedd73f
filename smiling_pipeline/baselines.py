"""Baselines on the same machinery: DAC (a GAIL-style discriminator with gradient penalty, refit each
iteration, used through the same relabelling replay buffer) and behaviour cloning."""

from __future__ import annotations

from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from smiling_pipeline.config import BaselinesConfig, CostConfig, TrainConfig
from smiling_pipeline.errors import UserError
from smiling_pipeline.rl import RewardModel


def discriminator(dim: int, hidden: int) -> nn.Module:
    """D(x): logit that x comes from the expert (two hidden layers, as the official DAC baseline)."""
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def gradient_penalty(d: nn.Module, expert: torch.Tensor, learner: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """E (||grad_x D(x)|| - 1)^2 at random interpolates of expert and learner rows (WGAN-GP / DAC)."""
    alpha = torch.rand(len(expert), 1, generator=generator, device=expert.device)
    x = (alpha * expert + (1 - alpha) * learner).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(x).sum(), x, create_graph=True)
    return ((grad.norm(dim=1) - 1.0) ** 2).mean()


class DacReward(RewardModel):
    """DAC: reward ``-log(1 - sigmoid(D(x))) = softplus(D(x))``, D trained to tell expert from learner rows.

    Inputs are standardised with the expert statistics, as the score models' are.
    """

    def __init__(self, expert_rows: np.ndarray, mean: np.ndarray, std: np.ndarray, cfg: CostConfig,
                 baselines: BaselinesConfig, action_space: Optional[gym.spaces.Box], seed: int = 0,
                 device: torch.device = torch.device("cpu"), min_std: float = 0.1):
        super().__init__(cfg, action_space, seed)
        if baselines.dac_fit_steps < 1:
            raise UserError(f"baselines.dac_fit_steps must be at least 1, got {baselines.dac_fit_steps}")
        torch.manual_seed(seed)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        self.std = torch.as_tensor(np.maximum(std, min_std), dtype=torch.float32, device=device)
        self.expert = self.normalize(torch.as_tensor(expert_rows, dtype=torch.float32, device=device))
        self.d = discriminator(expert_rows.shape[1], baselines.dac_hidden).to(device)
        self.optimizer = torch.optim.Adam(self.d.parameters(), lr=baselines.dac_lr)
        self.penalty = baselines.dac_gradient_penalty
        self.fit_steps = baselines.dac_fit_steps
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean) - self.mean) / self.std

    @torch.no_grad()
    def _rewards(self, rows: torch.Tensor, fixed: Optional[torch.Tensor]) -> torch.Tensor:
        return F.softplus(self.d(self.normalize(rows))).squeeze(1)

    def loss(self, expert: torch.Tensor, learner: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy (expert = 1, learner = 0) plus the gradient penalty."""
        pe, pl = self.d(expert), self.d(learner)
        bce = F.binary_cross_entropy_with_logits(pe, torch.ones_like(pe)) + \
            F.binary_cross_entropy_with_logits(pl, torch.zeros_like(pl))
        return bce + self.penalty * gradient_penalty(self.d, expert, learner, self.generator)

    def refit(self, learner_rows: np.ndarray, cfg: TrainConfig, iteration: int) -> float:
        learner = self.normalize(torch.as_tensor(learner_rows, dtype=torch.float32, device=self.mean.device))
        n = min(cfg.learner_batch_size, len(learner), len(self.expert))
        loss = torch.zeros(())
        for _ in range(self.fit_steps):
            e = self.expert[torch.randint(0, len(self.expert), (n,), generator=self.generator, device=self.mean.device)]
            lr = learner[torch.randint(0, len(learner), (n,), generator=self.generator, device=self.mean.device)]
            loss = self.loss(e, lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.version += 1
        return loss.item()

    def state_dict(self) -> dict[str, Any]:
        return {"d": self.d.state_dict(), "optimizer": self.optimizer.state_dict(),
                "generator": self.generator.get_state(), "version": self.version, "evaluations": self.evaluations}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.d.load_state_dict(state["d"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.version, self.evaluations = state["version"], state["evaluations"]


def scale_actions(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Environment actions -> SB3's [-1, 1] (clipped just inside, where tanh can reach)."""
    scaled = 2.0 * (actions - space.low) / (space.high - space.low) - 1.0
    return np.clip(scaled, -0.999, 0.999)


def behaviour_cloning(policy: Any, states: np.ndarray, actions: np.ndarray, space: gym.spaces.Box,
                      cfg: BaselinesConfig, seed: int,
                      on_eval: Optional[Callable[[int], None]] = None, eval_every: int = 1_000) -> list[float]:
    """Fit an SB3 actor's deterministic action to the expert's (mean squared error in SB3's action
    scale); returns the loss per ``eval_every`` steps and calls ``on_eval(step)`` there."""
    device = policy.device
    x = torch.as_tensor(states, dtype=torch.float32, device=device)
    y = torch.as_tensor(scale_actions(actions, space), dtype=torch.float32, device=device)
    actor = policy.actor
    optimizer = torch.optim.Adam(actor.parameters(), lr=cfg.bc_lr)
    g = torch.Generator(device=device).manual_seed(seed)
    losses = []
    policy.set_training_mode(True)
    for step in range(1, cfg.bc_steps + 1):
        idx = torch.randint(0, len(x), (min(cfg.bc_batch_size, len(x)),), generator=g, device=device)
        loss = F.mse_loss(actor(x[idx], deterministic=True), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % eval_every == 0 or step == cfg.bc_steps:
            losses.append(loss.item())
            if on_eval:
                policy.set_training_mode(False)
                on_eval(step)
                policy.set_training_mode(True)
    policy.set_training_mode(False)
    return losses
