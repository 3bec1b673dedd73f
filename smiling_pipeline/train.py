"""Iterative SMILING training: SB3 off-policy RL on the score-matching reward, one readable loop.

Algorithm 1 of the paper: with the pretrained expert score model fixed, repeat
(a) ``iteration_steps`` env steps of SAC whose sampled rewards are SMILING rewards
(``rl.SmilingReplayBuffer``), (b) refit the learner score model on the learner's states
(``rl.LearnerRefit``). Evaluation with the true reward every ``eval_every`` steps; everything is
logged to MLflow and to ``<workdir>/train``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import torch
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from tqdm.auto import tqdm

from smiling_pipeline import tracking
from smiling_pipeline.config import Params, TrainConfig, as_dict
from smiling_pipeline.demos import check_box_spaces
from smiling_pipeline.errors import UserError
from smiling_pipeline.evaluate import EvalResult, References, evaluate_policy, policy_fn, references
from smiling_pipeline.io import atomic_dir, atomic_file, write_json
from smiling_pipeline.report import plot_curves
from smiling_pipeline.rl import CostState, IterationStats, LearnerRefit, SmilingReplayBuffer
from smiling_pipeline.runtime import resolve_device, seed_everything
from smiling_pipeline.score import save_model
from smiling_pipeline.stages import Say, _dvc_tags, load_expert_model, workdir

ALGORITHMS: dict[str, Any] = {"sac": SAC, "td3": TD3, "ddpg": DDPG}


def validate(cfg: TrainConfig) -> None:
    """Options out of range are user errors, caught before any work."""
    for name in ("steps", "iteration_steps", "batch_size", "learner_fit_steps", "learner_batch_size",
                 "eval_every", "eval_episodes", "checkpoint_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"train.{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.learning_starts < 1 or cfg.learning_starts >= cfg.steps:
        raise UserError(f"train.learning_starts must be in [1, steps), got {cfg.learning_starts} with steps {cfg.steps}")
    if cfg.learner_window is not None and cfg.learner_window < 2:
        raise UserError("train.learner_window must be at least 2 (or null for all learner states)")
    if cfg.algorithm not in ALGORITHMS:
        raise UserError(f"train.algorithm must be one of {sorted(ALGORITHMS)}, got {cfg.algorithm!r}")


class Monitor(BaseCallback):
    """Progress bar, periodic true-reward evaluation and checkpoints."""

    def __init__(self, cfg: TrainConfig, env_id: str, refs: References, out: Path, refit: LearnerRefit):
        super().__init__()
        self.cfg, self.env_id, self.refs, self.out, self.refit = cfg, env_id, refs, out, refit
        self.curve: list[dict[str, float]] = []
        self.iterations: list[IterationStats] = []
        self.bar: Optional[tqdm] = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.cfg.steps, desc="SMILING", unit="step", dynamic_ncols=True)

    def on_iteration(self, stats: IterationStats) -> None:
        self.iterations.append(stats)
        tracking.log_metrics({"learner_loss": stats.learner_loss, "ds_divergence": stats.ds_divergence,
                              "reward_mean_learner": stats.reward_mean_learner}, stats.env_steps)

    def evaluate(self) -> EvalResult:
        result = evaluate_policy(policy_fn(self.model.policy, self.env_id), self.env_id, self.refs,
                                 self.cfg.eval_episodes, seed=self.cfg.seed + 10_000 + len(self.curve) * 100)
        row = {"env_steps": self.num_timesteps, "normalized_return": result.normalized_return,
               "return_mean": result.return_mean, "return_std": result.return_std}
        self.curve.append(row)
        tracking.log_metrics({k: v for k, v in row.items() if k != "env_steps"}, self.num_timesteps)
        return result

    def _on_step(self) -> bool:
        steps = self.num_timesteps
        if steps % self.cfg.eval_every == 0 or steps == self.cfg.steps:
            self.evaluate()
        if steps % self.cfg.checkpoint_every == 0 and steps < self.cfg.steps:
            self.checkpoint()
        if self.bar is not None:
            self.bar.update(1)
            post: dict[str, str] = {}
            if self.curve:
                post["norm_return"] = f"{self.curve[-1]['normalized_return']:.2f}"
            if self.iterations:
                post["ds_div"] = f"{self.iterations[-1].ds_divergence:.3g}"
                post["r_learner"] = f"{self.iterations[-1].reward_mean_learner:.3g}"
            if post and steps % 50 == 0:
                self.bar.set_postfix(post, refresh=False)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.checkpoint()  # the final state too, so a finished run can be continued

    def checkpoint(self) -> None:
        """Policy and optimisers, replay buffer, learner model and its optimizer, counters: written whole,
        replacing the previous checkpoint only once complete."""
        with atomic_dir(self.out / "checkpoint") as tmp:
            self.model.save(tmp / "model.zip")
            self.model.save_replay_buffer(tmp / "replay_buffer.pkl")
            torch.save({"learner": self.refit.cost.learner.state_dict(),
                        "optimizer": self.refit.optimizer.state_dict() if self.refit.optimizer else None,
                        "iteration": self.refit.iteration, "version": self.refit.cost.version,
                        "num_timesteps": self.num_timesteps}, tmp / "learner.pt")


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def train(p: Params, say: Say) -> dict[str, Any]:
    """Run SMILING on the ingested dataset; returns the final metrics (also in ``train/metrics.json``)."""
    cfg = p.train
    validate(cfg)
    tracking.check_store(tracking.tracking_uri())
    data, expert = load_expert_model(p, say)
    env_id = data.meta["env_id"]
    if env_id is None:
        raise UserError(f"dataset {data.meta['dataset_id']} has no environment spec; cannot train a policy for it")
    env = gym.make(env_id)
    check_box_spaces(env, env_id)
    expected = env.observation_space.shape[0] + (env.action_space.shape[0] if data.meta["with_actions"] else 0)
    if expected != data.dim:
        raise UserError(f"{env_id} gives score-model inputs of dim {expected} but the expert data has {data.dim}")
    device = resolve_device(p.runtime.device)
    seed_everything(cfg.seed)
    refs = references(data.meta, env_id)
    say(f"normalized return uses {refs.source}: random {refs.random:.1f} -> 0, expert {refs.expert:.1f} -> 1")

    cost = CostState(expert, expert.fresh_copy(), p.cost, env.action_space if data.meta["with_actions"] else None,
                     seed=cfg.seed)
    algo = ALGORITHMS[cfg.algorithm]
    extra = {"ent_coef": cfg.ent_coef} if cfg.algorithm == "sac" else {}
    model = algo("MlpPolicy", env, **extra, learning_rate=cfg.lr, buffer_size=cfg.steps + 1, learning_starts=cfg.learning_starts,
                 batch_size=cfg.batch_size, gamma=cfg.gamma, policy_kwargs={"net_arch": list(cfg.net)},
                 replay_buffer_class=SmilingReplayBuffer, seed=cfg.seed, device=device, verbose=0)
    model.replay_buffer.cost = cost  # type: ignore[union-attr]
    out = workdir(p) / "train"
    refit = LearnerRefit(cost, cfg, data.val if len(data.val) else data.train)
    monitor = Monitor(cfg, env_id, refs, out, refit)
    refit.on_iteration = monitor.on_iteration

    dataset_id = data.meta["dataset_id"]
    settings = {k: as_dict(getattr(p, k)) for k in ("score", "cost", "train", "ingest")}
    tags = _dvc_tags({"seed": cfg.seed, "algorithm": "smiling", "rl": cfg.algorithm,
                      "variant": "state-action" if data.meta["with_actions"] else "state-only",
                      "linear": p.score.linear})
    with tracking.run("train", dataset_id, settings, tags) as run:
        model.learn(cfg.steps, callback=CallbackList([refit, monitor]))
        final = monitor.curve[-1]
        metrics = {
            "env_steps": cfg.steps,
            "final_normalized_return": final["normalized_return"],
            "best_normalized_return": max(r["normalized_return"] for r in monitor.curve),
            "reward_evaluations": cost.evaluations,
            "iterations": refit.iteration,
        }
        model.save(out / "policy.zip")
        save_model(cost.learner, out / "learner_score.pt")
        info = {
            "dataset_id": dataset_id,
            "env_id": env_id,
            "mlflow_run_id": run.info.run_id,
            "policy_uri": tracking.log_torch_model(model.policy.cpu(), "policy"),
            "learner_score_uri": tracking.log_torch_model(cost.learner.cpu(), "learner_score_model"),
        }
        _write_csv(out / "learning_curve.csv", monitor.curve)
        _write_csv(out / "iterations.csv", [vars(s) for s in monitor.iterations])
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
        plot = plot_curves(out / "learning_curve.png", f"SMILING on {dataset_id}", "env steps", "normalized return",
                           {"SMILING": [(r["env_steps"], r["normalized_return"]) for r in monitor.curve]}, hline=1.0)
        import mlflow

        mlflow.log_artifact(str(plot))
    return {**metrics, **info}
