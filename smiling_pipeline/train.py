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

from smiling_pipeline import checkpoint, tracking
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
    """Progress bar, periodic true-reward evaluation, checkpoints and MLflow metrics.

    Metrics are sent to MLflow when a checkpoint is written (and at the end), so a run resumed from
    its last checkpoint logs every step exactly once. Checkpoints are taken at the start of a
    rollout, when the previous step has been stored and trained on: the only point where the
    environment, the replay buffer and the networks agree.
    """

    def __init__(self, cfg: TrainConfig, env_id: str, refs: References, out: Path, refit: LearnerRefit,
                 settings: dict[str, Any]):
        super().__init__()
        self.cfg, self.env_id, self.refs, self.out, self.refit = cfg, env_id, refs, out, refit
        self.settings = settings  # stored in checkpoints: a resume must use the same ones
        self.curve: list[dict[str, float]] = []
        self.iterations: list[IterationStats] = []
        self.pending: list[tuple[dict[str, float], int]] = []  # metrics not yet sent to MLflow
        self.checkpoint_due = False
        self.bar: Optional[tqdm] = None

    def _on_training_start(self) -> None:
        self.bar = tqdm(total=self.cfg.steps, initial=self.num_timesteps, desc="SMILING", unit="step",
                        dynamic_ncols=True)

    def on_iteration(self, stats: IterationStats) -> None:
        self.iterations.append(stats)
        self.pending.append(({"learner_loss": stats.learner_loss, "ds_divergence": stats.ds_divergence,
                              "reward_mean_learner": stats.reward_mean_learner}, stats.env_steps))

    def evaluate(self) -> EvalResult:
        result = evaluate_policy(policy_fn(self.model.policy, self.env_id), self.env_id, self.refs,
                                 self.cfg.eval_episodes, seed=self.cfg.seed + 10_000 + len(self.curve) * 100)
        row = {"env_steps": self.num_timesteps, "normalized_return": result.normalized_return,
               "return_mean": result.return_mean, "return_std": result.return_std}
        self.curve.append(row)
        self.pending.append(({k: v for k, v in row.items() if k != "env_steps"}, self.num_timesteps))
        return result

    def _on_step(self) -> bool:
        steps = self.num_timesteps
        if steps % self.cfg.eval_every == 0 or steps == self.cfg.steps:
            self.evaluate()
        self.checkpoint_due = steps % self.cfg.checkpoint_every == 0 and steps < self.cfg.steps
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

    def _on_rollout_start(self) -> None:
        if self.checkpoint_due:
            self.checkpoint()

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.checkpoint()  # the final state too, so a finished run can be continued

    def flush(self, logged_until: Optional[dict[str, int]] = None) -> None:
        """Send pending metrics to MLflow, skipping steps MLflow already has (after a resume)."""
        for values, step in self.pending:
            tracking.log_metrics({k: v for k, v in values.items() if step > (logged_until or {}).get(k, -1)}, step)
        self.pending = []

    def checkpoint(self) -> None:
        """Write the checkpoint folder whole (it replaces the previous one only once complete), then
        send the metrics it covers."""
        cost = self.refit.cost
        with atomic_dir(self.out / "checkpoint") as tmp:
            self.model.save(tmp / "model.zip")
            self.model.save_replay_buffer(tmp / "replay_buffer.pkl")
            checkpoint.save_state(tmp / "state.pt", {
                "learner": cost.learner.state_dict(),
                "learner_optimizer": self.refit.optimizer.state_dict() if self.refit.optimizer else None,
                "iteration": self.refit.iteration,
                "cost_version": cost.version,
                "cost_evaluations": cost.evaluations,
                "cost_generator": cost.generator.get_state(),
                "curve": self.curve,
                "iterations": self.iterations,
                "pending": self.pending,
                "env": checkpoint.env_state(self.model.get_env()),
                "run_id": tracking.active_run_id(),
                "settings": self.settings,
            })
        self.checkpoint_due = False
        self.flush()

    def restore(self, state: dict[str, Any]) -> None:
        """Put the loop's own state back from a checkpoint (the SB3 model is restored by the caller)."""
        cost = self.refit.cost
        cost.learner.load_state_dict(state["learner"])
        if state["learner_optimizer"] is not None:
            self.refit.optimizer = torch.optim.AdamW(cost.learner.parameters())
            self.refit.optimizer.load_state_dict(state["learner_optimizer"])
        self.refit.iteration = state["iteration"]
        cost.version, cost.evaluations = state["cost_version"], state["cost_evaluations"]
        cost.generator.set_state(state["cost_generator"])
        self.curve, self.iterations, self.pending = state["curve"], state["iterations"], state["pending"]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def build_model(cfg: TrainConfig, env: gym.Env, device: torch.device, resume_from: Optional[Path]) -> Any:
    """The SB3 learner with the relabelling replay buffer: new, or loaded from a checkpoint folder."""
    algo = ALGORITHMS[cfg.algorithm]
    if resume_from is not None:
        try:
            model = algo.load(resume_from / "model.zip", env=env, device=device, force_reset=False)
            model.load_replay_buffer(resume_from / "replay_buffer.pkl")
        except Exception as e:
            raise UserError(f"checkpoint {resume_from} is unreadable ({e.__class__.__name__}); "
                            "remove it and train without --resume") from e
        return model
    extra = {"ent_coef": cfg.ent_coef} if cfg.algorithm == "sac" else {}
    return algo("MlpPolicy", env, **extra, learning_rate=cfg.lr, buffer_size=cfg.steps + 1,
                learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, gamma=cfg.gamma,
                policy_kwargs={"net_arch": list(cfg.net)}, replay_buffer_class=SmilingReplayBuffer, seed=cfg.seed,
                device=device, verbose=0)


def train(p: Params, say: Say, resume: bool = False) -> dict[str, Any]:
    """Run SMILING on the ingested dataset (or continue it from its last checkpoint with ``resume``);
    returns the final metrics (also in ``train/metrics.json``)."""
    cfg = p.train
    validate(cfg)
    out = workdir(p) / "train"
    settings = {k: as_dict(getattr(p, k)) for k in ("score", "cost", "train", "ingest")}
    state = checkpoint.load_state(out / "checkpoint") if resume else None
    if state is not None and state["settings"] != settings:
        changed = sorted(f"{section}.{key}" for section in settings for key in settings[section]
                         if state["settings"].get(section, {}).get(key) != settings[section][key])
        raise UserError(f"the checkpoint in {out / 'checkpoint'} was made with other settings ({', '.join(changed)}); "
                        "resume with the same settings or train without --resume")
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
    model = build_model(cfg, env, device, out / "checkpoint" if state else None)
    model.replay_buffer.cost = cost  # type: ignore[union-attr]
    refit = LearnerRefit(cost, cfg, data.val if len(data.val) else data.train)
    monitor = Monitor(cfg, env_id, refs, out, refit, settings)
    refit.on_iteration = monitor.on_iteration

    dataset_id = data.meta["dataset_id"]
    tags = _dvc_tags({"seed": cfg.seed, "algorithm": "smiling", "rl": cfg.algorithm,
                      "variant": "state-action" if data.meta["with_actions"] else "state-only",
                      "linear": p.score.linear})
    run_id = None
    if state is not None:
        monitor.restore(state)
        checkpoint.set_env_state(model.get_env(), state["env"])
        checkpoint.set_rng_state(state["rng"])
        run_id = state["run_id"]
        say(f"resuming from the checkpoint at {model.num_timesteps} env steps (MLflow run {run_id})")
    with tracking.run("train", dataset_id, settings, tags, run_id=run_id) as run:
        if state is not None:
            monitor.flush(tracking.logged_until(run.info.run_id))
        remaining = cfg.steps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=CallbackList([refit, monitor]), reset_num_timesteps=state is None)
        final = monitor.curve[-1]
        metrics = {
            "env_steps": cfg.steps,
            "final_normalized_return": final["normalized_return"],
            "best_normalized_return": max(r["normalized_return"] for r in monitor.curve),
            "reward_evaluations": cost.evaluations,
            "iterations": refit.iteration,
        }
        monitor.flush()
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
