"""What an imitation method is to the pipeline: an :class:`Algorithm` spec, registered in ``algorithms``.

A spec says what the method needs (the pretrained expert score model, expert actions), which settings
define its runs (logged and checked on resume, and named in the run tag when they differ from the
default), and how it learns: either a reward model that ``train.train``'s relabelling loop refits every
iteration (SMILING, DAC), or an SB3 learner class with its own imitation objective on the same loop
(IQ-Learn), or its own ``run`` without env steps (BC).

Specs are light to import (the CLI checks settings against them before any heavy import): a method
module imports torch, Gymnasium or SB3 inside the functions its spec names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from smiling_pipeline import config
from smiling_pipeline.config import Params
from smiling_pipeline.errors import UserError

if TYPE_CHECKING:
    import gymnasium as gym
    import torch

    from smiling_pipeline.ingest import ExpertData
    from smiling_pipeline.rewards import RewardModel
    from smiling_pipeline.score import ScoreModel


@dataclass(frozen=True)
class Context:
    """What a method is built from: the run's settings, the expert data, the pretrained expert score model
    (methods that need it), the training environment and the compute."""

    p: Params
    data: ExpertData
    expert: Optional[ScoreModel]
    env: gym.Env
    device: torch.device
    dtype: torch.dtype

    def reward_action_space(self) -> Optional[gym.spaces.Box]:
        """The action space a reward's [state, action] rows need (state-action variant); None state-only."""
        from smiling_pipeline.envs import check_box_spaces

        return check_box_spaces(self.env, self.data.meta["env_id"])[1] if self.data.meta["with_actions"] else None


@dataclass(frozen=True)
class OwnRun:
    """What a method with its own training (no env steps) returns: the SB3 model holding its policy and
    its final metrics."""

    model: Any
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Algorithm:
    """One imitation method: its name (``train.algorithm``), its needs, its settings and how it learns.

    Exactly one of ``reward``, ``learner`` or ``run`` says how it learns. ``sections`` are the
    ``params.yaml`` sections its results depend on (logged to MLflow, compared on resume); ``tag_scopes``
    the settings that define its runs for the run tag: a section, or ``section.prefix`` for the fields of a
    shared section that start with ``prefix`` (``baselines.dac_``).
    """

    name: str
    sections: tuple[str, ...]
    tag_scopes: tuple[str, ...]
    reward_text: str  # what its reward is, for the one-run report's reward plot
    needs_expert_model: bool = False
    needs_actions: bool = False
    # the relabelling loop's reward, refit every iteration
    reward: Optional[Callable[[Context], RewardModel]] = None
    # the SB3 off-policy class with its own objective (made on first use), and what it is handed once built
    learner: Optional[Callable[[], Any]] = None
    prepare: Optional[Callable[[Any, Context], None]] = None
    # the learner's constructor arguments that replace those from ``train.*`` (its own networks, rates, temperature)
    learner_settings: Optional[Callable[[Params], dict[str, Any]]] = None
    rl: Optional[str] = None  # the SB3 class (``train.rl`` name) its policy always is; None: ``train.rl``
    # its own training without env steps, given ``evaluate(model, step)`` to record evaluations
    run: Optional[Callable[[Context, Callable[[Any, int], None]], OwnRun]] = None
    refit_text: Optional[str] = None  # what its per-iteration refit fits (report's loss plot), if it has one
    # the name its mean reward on expert states is also logged under (SMILING: ds_divergence, the paper's)
    expert_reward_metric: Optional[str] = None
    color: str = "black"  # in the comparison plots

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.reward, self.learner, self.run)) != 1:
            raise ValueError(f"algorithm {self.name}: give exactly one of reward, learner or run")

    @property
    def label(self) -> str:
        return self.name.upper()

    @property
    def budget_unit(self) -> str:
        """What its learning curve's x axis counts."""
        return "gradient steps" if self.run is not None else "env steps"

    def policy_rl(self, p: Params) -> str:
        """The SB3 class (a ``train.rl`` name) its saved policy loads with."""
        return self.rl or p.train.rl

    def config_tag(self, p: Params) -> str:
        """The run's tag: every setting in :attr:`tag_scopes` that differs from its default."""
        return config.config_tag(p, self.tag_scopes)

    def check(self, p: Params) -> None:
        """The method's own rules on the settings."""
        if self.needs_actions and not p.ingest.with_actions:
            raise UserError(f"{self.label} needs expert actions: ingest with --with-actions (or ingest.with_actions: true)")
        if self.learner is not None and self.rl and p.train.rl != self.rl:
            raise UserError(f"{self.label} learns on SB3 {self.rl.upper()}'s networks: train.rl must be {self.rl}, "
                            f"got {p.train.rl}")
        if self.reward is None and p.train.termination == "absorbing":
            raise UserError(f"train.termination: absorbing acts on a relabelled reward, which {self.label} has none of: "
                            "use env or ignore")
