"""SMILING (the paper's method): the score-matching reward around the pretrained expert score model,
refit on the learner's states every iteration of the relabelling loop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smiling_pipeline.algorithms.base import Algorithm, Context

if TYPE_CHECKING:
    from smiling_pipeline.rewards import RewardModel


def reward(ctx: Context) -> RewardModel:
    """The SMILING reward (``cost.estimator`` picks the estimator) around ``ctx.expert``."""
    from smiling_pipeline.rewards import smiling_reward

    if ctx.expert is None:
        raise ValueError("SMILING needs the pretrained expert score model")
    return smiling_reward(ctx.expert, ctx.p.cost, ctx.reward_action_space(), ctx.p.train.seed, ctx.dtype)


SPEC = Algorithm(
    name="smiling",
    sections=("score", "pretrain", "cost", "train", "ingest"),
    tag_scopes=("ingest", "score", "pretrain", "cost", "train"),
    reward_text="SMILING reward (on expert states: the DS divergence estimate)",
    needs_expert_model=True,
    reward=reward,
    refit_text="learner score refit",
    expert_reward_metric="ds_divergence",
    color="tab:blue",
)
