"""Stage 3: iterative SMILING training, Algorithm 1 of the paper as one loop (:func:`train`).

With the pretrained expert score model fixed, repeat: (a) SB3 SAC collects ``iteration_steps`` env
steps and trains on rewards relabelled by the current SMILING reward (``rl.SmilingReplayBuffer``),
(b) refit the learner score model on the learner's states (``rl.LearnerRefit``); evaluate with the
true reward every ``eval_every`` steps and checkpoint every ``checkpoint_every`` steps, between
iterations. The method comes from the registry (``algorithms``): DAC swaps in a discriminator reward on
the same loop, IQ-Learn an SB3 learner with its own objective and no reward; BC has its own run.
Models go to ``<workdir>/train``, records to ``<workdir>/train_metrics``, everything to MLflow.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.utils import set_random_seed
from tqdm.auto import tqdm

from smiling_pipeline import algorithms, checkpoint, tracking
from smiling_pipeline.algorithms.base import Algorithm, Context, OwnRun
from smiling_pipeline.config import Params, TrainConfig, as_dict, run_settings
from smiling_pipeline.demos import minari_root
from smiling_pipeline.envs import make_env
from smiling_pipeline.errors import UserError
from smiling_pipeline.evaluate import EvalResult, References, evaluate_policy, policy_fn, references
from smiling_pipeline.ingest import ExpertData
from smiling_pipeline.io import atomic_dir, atomic_file, write_json
from smiling_pipeline.report import curve_metrics, plot_curves
from smiling_pipeline.rewards import RewardModel
from smiling_pipeline.rl import (
    ALGORITHMS,
    IterationStats,
    LearnerRefit,
    SmilingReplayBuffer,
    attach,
    check_relabelling,
    grow,
)
from smiling_pipeline.runtime import dtype_name, resolve_device, resolve_precision
from smiling_pipeline.score import ScoreModel, weights_hash

log = logging.getLogger(__name__)


class TrainClock:
    """Training wall time summed over a run's processes: a resumed run adds its time since the checkpoint to
    the time stored there, so ``train_seconds`` is what the run took, not its last process (lost work after
    a checkpoint is not counted, as an uninterrupted run would not have done it)."""

    def __init__(self, before: float = 0.0) -> None:
        self.before, self.started = before, time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started


@dataclass
class Records:
    """What the loop has produced: evaluations, iteration statistics, and metrics not yet sent to MLflow
    (sent when a checkpoint is written, so a run resumed from its last checkpoint logs every step once)."""

    curve: list[dict[str, float]] = field(default_factory=list)
    iterations: list[IterationStats] = field(default_factory=list)
    pending: list[tuple[dict[str, float], int]] = field(default_factory=list)

    def add_iteration(self, stats: IterationStats, expert_reward_metric: Optional[str]) -> None:
        """One refit's statistics; the mean reward on expert states is also logged as ``expert_reward_metric``
        where the method names it (SMILING: ``ds_divergence``, the estimated DS divergence)."""
        self.iterations.append(stats)
        self.pending.append(_iteration_metrics(stats, expert_reward_metric))

    def add_evaluation(self, result: EvalResult, step: int) -> None:
        row = {"env_steps": step, "normalized_return": result.normalized_return,
               "return_mean": result.return_mean, "return_std": result.return_std}
        self.curve.append(row)
        self.pending.append(_evaluation_metrics(row))

    def resend_history(self, expert_reward_metric: Optional[str]) -> None:
        """Queue every evaluation and iteration so far again, before what is pending: for a resumed run that
        continues in a new MLflow run (its own is not in this store). The RL losses already sent are not kept."""
        history = sorted([_evaluation_metrics(row) for row in self.curve] +
                         [_iteration_metrics(stats, expert_reward_metric) for stats in self.iterations],
                         key=lambda item: item[1])
        queued = {(key, step) for values, step in history for key in values}  # pending holds the newest too
        rest = [({k: v for k, v in values.items() if (k, step) not in queued}, step) for values, step in self.pending]
        self.pending = history + [(values, step) for values, step in rest if values]

    def flush(self, logged_until: Optional[dict[str, int]] = None) -> None:
        """Send pending metrics to MLflow, skipping steps MLflow already has (after a resume)."""
        for values, step in self.pending:
            tracking.log_metrics({k: v for k, v in values.items() if step > (logged_until or {}).get(k, -1)}, step)
        self.pending = []


def _iteration_metrics(stats: IterationStats, expert_reward_metric: Optional[str]) -> tuple[dict[str, float], int]:
    """A refit's statistics as MLflow metrics and their step."""
    values = {k: v for k, v in vars(stats).items() if k not in ("iteration", "env_steps")}
    named = {expert_reward_metric: stats.reward_mean_expert} if expert_reward_metric else {}
    return {**values, **named}, stats.env_steps


def _evaluation_metrics(row: dict[str, float]) -> tuple[dict[str, float], int]:
    """A learning-curve row as MLflow metrics and their step."""
    return {k: v for k, v in row.items() if k != "env_steps"}, int(row["env_steps"])


class LossWriter(KVWriter):
    """SB3 logger output: the RL learner's ``train/*`` values (actor and critic losses, entropy
    coefficient) into :class:`Records`, as ``<rl>/<name>``."""

    def __init__(self, records: Records, prefix: str):
        self.records, self.prefix = records, prefix

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        values = {f"{self.prefix}/{k.split('/', 1)[1]}": float(v) for k, v in key_values.items()
                  if k.startswith("train/") and k not in ("train/n_updates", "train/learning_rate")
                  and isinstance(v, (int, float, np.floating))}
        if values:
            self.records.pending.append((values, step))


class StepBar(BaseCallback):
    """Advances the progress bar by one per env step inside ``learn``."""

    def __init__(self, bar: tqdm):
        super().__init__()
        self.bar = bar

    def _on_step(self) -> bool:
        self.bar.update(1)
        return True


def _write_csv(path: Path, rows: list[dict[str, Any]], fields: Optional[list[str]] = None) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_model(cfg: TrainConfig, env: gym.Env, device: torch.device, resume_from: Optional[Path],
                spec: Algorithm, own: Optional[dict[str, Any]] = None) -> Any:
    """The SB3 learner (``train.rl``, or the method's own, built with its ``own`` settings in place of
    train's), with the relabelling replay buffer where the method has a reward: new, or loaded from a
    checkpoint folder."""
    algo = spec.learner() if spec.learner else ALGORITHMS[cfg.rl]
    if resume_from is not None:
        try:
            model = algo.load(resume_from / "model.zip", env=env, device=device, force_reset=False)
            model.load_replay_buffer(resume_from / "replay_buffer.pkl")
        except Exception as e:
            raise UserError(f"checkpoint {resume_from} is unreadable ({e.__class__.__name__}); "
                            "remove it and train without --resume") from e
        grow(model.replay_buffer, cfg.steps + 1)  # room for a larger budget (an extended run)
        model.buffer_size = cfg.steps + 1
        return model
    extra = {"ent_coef": cfg.ent_coef, "target_update_interval": cfg.target_update_interval} \
        if issubclass(algo, ALGORITHMS["sac"]) else {}
    settings = {**extra, "learning_rate": cfg.lr, "policy_kwargs": {"net_arch": list(cfg.net)}, **(own or {})}
    return algo("MlpPolicy", env, **settings, buffer_size=cfg.steps + 1, learning_starts=cfg.learning_starts,
                batch_size=cfg.batch_size, gamma=cfg.gamma, seed=cfg.seed, device=device, verbose=0,
                replay_buffer_class=SmilingReplayBuffer if spec.reward else ReplayBuffer)


def _settings(p: Params, dtype: torch.dtype, data: ExpertData, expert: Optional[ScoreModel],
              spec: Algorithm) -> dict[str, Any]:
    """What the run's results depend on, down to the expert data and the expert model's weights: logged
    to MLflow, and a resumed run must match it."""
    settings = {k: as_dict(getattr(p, k)) for k in spec.sections}
    settings["inputs"] = {"expert_data": data.meta["content_hash"]}
    if spec.needs_expert_model and expert is not None:
        settings["runtime"] = {"precision": dtype_name(dtype)}
        settings["inputs"]["expert_model"] = weights_hash(expert)
    return settings


def _tags(p: Params, data: ExpertData) -> dict[str, str]:
    return tracking.run_tags({"seed": p.train.seed, "algorithm": p.train.algorithm, "rl": p.train.rl,
                      "variant": "state-action" if data.meta["with_actions"] else "state-only",
                      "linear": p.score.linear, "config": algorithms.get(p.train.algorithm).config_tag(p),
                      "expert_states": data.meta["train_rows"] + data.meta["val_rows"]})


def _finish(out: Path, folder: Path, p: Params, data: ExpertData, run_id: str, policy: Any,
            curve: list[dict[str, float]], iterations: list[dict[str, float]], metrics: dict[str, Any],
            train_seconds: float, reward_model: Optional[RewardModel] = None) -> dict[str, Any]:
    """Write the policy, records and plot, and log the policy (and reward model) to MLflow. The training
    time goes to ``run.json`` (what made the run), so ``metrics.json`` stays the same for the same seed."""
    spec = algorithms.get(p.train.algorithm)
    info = {"dataset_id": data.meta["dataset_id"], "env_id": data.meta["env_id"], "algorithm": p.train.algorithm,
            "tags": _tags(p, data), "settings": run_settings(p, spec.tag_scopes),
            "train_seconds": round(train_seconds, 1),
            "mlflow_run_id": run_id, "policy_uri": tracking.log_torch_model(policy.policy.cpu(), "policy")}
    policy.save(out / "policy.zip")
    if reward_model is not None:
        name, network = reward_model.save(out / "reward_model.pt")
        info["reward_model_uri"] = tracking.log_torch_model(network.cpu(), name)
    headline = {k: v for k, v in metrics.items() if k.endswith("normalized_return")}  # columns in the MLflow UI
    tracking.log_metrics({"train_seconds": info["train_seconds"], **headline}, step=0)
    _write_csv(folder / "learning_curve.csv", curve)
    _write_csv(folder / "iterations.csv", iterations, [f.name for f in dataclasses.fields(IterationStats)])
    write_json(folder / "metrics.json", metrics)
    write_json(folder / "run.json", info)
    plot = plot_curves(out / "learning_curve.png", f"{spec.label} on {data.meta['dataset_id']}", spec.budget_unit,
                       "normalized return", {p.train.algorithm: [(r["env_steps"], r["normalized_return"]) for r in curve]},
                       hline=1.0)
    tracking.log_artifact(plot)
    return {**metrics, **info}


def refit_due(steps: int, cfg: TrainConfig) -> bool:
    """Whether the reward is refit at env step ``steps``: every ``iteration_steps`` from ``learning_starts`` on."""
    return steps >= cfg.learning_starts and (steps - cfg.learning_starts) % cfg.iteration_steps == 0


def _check_resumable(before: dict[str, Any], now: dict[str, Any], folder: Path) -> None:
    """A resumed run needs the checkpoint's settings and inputs; only ``train.steps`` may differ (a larger
    budget extends the run)."""
    def budgetless(settings: dict[str, Any]) -> dict[str, Any]:
        return {**settings, "train": {k: v for k, v in settings["train"].items() if k != "steps"}}

    before, now = budgetless(before), budgetless(now)
    if before != now:
        changed = sorted(f"{section}.{key}" for section in now for key in now[section]
                         if before.get(section, {}).get(key) != now[section][key])
        raise UserError(f"the checkpoint in {folder} was made with other settings or inputs "
                        f"({', '.join(changed)}); resume with the same ones or train without --resume")


def next_stop(steps: int, cfg: TrainConfig) -> int:
    """The next env step at which the loop refits, evaluates, checkpoints or ends."""
    start, every = cfg.learning_starts, cfg.iteration_steps
    refit = start if steps < start else start + ((steps - start) // every + 1) * every
    return min(refit, (steps // cfg.eval_every + 1) * cfg.eval_every,
               (steps // cfg.checkpoint_every + 1) * cfg.checkpoint_every, cfg.steps)


def train(p: Params, data: ExpertData, expert: Optional[ScoreModel], workdir: Path,
          resume: bool = False) -> dict[str, Any]:
    """Run the method ``train.algorithm`` names on ``data`` (SMILING: with the pretrained ``expert`` score
    model), or continue it from its last checkpoint with ``resume``; returns the final metrics (also in
    ``<workdir>/train_metrics/metrics.json``)."""
    cfg = p.train
    algorithms.check(p)
    spec = algorithms.get(cfg.algorithm)
    out, folder = workdir / "train", workdir / "train_metrics"
    device = resolve_device(p.runtime.device)
    dtype = resolve_precision(p.runtime.precision, device)
    settings = _settings(p, dtype, data, expert, spec)
    state = checkpoint.load_state(out / "checkpoint") if resume else None
    if state is not None:
        _check_resumable(state["settings"], settings, out / "checkpoint")
    env = make_env(data.meta, "training", cfg.termination)
    set_random_seed(cfg.seed)
    ctx = Context(p, data, expert, env, device, dtype)
    if spec.run is not None:
        return _own_run(spec.run, ctx, _references(data), out, folder, settings)

    reward_model = spec.reward(ctx) if spec.reward else None
    model = build_model(cfg, env, device, out / "checkpoint" if state else None, spec,
                        spec.learner_settings(p) if spec.learner_settings else None)
    if spec.prepare:
        spec.prepare(model, ctx)
    if model.num_timesteps > cfg.steps:
        raise UserError(f"the checkpoint in {out / 'checkpoint'} is at {model.num_timesteps} env steps, past "
                        f"--steps {cfg.steps}; give --steps {model.num_timesteps} or more to continue it")
    refs = _references(data)
    buffer = attach(model, reward_model, cfg) if reward_model else None
    refit = LearnerRefit(reward_model, cfg, data.val if len(data.val) else data.train) if reward_model else None
    records = Records()
    resume_id = None
    clock = TrainClock(state.get("train_seconds", 0.0) if state else 0.0)
    if state is not None:
        if reward_model is not None and refit is not None:
            reward_model.load_state_dict(state["reward_model"])
            refit.iteration = state["iteration"]
        records = Records(state["curve"], state["iterations"], state["pending"])
        checkpoint.restore_env(model, state["env"], seed=cfg.seed + model.num_timesteps)
        checkpoint.set_rng_state(state["rng"])
        resume_id = state["run_id"]
        log.info(f"resuming from the checkpoint at {model.num_timesteps} env steps (MLflow run {resume_id})")
        if not tracking.has_run(resume_id, data.meta["dataset_id"]):  # a checkpoint brought from another machine or store
            log.warning(f"MLflow run {resume_id} is not in this store ({tracking.tracking_uri()}): continuing in a "
                        f"new run, with the evaluations and iteration statistics so far logged again")
            records.resend_history(spec.expert_reward_metric)
            resume_id = None
    started_with = state["settings"]["train"]["steps"] if state is not None else cfg.steps  # a budget extended?
    model.set_logger(Logger(folder=None, output_formats=[LossWriter(records, cfg.rl)]))

    def save_checkpoint() -> None:
        """Write the checkpoint folder whole (it replaces the previous one only once complete), then send
        the metrics it covers. Taken between iterations: env, buffer and networks agree."""
        with atomic_dir(out / "checkpoint") as tmp:
            model.save(tmp / "model.zip")
            model.save_replay_buffer(tmp / "replay_buffer.pkl")
            checkpoint.save_state(tmp / "state.pt", {
                "reward_model": reward_model.state_dict() if reward_model else None,
                "iteration": refit.iteration if refit else 0, "curve": records.curve,
                "iterations": records.iterations, "pending": records.pending,
                "env": checkpoint.env_state(model.get_env()), "run_id": tracking.active_run_id(),
                "settings": settings, "train_seconds": clock.seconds()})
        records.flush()

    with tracking.run("train", data.meta["dataset_id"], settings, _tags(p, data), run_id=resume_id) as run_id:
        if state is not None:
            records.flush(tracking.logged_until(run_id))
        if started_with != cfg.steps:  # MLflow params cannot change: the run's params keep its first budget
            log.info(f"extending the run from {started_with} to {cfg.steps} env steps")
            tracking.set_tag("extended", f"train.steps {started_with} -> {cfg.steps}")
        if started_with == cfg.steps or resume_id is None:  # a new MLflow run, or one whose budget is unchanged
            tracking.log_dataset(data.meta, data.train, minari_root() / data.meta["dataset_id"], "training")
        bar = tqdm(total=cfg.steps, initial=model.num_timesteps, desc=spec.label, unit="step",
                   dynamic_ncols=True)
        while model.num_timesteps < cfg.steps:
            # (a) RL on the current reward: SAC collects env steps and trains on relabelled samples
            model.learn(next_stop(model.num_timesteps, cfg) - model.num_timesteps, callback=StepBar(bar),
                        reset_num_timesteps=False, log_interval=None)
            steps = model.num_timesteps
            # (b) every iteration_steps from learning_starts on: refit the reward on the learner's rows
            if buffer is not None and refit is not None:
                check_relabelling(model)
                if refit_due(steps, cfg):
                    records.add_iteration(refit(buffer, steps), spec.expert_reward_metric)
            model.logger.dump(steps)  # the RL learner's losses
            if steps % cfg.eval_every == 0 or steps == cfg.steps:
                _evaluate(model, data, refs, cfg, records, steps)
            if steps % cfg.checkpoint_every == 0 or steps == cfg.steps:
                save_checkpoint()  # the final state too, so a finished run can be continued
            bar.set_postfix(_progress(records), refresh=False)
        bar.close()
        records.flush()
        metrics = {
            "env_steps": cfg.steps,
            **curve_metrics(records.curve),
            "reward_evaluations": reward_model.evaluations if reward_model else 0,
            "iterations": refit.iteration if refit else 0,
        }
        return _finish(out, folder, p, data, run_id, model, records.curve,
                       [vars(s) for s in records.iterations], metrics, clock.seconds(), reward_model)


def _evaluate(model: Any, data: ExpertData, refs: References, cfg: TrainConfig, records: Records, step: int) -> None:
    """One evaluation of ``model``'s policy with the true reward, seeded by how many came before it."""
    result = evaluate_policy(policy_fn(model.policy, data.meta), data.meta, refs, cfg.eval_episodes,
                             seed=cfg.seed + 10_000 + len(records.curve) * 100)
    records.add_evaluation(result, step)


def _references(data: ExpertData) -> References:
    refs = references(data.meta)
    log.info(f"normalized return uses {refs.source}: random {refs.random:.1f} -> 0, expert {refs.expert:.1f} -> 1")
    return refs


def _progress(records: Records) -> dict[str, str]:
    """The progress bar's latest figures."""
    post = {}
    if records.curve:
        post["norm_return"] = f"{records.curve[-1]['normalized_return']:.2f}"
    if records.iterations:
        post["r_expert"] = f"{records.iterations[-1].reward_mean_expert:.3g}"
        post["r_learner"] = f"{records.iterations[-1].reward_mean_learner:.3g}"
    return post


def _own_run(own: Callable[[Context, Callable[[Any, int], None]], OwnRun], ctx: Context, refs: References,
             out: Path, folder: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """A method with its own training (``Algorithm.run``, e.g. BC) in a train run: its evaluations,
    records and MLflow logging as for the loop's methods."""
    p, data = ctx.p, ctx.data
    records = Records()
    clock = TrainClock()

    def evaluate(model: Any, step: int) -> None:
        _evaluate(model, data, refs, p.train, records, step)
        records.flush()

    with tracking.run("train", data.meta["dataset_id"], settings, _tags(p, data)) as run_id:
        tracking.log_dataset(data.meta, data.train, minari_root() / data.meta["dataset_id"], "training")
        result = own(ctx, evaluate)
        metrics = {**result.metrics, **curve_metrics(records.curve)}
        out.mkdir(parents=True, exist_ok=True)
        return _finish(out, folder, p, data, run_id, result.model, records.curve, [], metrics, clock.seconds())
