"""DAC (the paper's baseline, as the official SMILING repository runs it): a discriminator reward
(``baselines.DacReward``) refit on learner and expert rows every iteration of the relabelling loop.
Its settings are the ``baselines.dac_*`` fields."""

from __future__ import annotations

from typing import TYPE_CHECKING

from smiling_pipeline.algorithms.base import Algorithm, Context

if TYPE_CHECKING:
    from smiling_pipeline.rewards import RewardModel


def reward(ctx: Context) -> RewardModel:
    """The discriminator reward on the expert rows (states, or [state, action])."""
    from smiling_pipeline.baselines import DacReward

    data, p = ctx.data, ctx.p
    return DacReward(data.train, data.mean, data.std, p.cost, p.baselines, ctx.reward_action_space(), p.train.seed,
                     ctx.device, p.score.min_std)


SPEC = Algorithm(
    name="dac",
    sections=("cost", "train", "baselines", "ingest"),
    tag_scopes=("ingest", "train", "baselines.dac_"),
    reward_text="DAC reward -log(1 - sigmoid(D))",
    reward=reward,
    refit_text="discriminator refit",
    color="tab:orange",
)
