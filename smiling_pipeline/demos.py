"""Expert demonstrations: resolve Minari ids (local, then remote) and make local expert datasets.

A bare id (``mujoco/humanoid`` or ``mujoco/humanoid/expert``) resolves to the newest local
version, else the newest remote one (downloaded through Minari's Hugging Face client, a default
dependency), else a one-line error saying what was tried. Local datasets are made with Minari's own
``DataCollector`` from an SB3 SAC expert trained on the true reward, acting stochastically as the
official code records its experts (``demos.deterministic`` records its mean action instead), with
``ref_min_score``/``ref_max_score`` stored so that ``minari.get_normalized_score`` works.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional
from urllib.parse import urlparse

from smiling_pipeline.config import DemosConfig
from smiling_pipeline.errors import DatasetNotFound, UserError
from smiling_pipeline.io import write_json

if TYPE_CHECKING:  # Gymnasium, SB3 and Minari are imported where they are used: ids are checked before any of them
    import gymnasium as gym

# namespace/.../name with an optional -vN; Minari's own rule, but the version may be omitted.
_ID_RE = re.compile(r"^[A-Za-z0-9_][-\w]*(/[A-Za-z0-9_][-\w]*)*$")
_VERSION_RE = re.compile(r"^(?P<base>.+)-v(?P<version>\d+)$")
_REMOTE_TIMEOUT_S = 3.0
_NAMESPACE_FILE = "namespace_metadata.json"  # Minari's namespace metadata, one per namespace folder

log = logging.getLogger(__name__)


def minari_root(root: str | Path | None = None) -> Path:
    """The Minari store in use: ``root`` if given, else ``$MINARI_DATASETS_PATH``, else Minari's default."""
    if root is not None:
        return Path(root).expanduser().resolve()
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env).expanduser().resolve() if env else Path.home() / ".minari" / "datasets"


def use_minari_root(root: str | Path | None) -> Path:
    """Point Minari (which reads ``MINARI_DATASETS_PATH`` at call time) at ``root``; returns the store."""
    try:
        path = minari_root(root)
        path.exists()
    except OSError as e:
        raise UserError(f"Minari store {str(root)[:80]}: {e.strerror}; pass a usable folder with --minari-root") from e
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    return path


def check_dataset_id(dataset: str) -> None:
    """Reject ids that Minari could never hold (empty parts, spaces, stray characters)."""
    if not _ID_RE.match(dataset or ""):
        raise UserError(
            f"malformed dataset id {dataset!r}: expected namespace/name[-vN], "
            "e.g. mujoco/hopper/expert-v0 or mujoco/humanoid"
        )


def _unversioned(dataset_id: str) -> str:
    """``ns/name-v3`` -> ``ns/name``."""
    match = _VERSION_RE.match(dataset_id)
    return match.group("base") if match else dataset_id


def _matches(query: str, dataset_id: str) -> bool:
    """True when ``dataset_id`` is ``query`` itself, a version of it, or lies in its namespace."""
    return dataset_id == query or _unversioned(dataset_id) == query or dataset_id.startswith(query + "/")


def _pick(query: str, candidates: list[str], where: str) -> Optional[str]:
    """Choose among the newest versions matching ``query``: the only one, else the one named expert."""
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    experts = [c for c in candidates if _unversioned(c).endswith("/expert")]
    if len(experts) == 1:
        return experts[0]
    raise UserError(f"{query!r} is ambiguous in the {where} store: {', '.join(sorted(candidates))}; pass one of them")


def local_datasets(latest: bool = True) -> dict[str, dict[str, Any]]:
    """Metadata of the local datasets in the store (only the newest version of each by default)."""
    import minari

    root = minari_root()
    try:
        if not root.exists():
            return {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minari.list_local_datasets(latest_version=latest)
    except (OSError, RecursionError) as e:  # e.g. a store at / or in /proc
        raise UserError(f"cannot list the Minari store {str(root)[:80]} ({type(e).__name__}); point --minari-root "
                        "(or MINARI_DATASETS_PATH) at a folder of datasets") from e


def remote_host() -> str:
    """Host of the Minari remote (``MINARI_REMOTE``; Hugging Face honours ``HF_ENDPOINT``)."""
    remote = os.environ.get("MINARI_REMOTE", "hf://farama-minari")
    if remote.startswith("gcp://"):
        return "storage.googleapis.com:443"
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    return f"{endpoint.hostname}:{port}"


def remote_reachable(timeout: float = _REMOTE_TIMEOUT_S) -> Optional[str]:
    """None when the remote answers a TCP connect within ``timeout`` s, else the reason it does not."""
    host, port = remote_host().rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return None
    except OSError as e:
        return f"remote {host}:{port} unreachable ({e.__class__.__name__}: {e})"


def remote_datasets(query: Optional[str] = None) -> dict[str, dict[str, Any]]:
    """Newest compatible remote datasets; raises :class:`UserError` fast when the remote is unreachable."""
    reason = remote_reachable()
    if reason:
        raise UserError(reason)
    import minari

    try:
        return minari.list_remote_datasets(prefix=query, latest_version=True, compatible_minari_version=True)
    except Exception as e:  # the hub's own errors: network, auth, missing repo
        raise UserError(f"listing remote datasets failed: {str(e).splitlines()[0]}") from e


def resolve_dataset(dataset: str, download: bool = True) -> str:
    """Full Minari id (with version) for ``dataset``: newest local, else newest remote (downloaded)."""
    check_dataset_id(dataset)
    if _VERSION_RE.match(dataset) and dataset in local_datasets(latest=False):
        return dataset  # an explicit version, even when a newer one exists
    found = _pick(dataset, [i for i in local_datasets() if _matches(dataset, i)], "local")
    if found:
        return found
    root = minari_root()
    hint = (
        "make a local one with `smiling-cli demos --env ENV --dataset-id smiling/NAME/expert-v0` and pass that id, "
        f"or rerun where the Minari remote ({remote_host()}) can be reached: remote datasets are downloaded into {root}"
    )
    if not download:
        raise DatasetNotFound(f"dataset {dataset!r} not found in the local store {root}; {hint}")
    try:
        remote = [i for i in remote_datasets(_remote_prefix(dataset)) if _matches(dataset, i)]
    except UserError as e:
        raise DatasetNotFound(f"dataset {dataset!r} not found in the local store {root}, and {e}; {hint}") from e
    found = _pick(dataset, remote, "remote")
    if not found:
        raise DatasetNotFound(f"dataset {dataset!r} not found in the local store {root} nor on the remote; {hint}")
    _download(found)
    return found


def _remote_prefix(dataset: str) -> str:
    """Namespace to list remotely: everything before the last path part (the remote lists by prefix)."""
    return _unversioned(dataset).rsplit("/", 1)[0]


def _download(dataset_id: str) -> None:
    """Fetch a remote dataset into the local store, with the Hugging Face client's progress bars.

    Minari downloads into a hidden staging store first and the dataset is moved into place only once it
    is complete: Minari writes into the store directly, and would take the half of an interrupted
    download for the dataset (and skip downloading it again).
    """
    import minari

    root = minari_root()
    log.info(f"downloading {dataset_id} from the Minari remote ({remote_host()}) into {root}")
    # Minari's own notes on stdout name the staging store, and stdout is the command's result: dropped
    with _staging(root) as stage, _pointed_at(stage), contextlib.redirect_stdout(io.StringIO()):
        try:
            minari.download_dataset(dataset_id)
        except Exception as e:
            raise UserError(f"downloading {dataset_id} failed: {str(e).splitlines()[0]}") from e
        _move_into(stage, root)


def _move_into(stage: Path, root: Path) -> None:
    """Move the datasets and namespace metadata a download left in ``stage`` into the store ``root``; what
    the store has already is kept (another process may have fetched it meanwhile)."""
    for path in sorted(stage.rglob("*")):  # a folder before what it holds
        rel = path.relative_to(stage)
        wanted = path.name == _NAMESPACE_FILE or (path / "data").is_dir()  # namespace metadata, or a dataset
        if wanted and not any(part.startswith(".") for part in rel.parts) and not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, root / rel)


def load_dataset(dataset_id: str) -> Any:
    """Open a resolved local Minari dataset, with a clear error when its files are unreadable."""
    import minari

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return minari.load_dataset(dataset_id)
    except Exception as e:
        raise UserError(f"cannot read dataset {dataset_id} in {minari_root()}: {str(e).splitlines()[0]}") from e


# --- making a local expert dataset -------------------------------------------------------------


@dataclass(frozen=True)
class DemosResult:
    """What ``make_demos`` recorded."""

    dataset_id: str
    episodes: int
    steps: int
    expert_return: float
    expert_return_std: float
    random_return: float




def _algorithm(name: str) -> Any:
    """The SB3 class for an expert algorithm name."""
    from stable_baselines3 import PPO, SAC

    return {"sac": SAC, "ppo": PPO}[name]


def train_expert(cfg: DemosConfig, out: Path, device: str) -> Any:
    """SB3 SAC (or PPO) on the environment's true reward, with a progress bar; saved to ``out``.

    Off-policy returns swing between evaluations (a Hopper expert can fall back by half), so the
    policy is evaluated every ``cfg.eval_every`` steps and the best evaluation is the one kept
    (SB3's ``EvalCallback``), as RL Zoo does.
    """
    import numpy as np
    from stable_baselines3.common.callbacks import EvalCallback

    from smiling_pipeline.envs import make_env_from_id

    algorithm = _algorithm(cfg.algorithm)
    env = make_env_from_id(cfg.env_id, "training")
    model = algorithm("MlpPolicy", env, policy_kwargs={"net_arch": list(cfg.expert_net)}, seed=cfg.seed,
                      device=device, verbose=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as best:
        callback = EvalCallback(make_env_from_id(cfg.env_id), n_eval_episodes=cfg.eval_episodes, eval_freq=cfg.eval_every,
                                best_model_save_path=best, log_path=best, deterministic=True, verbose=0)
        model.learn(cfg.expert_steps, progress_bar=True, callback=callback)
        if Path(best, "best_model.zip").is_file():
            model = algorithm.load(Path(best, "best_model.zip"), device=device)
    model.save(out)
    means = [float(np.mean(r)) for r in callback.evaluations_results]
    if means:
        i = int(np.argmax(means))
        write_json(out.parent / "expert_evaluations.json", {
            "steps": [int(t) for t in callback.evaluations_timesteps], "mean_return": means,
            "best_step": int(callback.evaluations_timesteps[i]), "best_mean_return": means[i]})
    return model


def load_expert(path: str, algorithm: str, env: gym.Env, device: str) -> Any:
    """Load an SB3 policy and check that it fits ``env``."""
    from smiling_pipeline.envs import env_name

    if not Path(path).is_file():
        raise UserError(f"expert policy {path} not found; pass an SB3 .zip saved with model.save()")
    try:
        model = _algorithm(algorithm).load(path, device=device)
    except Exception as e:
        raise UserError(f"cannot load expert policy {path}: {str(e).splitlines()[0]}") from e
    if model.observation_space.shape != env.observation_space.shape or model.action_space.shape != env.action_space.shape:
        raise UserError(
            f"expert policy {path} expects obs {model.observation_space.shape} / actions {model.action_space.shape}, "
            f"but {env_name(env)} has {env.observation_space.shape} / {env.action_space.shape}"
        )
    return model


def check_storable(env: gym.Env, env_id: str) -> None:
    """Refuse an environment whose spec a dataset cannot store (Minari writes it as JSON, and training and
    evaluation rebuild the environment from it)."""
    try:
        if env.spec is not None:
            env.spec.to_json()
    except ValueError as e:
        raise UserError(f"{env_id}'s spec cannot be stored in a dataset ({str(e).splitlines()[0]}); register the "
                        "environment with a 'module:function' entry point") from e


def check_new_dataset_id(dataset_id: str) -> None:
    """Refuse an id a new local dataset cannot take: malformed, without a version, or in an official namespace."""
    check_dataset_id(dataset_id)
    if not _VERSION_RE.match(dataset_id):
        raise UserError(f"--dataset-id {dataset_id!r} needs a version, e.g. {dataset_id}-v0")
    if dataset_id.startswith("mujoco/") or dataset_id.startswith("D4RL/"):
        raise UserError(f"{dataset_id!r} would masquerade as an official Minari dataset; use your own namespace")


@contextmanager
def _pointed_at(store: Path) -> Iterator[None]:
    """Point Minari at ``store`` for the block, then back at the store it used before."""
    before = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(store)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = before


@contextmanager
def _staging(root: Path) -> Iterator[Path]:
    """A hidden folder inside the store (Minari skips dot-folders) removed on exit."""
    root.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def make_demos(cfg: DemosConfig, root: Path, workdir: Path, device: str, force: bool = False) -> DemosResult:
    """Train (or load) an expert, record ``cfg.episodes`` episodes with DataCollector into ``root``.

    The dataset is written in a hidden staging folder and moved into place at the end, so an
    interrupted run leaves no half-made dataset behind.
    """
    from minari import DataCollector

    from smiling_pipeline.envs import Policy, check_box_spaces, make_env_from_id, random_policy, rollout_returns

    check_new_dataset_id(cfg.dataset_id)
    target = root / cfg.dataset_id
    if target.exists() and not force:
        raise UserError(f"dataset {cfg.dataset_id} already exists in {root}; pass --force to replace it")
    env = make_env_from_id(cfg.env_id)  # Dict observations flattened, by a wrapper the dataset's spec records
    check_box_spaces(env, cfg.env_id)
    check_storable(env, cfg.env_id)

    policy_file = workdir / "expert_policy.zip"
    if cfg.policy_path:
        model = load_expert(cfg.policy_path, cfg.algorithm, env, device)
    else:
        model = train_expert(cfg, policy_file, device)
    expert: Policy = lambda obs: model.predict(obs, deterministic=cfg.deterministic)[0]  # noqa: E731

    random_returns = rollout_returns(env, random_policy(env, cfg.seed), cfg.random_episodes, cfg.seed, "random policy")
    with _staging(root) as stage:
        with _pointed_at(stage):
            collector = DataCollector(env, record_infos=False)
            expert_returns = rollout_returns(collector, expert, cfg.episodes, cfg.seed + 1_000_000, "recording expert")
            dataset = collector.create_dataset(
                dataset_id=cfg.dataset_id,
                eval_env=env.spec,  # as recorded: flattened, with an importable entry point
                algorithm_name=f"SB3-{cfg.algorithm.upper()} ({'loaded ' + cfg.policy_path if cfg.policy_path else f'{cfg.expert_steps} true-reward steps, net {list(cfg.expert_net)}, best of evaluations every {cfg.eval_every}'})",
                author="smiling_pipeline",
                ref_min_score=float(random_returns.mean()),
                ref_max_score=float(expert_returns.mean()),
                description=(
                    f"Local expert demonstrations for {cfg.env_id} made by smiling-cli demos: {cfg.episodes} "
                    f"episodes of an SB3 {cfg.algorithm.upper()} expert acting "
                    f"{'deterministically (its mean action)' if cfg.deterministic else 'stochastically (sampled actions)'}; "
                    "ref_min_score is the mean return of "
                    f"{cfg.random_episodes} uniform-random episodes, ref_max_score that of the recorded episodes."
                ),
            )
            steps = int(dataset.total_steps)
            collector.close()
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(stage / cfg.dataset_id, target)
    return DemosResult(
        dataset_id=cfg.dataset_id,
        episodes=cfg.episodes,
        steps=steps,
        expert_return=float(expert_returns.mean()),
        expert_return_std=float(expert_returns.std()),
        random_return=float(random_returns.mean()),
    )
