"""Facts about MuJoCo locomotion observations shared by the locomotion benchmarks (no package imports, so
scripts run with another worktree's package can use it too)."""

from __future__ import annotations

import gymnasium as gym


def forward_velocity_index(env_id: str) -> int:
    """Observation index of the torso's forward velocity: MuJoCo locomotion observations are qpos without
    the x position, then qvel, so qvel[0] sits at nq - 1."""
    env = gym.make(env_id)
    nq = int(env.unwrapped.model.nq)
    env.close()
    return nq - 1
