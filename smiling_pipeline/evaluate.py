"""Stage 4: evaluation with the true environment reward, reported as normalized return (random 0, expert 1)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np

from smiling_pipeline import tracking
from smiling_pipeline.config import Params, as_dict
from smiling_pipeline.envs import Policy, random_policy, rollout_returns
from smiling_pipeline.errors import UserError
from smiling_pipeline.ingest import ExpertData, env_id_of
from smiling_pipeline.io import write_json
from smiling_pipeline.rl import ALGORITHMS
from smiling_pipeline.runtime import resolve_device


@dataclass(frozen=True)
class References:
    """Returns that map to normalized 0 and 1, and where they came from."""

    random: float
    expert: float
    source: str

    def normalize(self, returns: np.ndarray | float) -> np.ndarray | float:
        return (np.asarray(returns) - self.random) / (self.expert - self.random)


def references(meta: dict[str, Any], env_id: str, episodes: int = 20, seed: int = 123) -> References:
    """The dataset's ``ref_min_score``/``ref_max_score``; else measured random-policy returns and the
    mean return of the expert demonstrations (said in ``source``)."""
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is not None and hi is not None and hi != lo:
        return References(float(lo), float(hi), "dataset reference scores (ref_min_score, ref_max_score)")
    env = gym.make(env_id)
    measured = float(rollout_returns(env, random_policy(env, seed), episodes, seed, "random policy").mean())
    expert = float(meta["expert_return_mean"])
    if expert == measured:
        raise UserError(f"cannot normalise returns for {meta['dataset_id']}: expert and random returns are both {expert}")
    return References(measured, expert, f"fallback: random policy measured over {episodes} episodes, "
                                        "expert = mean return of the demonstrations (dataset has no reference scores)")


@dataclass(frozen=True)
class EvalResult:
    """Raw and normalized returns of one evaluation."""

    episodes: int
    return_mean: float
    return_std: float
    normalized_return: float
    normalized_return_std: float
    reference_source: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_policy(policy: Policy, env_id: str, refs: References, episodes: int, seed: int,
                    video_dir: Optional[Path] = None) -> EvalResult:
    """Run ``episodes`` episodes with the true reward; optionally record the first one as a video."""
    if episodes < 1:
        raise UserError("evaluation needs at least 1 episode")
    env = gym.make(env_id, render_mode="rgb_array" if video_dir else None)
    if video_dir:
        env = gym.wrappers.RecordVideo(env, str(video_dir), episode_trigger=lambda ep: ep == 0, disable_logger=True)
    returns = rollout_returns(env, policy, episodes, seed, "evaluating")
    env.close()
    norm = np.asarray(refs.normalize(returns))
    return EvalResult(episodes, float(returns.mean()), float(returns.std()), float(norm.mean()), float(norm.std()),
                      refs.source)


def is_uri(ref: str) -> bool:
    return ref.startswith(("models:/", "runs:/")) or "://" in ref


def policy_ref(workdir: Path, policy: Optional[str]) -> str:
    """The policy to evaluate (default: the one trained in ``workdir``), a local file checked to exist."""
    ref = policy or str(workdir / "train" / "policy.zip")
    if not is_uri(ref):
        _check_file(ref)
    return ref


def _check_file(ref: str) -> None:
    if not Path(ref).is_file():
        raise UserError(f"policy {ref} not found; train one with `smiling-cli train` or pass an MLflow model URI")


def load_policy(ref: str, algorithm: str = "sac", device: str = "cpu") -> Any:
    """An SB3 policy from a saved ``.zip`` of ``algorithm`` or an MLflow model URI (``models:/...``, ``runs:/...``)."""
    if is_uri(ref):
        import mlflow.pytorch

        mlflow.set_tracking_uri(tracking.tracking_uri())
        try:
            return mlflow.pytorch.load_model(ref, map_location=device)
        except Exception as e:
            raise UserError(f"cannot load policy {ref} from MLflow: {str(e).splitlines()[0]}") from e
    _check_file(ref)
    try:
        return ALGORITHMS[algorithm].load(ref, device=device).policy
    except Exception as e:
        raise UserError(f"cannot load {algorithm} policy {ref}: {str(e).splitlines()[0]}") from e


def policy_fn(policy: Any, env_id: str) -> Policy:
    """Deterministic action function of an SB3 policy, checked against the environment's spaces."""
    env = gym.make(env_id)
    if policy.observation_space.shape != env.observation_space.shape or policy.action_space.shape != env.action_space.shape:
        raise UserError(f"policy expects obs {policy.observation_space.shape} / actions {policy.action_space.shape} but "
                        f"{env_id} has {env.observation_space.shape} / {env.action_space.shape}")
    policy.set_training_mode(False)
    return lambda obs: policy.predict(obs, deterministic=True)[0]


def evaluate(p: Params, data: ExpertData, workdir: Path, ref: str, video: Optional[bool] = None) -> dict[str, Any]:
    """Evaluate the policy ``ref`` (a ``.zip`` or an MLflow model URI) on ``data``'s environment; records
    go to ``workdir/evaluate`` and MLflow."""
    cfg = p.evaluate
    env_id = env_id_of(data.meta)
    policy = load_policy(ref, "sac" if p.train.algorithm == "bc" else p.train.rl, str(resolve_device(p.runtime.device)))
    act = policy_fn(policy, env_id)
    refs = references(data.meta, env_id)
    out = workdir / "evaluate"
    record = cfg.video if video is None else video
    dataset_id = data.meta["dataset_id"]
    tags = tracking.run_tags({"seed": p.train.seed, "algorithm": p.train.algorithm, "policy": ref,
                              "variant": "state-action" if data.meta["with_actions"] else "state-only"})
    with tracking.run("evaluate", dataset_id, {"evaluate": as_dict(cfg), "policy": ref}, tags) as run:
        result = evaluate_policy(act, env_id, refs, cfg.episodes, cfg.seed, video_dir=out / "video" if record else None)
        tracking.log_metrics({"normalized_return": result.normalized_return, "return_mean": result.return_mean,
                              "return_std": result.return_std}, step=0)
        numbers = {k: v for k, v in result.as_dict().items() if k != "reference_source"}
        metrics = {**numbers, "reference_random": refs.random, "reference_expert": refs.expert}
        info = {"dataset_id": dataset_id, "env_id": env_id, "policy": ref, "mlflow_run_id": run.info.run_id,
                "reference_source": refs.source}
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
    return {**metrics, **info}
