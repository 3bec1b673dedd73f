"""Iterative SMILING training: SB3 off-policy RL on the score-matching reward, one readable loop.

Algorithm 1 of the paper: with the pretrained expert score model fixed, repeat
(a) ``iteration_steps`` env steps of SAC whose sampled rewards are SMILING rewards
(``rl.SmilingReplayBuffer``), (b) refit the learner score model on the learner's states
(``rl.RewardRefit``). DAC swaps in a discriminator reward on the same machinery; BC clones the
expert's actions. Evaluation with the true reward every ``eval_every`` steps; models go to
``<workdir>/train``, records to ``<workdir>/train_metrics`` and everything to MLflow.
"""

from __future__ import annotations

import csv
import dataclasses
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
from smiling_pipeline.baselines import DacReward, behaviour_cloning
from smiling_pipeline.ingest import ExpertData
from smiling_pipeline.rl import IterationStats, RewardModel, RewardRefit, SmilingReplayBuffer, SmilingReward
from smiling_pipeline.runtime import dtype_name, resolve_device, resolve_precision, seed_everything
from smiling_pipeline.score import save_model
from smiling_pipeline.stages import Say, _dvc_tags, ensure_ingested, load_expert_model, workdir

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
    if cfg.rl not in ALGORITHMS:
        raise UserError(f"train.rl must be one of {sorted(ALGORITHMS)}, got {cfg.rl!r}")
    if cfg.algorithm not in ("smiling", "dac", "bc"):
        raise UserError(f"train.algorithm must be smiling, dac or bc, got {cfg.algorithm!r}")


class Monitor(BaseCallback):
    """Progress bar, periodic true-reward evaluation, checkpoints and MLflow metrics.

    Metrics are sent to MLflow when a checkpoint is written (and at the end), so a run resumed from
    its last checkpoint logs every step exactly once. Checkpoints are taken at the start of a
    rollout, when the previous step has been stored and trained on: the only point where the
    environment, the replay buffer and the networks agree.
    """

    def __init__(self, cfg: TrainConfig, env_id: str, refs: References, out: Path, refit: RewardRefit,
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
        self.pending.append(({k: v for k, v in vars(stats).items() if k not in ("iteration", "env_steps")},
                             stats.env_steps))

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
                post["r_expert"] = f"{self.iterations[-1].reward_mean_expert:.3g}"
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
        with atomic_dir(self.out / "checkpoint") as tmp:
            self.model.save(tmp / "model.zip")
            self.model.save_replay_buffer(tmp / "replay_buffer.pkl")
            checkpoint.save_state(tmp / "state.pt", {
                "reward_model": self.refit.reward_model.state_dict(),
                "iteration": self.refit.iteration,
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
        self.refit.reward_model.load_state_dict(state["reward_model"])
        self.refit.iteration = state["iteration"]
        self.curve, self.iterations, self.pending = state["curve"], state["iterations"], state["pending"]


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: Optional[list[str]] = None) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_model(cfg: TrainConfig, env: gym.Env, device: torch.device, resume_from: Optional[Path]) -> Any:
    """The SB3 learner with the relabelling replay buffer: new, or loaded from a checkpoint folder."""
    algo = ALGORITHMS[cfg.rl]
    if resume_from is not None:
        try:
            model = algo.load(resume_from / "model.zip", env=env, device=device, force_reset=False)
            model.load_replay_buffer(resume_from / "replay_buffer.pkl")
        except Exception as e:
            raise UserError(f"checkpoint {resume_from} is unreadable ({e.__class__.__name__}); "
                            "remove it and train without --resume") from e
        return model
    extra = {"ent_coef": cfg.ent_coef} if cfg.rl == "sac" else {}
    return algo("MlpPolicy", env, **extra, learning_rate=cfg.lr, buffer_size=cfg.steps + 1,
                learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, gamma=cfg.gamma,
                policy_kwargs={"net_arch": list(cfg.net)}, replay_buffer_class=SmilingReplayBuffer, seed=cfg.seed,
                device=device, verbose=0)


def make_env(data: ExpertData, termination: str = "env") -> tuple[str, gym.Env]:
    """The dataset's environment to train in (without early termination for ``termination: ignore``),
    checked against the expert data's dimensions."""
    env_id = data.meta["env_id"]
    if env_id is None:
        raise UserError(f"dataset {data.meta['dataset_id']} has no environment spec; cannot train a policy for it")
    try:
        env = gym.make(env_id, **({"terminate_when_unhealthy": False} if termination == "ignore" else {}))
    except TypeError as e:
        raise UserError(f"{env_id} has no terminate_when_unhealthy option, so train.termination: ignore does not "
                        "apply to it; use env or absorbing") from e
    check_box_spaces(env, env_id)
    expected = env.observation_space.shape[0] + (env.action_space.shape[0] if data.meta["with_actions"] else 0)
    if expected != data.dim:
        raise UserError(f"{env_id} gives inputs of dim {expected} but the expert data has {data.dim}")
    return env_id, env


def make_reward(p: Params, data: ExpertData, env: gym.Env, say: Say, device: torch.device,
                dtype: torch.dtype) -> RewardModel:
    """SMILING's score-matching reward (pretraining the expert model if needed) or DAC's discriminator."""
    space = env.action_space if data.meta["with_actions"] else None
    if p.train.algorithm == "dac":
        return DacReward(data.train, data.mean, data.std, p.cost, p.baselines, space, p.train.seed, device,
                         p.score.min_std)
    _, expert = load_expert_model(p, say)
    return SmilingReward(expert, p.cost, space, p.train.seed, dtype)


def _settings(p: Params, dtype: torch.dtype) -> dict[str, Any]:
    """What the run's results depend on: logged to MLflow, and a resumed run must match it."""
    sections = {"smiling": ("score", "cost", "train", "ingest"), "dac": ("cost", "train", "baselines", "ingest"),
                "bc": ("train", "baselines", "ingest")}[p.train.algorithm]
    settings = {k: as_dict(getattr(p, k)) for k in sections}
    if p.train.algorithm == "smiling":
        settings["runtime"] = {"precision": dtype_name(dtype)}
    return settings


# Settings a study varies one at a time, and the algorithms they apply to; a run that changes any of
# them says so in its ``config`` tag.
ABLATIONS = {"score.linear": ("smiling",), "cost.draws": ("smiling",), "pretrain.steps": ("smiling",),
             "train.termination": ("smiling", "dac"), "train.reward_offset": ("smiling", "dac"),
             "baselines.dac_reward_norm": ("dac",), "baselines.dac_standardize": ("dac",)}


def config_tag(p: Params) -> str:
    """``name=value`` of every ablation setting that applies to the algorithm and differs from its default."""
    default = Params()
    changed = [f"{key.split('.')[1]}={getattr(getattr(p, s), n)}" for key, algorithms in ABLATIONS.items()
               for s, n in [key.split(".")]
               if p.train.algorithm in algorithms and getattr(getattr(p, s), n) != getattr(getattr(default, s), n)]
    return ",".join(changed) or "default"


def _tags(p: Params, data: ExpertData) -> dict[str, str]:
    return _dvc_tags({"seed": p.train.seed, "algorithm": p.train.algorithm, "rl": p.train.rl,
                      "variant": "state-action" if data.meta["with_actions"] else "state-only",
                      "linear": p.score.linear, "config": config_tag(p),
                      "expert_states": data.meta["train_rows"] + data.meta["val_rows"]})


def _finish(out: Path, records: Path, p: Params, data: ExpertData, env_id: str, run: Any, policy: Any,
            curve: list[dict[str, float]], iterations: list[dict[str, float]], metrics: dict[str, Any],
            reward_model: Optional[Any] = None) -> dict[str, Any]:
    """Write the policy, records and plot, and log the policy (and reward model) to MLflow."""
    import mlflow

    info = {"dataset_id": data.meta["dataset_id"], "env_id": env_id, "algorithm": p.train.algorithm,
            "tags": _tags(p, data),
            "mlflow_run_id": run.info.run_id, "policy_uri": tracking.log_torch_model(policy.policy.cpu(), "policy")}
    policy.save(out / "policy.zip")
    if isinstance(reward_model, SmilingReward):
        save_model(reward_model.learner, out / "reward_model.pt")
        info["reward_model_uri"] = tracking.log_torch_model(reward_model.learner.cpu(), "learner_score_model")
    elif isinstance(reward_model, DacReward):
        torch.save(reward_model.d.state_dict(), out / "reward_model.pt")
        info["reward_model_uri"] = tracking.log_torch_model(reward_model.d.cpu(), "discriminator")
    _write_csv(records / "learning_curve.csv", curve)
    _write_csv(records / "iterations.csv", iterations, [f.name for f in dataclasses.fields(IterationStats)])
    write_json(records / "metrics.json", metrics)
    write_json(records / "run.json", info)
    x = "gradient steps" if p.train.algorithm == "bc" else "env steps"
    plot = plot_curves(out / "learning_curve.png", f"{p.train.algorithm.upper()} on {data.meta['dataset_id']}", x,
                       "normalized return", {p.train.algorithm: [(r["env_steps"], r["normalized_return"]) for r in curve]},
                       hline=1.0)
    mlflow.log_artifact(str(plot))
    return {**metrics, **info}


def train(p: Params, say: Say, resume: bool = False) -> dict[str, Any]:
    """Run SMILING (or DAC, or BC) on the ingested dataset, or continue it from its last checkpoint with
    ``resume``; returns the final metrics (also in ``train_metrics/metrics.json``)."""
    cfg = p.train
    validate(cfg)
    if cfg.algorithm == "bc" and not p.ingest.with_actions:
        raise UserError("BC needs expert actions: ingest with --with-actions (or ingest.with_actions: true)")
    out, records = workdir(p) / "train", workdir(p) / "train_metrics"
    device = resolve_device(p.runtime.device)
    dtype = resolve_precision(p.runtime.precision, device)
    settings = _settings(p, dtype)
    state = checkpoint.load_state(out / "checkpoint") if resume else None
    if state is not None and state["settings"] != settings:
        changed = sorted(f"{section}.{key}" for section in settings for key in settings[section]
                         if state["settings"].get(section, {}).get(key) != settings[section][key])
        raise UserError(f"the checkpoint in {out / 'checkpoint'} was made with other settings ({', '.join(changed)}); "
                        "resume with the same settings or train without --resume")
    tracking.check_store(tracking.tracking_uri())
    data = ensure_ingested(p, say)
    env_id, env = make_env(data, cfg.termination)
    seed_everything(cfg.seed)
    reward_model = make_reward(p, data, env, say, device, dtype) if cfg.algorithm != "bc" else None
    refs = references(data.meta, env_id)
    say(f"normalized return uses {refs.source}: random {refs.random:.1f} -> 0, expert {refs.expert:.1f} -> 1")
    if reward_model is None:
        return train_bc(p, data, env_id, env, refs, device, out, records, settings)

    model = build_model(cfg, env, device, out / "checkpoint" if state else None)
    model.replay_buffer.reward_model = reward_model  # type: ignore[union-attr]
    model.replay_buffer.reward_offset = cfg.reward_offset  # type: ignore[union-attr]
    model.replay_buffer.absorbing_gamma = cfg.gamma if cfg.termination == "absorbing" else None  # type: ignore[union-attr]
    refit = RewardRefit(reward_model, cfg, data.val if len(data.val) else data.train)
    monitor = Monitor(cfg, env_id, refs, out, refit, settings)
    refit.on_iteration = monitor.on_iteration
    run_id = None
    if state is not None:
        monitor.restore(state)
        checkpoint.set_env_state(model.get_env(), state["env"])
        checkpoint.set_rng_state(state["rng"])
        run_id = state["run_id"]
        say(f"resuming from the checkpoint at {model.num_timesteps} env steps (MLflow run {run_id})")
    with tracking.run("train", data.meta["dataset_id"], settings, _tags(p, data), run_id=run_id) as run:
        if state is not None:
            monitor.flush(tracking.logged_until(run.info.run_id))
        remaining = cfg.steps - model.num_timesteps
        if remaining > 0:
            model.learn(remaining, callback=CallbackList([refit, monitor]), reset_num_timesteps=state is None)
        monitor.flush()
        metrics = {
            "env_steps": cfg.steps,
            "final_normalized_return": monitor.curve[-1]["normalized_return"],
            "best_normalized_return": max(r["normalized_return"] for r in monitor.curve),
            "reward_evaluations": reward_model.evaluations,
            "iterations": refit.iteration,
        }
        return _finish(out, records, p, data, env_id, run, model, monitor.curve, [vars(s) for s in monitor.iterations],
                       metrics, reward_model)


def train_bc(p: Params, data: ExpertData, env_id: str, env: gym.Env, refs: References, device: torch.device,
             out: Path, records: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Behaviour cloning of the expert's (state, action) pairs into an SB3 SAC actor; no env steps."""
    obs_dim = env.observation_space.shape[0]
    model = SAC("MlpPolicy", env, policy_kwargs={"net_arch": list(p.train.net)}, seed=p.train.seed, device=device)
    curve: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        result = evaluate_policy(policy_fn(model.policy, env_id), env_id, refs, p.train.eval_episodes,
                                 seed=p.train.seed + 10_000 + len(curve) * 100)
        curve.append({"env_steps": step, "normalized_return": result.normalized_return,
                      "return_mean": result.return_mean, "return_std": result.return_std})
        tracking.log_metrics({k: v for k, v in curve[-1].items() if k != "env_steps"}, step)

    with tracking.run("train", data.meta["dataset_id"], settings, _tags(p, data)) as run:
        losses = behaviour_cloning(model.policy, data.train[:, :obs_dim], data.train[:, obs_dim:], env.action_space,
                                   p.baselines, p.train.seed, on_eval=evaluate,
                                   eval_every=max(1, p.baselines.bc_steps // 10))
        metrics = {"env_steps": 0, "gradient_steps": p.baselines.bc_steps, "bc_loss": losses[-1],
                   "final_normalized_return": curve[-1]["normalized_return"],
                   "best_normalized_return": max(r["normalized_return"] for r in curve)}
        out.mkdir(parents=True, exist_ok=True)
        return _finish(out, records, p, data, env_id, run, model, curve, [], metrics)
