"""Stage 4: evaluation with the true environment reward, reported as normalized return (random 0, expert 1)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from smiling_pipeline import algorithms, tracking
from smiling_pipeline.config import Params, as_dict
from smiling_pipeline.demos import minari_root
from smiling_pipeline.envs import Policy, make_env, random_policy, recorded_spec, rollout_returns
from smiling_pipeline.errors import UserError
from smiling_pipeline.ingest import ExpertData
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


def references(meta: dict[str, Any], episodes: int = 20, seed: int = 123) -> References:
    """The dataset's ``ref_min_score``/``ref_max_score``; else random-policy returns measured on its recorded
    environment and the mean return of the expert demonstrations (said in ``source``)."""
    lo, hi = meta.get("ref_min_score"), meta.get("ref_max_score")
    if lo is not None and hi is not None and hi != lo:
        return References(float(lo), float(hi), "dataset reference scores (ref_min_score, ref_max_score)")
    env = make_env(meta)
    measured = float(rollout_returns(env, random_policy(env, seed), episodes, seed, "random policy").mean())
    env.close()
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


def evaluate_policy(policy: Policy, meta: dict[str, Any], refs: References, episodes: int, seed: int) -> EvalResult:
    """Run ``episodes`` episodes with the true reward on the dataset's recorded environment (episode ``i``
    seeded ``seed + i``)."""
    env = make_env(meta)
    returns = rollout_returns(env, policy, episodes, seed, "evaluating")
    env.close()
    norm = np.asarray(refs.normalize(returns))
    return EvalResult(episodes, float(returns.mean()), float(returns.std()), float(norm.mean()), float(norm.std()),
                      refs.source)


def record_episode(policy: Policy, meta: dict[str, Any], seed: int, out: Path, frames_in_strip: int = 6) -> list[Path]:
    """Render one episode (the evaluation's first: same seed) off-screen to ``out/episode.mp4`` and a
    strip of ``frames_in_strip`` frames, ``out/frames.png``; MuJoCo renders with ``MUJOCO_GL=egl``."""
    from moviepy.video.io.ImageSequenceClip import ImageSequenceClip

    from smiling_pipeline.report import plt

    env = make_env(meta, "video")
    obs, _ = env.reset(seed=seed)
    frames, done = [env.render()], False
    while not done:
        obs, _, terminated, truncated, _ = env.step(policy(obs))
        frames.append(env.render())
        done = terminated or truncated
    fps = env.metadata.get("render_fps", 30)
    env.close()
    out.mkdir(parents=True, exist_ok=True)
    video, strip = out / "episode.mp4", out / "frames.png"
    ImageSequenceClip([np.asarray(f) for f in frames], fps=fps).write_videofile(str(video), logger=None, audio=False)
    picks = np.linspace(0, len(frames) - 1, frames_in_strip).astype(int)
    fig, axes = plt.subplots(1, frames_in_strip, figsize=(2 * frames_in_strip, 2.2), dpi=100)
    for ax, i in zip(axes, picks, strict=True):
        ax.imshow(frames[i])
        ax.set_title(f"step {i}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{meta['env_id']}, evaluation episode (seed {seed})", fontsize=9)
    fig.savefig(strip, bbox_inches="tight")
    plt.close(fig)
    return [video, strip]


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
        try:
            return tracking.load_torch_model(ref, device)
        except Exception as e:
            raise UserError(f"cannot load policy {ref} from MLflow: {str(e).splitlines()[0]}") from e
    _check_file(ref)
    try:
        return ALGORITHMS[algorithm].load(ref, device=device).policy
    except Exception as e:
        raise UserError(f"cannot load {algorithm} policy {ref}: {str(e).splitlines()[0]}") from e


def policy_fn(policy: Any, meta: dict[str, Any]) -> Policy:
    """Deterministic action function of an SB3 policy, checked against the dims of the dataset (``meta``),
    which :func:`envs.make_env` checks its environment against."""
    dims = ((meta["obs_dim"],), (meta["action_dim"],))
    if (policy.observation_space.shape, policy.action_space.shape) != dims:
        raise UserError(f"policy expects obs {policy.observation_space.shape} / actions {policy.action_space.shape} but "
                        f"{meta['env_id']} of {meta['dataset_id']} has {dims[0]} / {dims[1]}")
    policy.set_training_mode(False)
    return lambda obs: policy.predict(obs, deterministic=True)[0]


def trained_records(workdir: Path) -> Optional[dict[str, Any]]:
    """The train run's ``run.json`` and ``metrics.json`` in ``workdir`` (None before training)."""
    folder = workdir / "train_metrics"
    if not (folder / "metrics.json").is_file():
        return None
    try:
        return {**json.loads((folder / "run.json").read_text()), **json.loads((folder / "metrics.json").read_text())}
    except (OSError, ValueError) as e:
        raise UserError(f"the training records in {folder} are unreadable ({type(e).__name__}); train again") from e


def evaluate(p: Params, data: ExpertData, workdir: Path, ref: str, video: Optional[bool] = None,
             trained: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Evaluate the policy ``ref`` (a ``.zip`` or an MLflow model URI) on ``data``'s environment; records
    go to ``workdir/evaluate`` and MLflow. ``trained``: the records of the train run that made the policy
    (its ``run.json`` and ``metrics.json``): the evaluate run is named after it, its result is logged at
    that run's last env step, and the policy is registered for the dataset (alias ``champion`` when it
    is the best evaluated so far)."""
    cfg = p.evaluate
    env_id = recorded_spec(data.meta).id
    policy = load_policy(ref, algorithms.get(p.train.algorithm).policy_rl(p), str(resolve_device(p.runtime.device)))
    act = policy_fn(policy, data.meta)
    refs = references(data.meta)
    out = workdir / "evaluate"
    record = cfg.video if video is None else video
    dataset_id = data.meta["dataset_id"]
    described = {"seed": p.train.seed, "algorithm": p.train.algorithm,
                 "variant": "state-action" if data.meta["with_actions"] else "state-only"}
    if trained:
        described |= {k: v for k, v in trained.get("tags", {}).items() if k in ("seed", "algorithm", "variant", "linear")}
        described["train_run"] = trained["mlflow_run_id"]
    tags = tracking.run_tags({**described, "policy": ref})
    with tracking.run("evaluate", dataset_id, {"evaluate": as_dict(cfg), "policy": ref}, tags) as run_id:
        tracking.log_dataset(data.meta, data.train, minari_root() / dataset_id, "evaluation")  # the Dataset column
        result = evaluate_policy(act, data.meta, refs, cfg.episodes, cfg.seed)
        shutil.rmtree(out / "video", ignore_errors=True)  # no earlier run's episode passes for this one's
        (out / "video").mkdir(parents=True)  # empty without a recording: the DVC stage declares the folder
        if record:
            for path in record_episode(act, data.meta, cfg.seed, out / "video"):
                tracking.log_artifact(path, "video")
        tracking.log_metrics({"normalized_return": result.normalized_return, "return_mean": result.return_mean,
                              "return_std": result.return_std}, step=int(trained["env_steps"]) if trained else 0)
        numbers = {k: v for k, v in result.as_dict().items() if k != "reference_source"}
        metrics = {**numbers, "reference_random": refs.random, "reference_expert": refs.expert}
        info = {"dataset_id": dataset_id, "env_id": env_id, "policy": ref, "mlflow_run_id": run_id,
                "reference_source": refs.source}
        if trained and trained.get("policy_uri"):
            registered, champion_uri, champion = tracking.promote(trained["policy_uri"], dataset_id,
                                                                  result.normalized_return)
            info |= {"registered_model": registered, "champion": champion, "champion_uri": champion_uri}
        write_json(out / "metrics.json", metrics)
        write_json(out / "run.json", info)
    return {**metrics, **info}
