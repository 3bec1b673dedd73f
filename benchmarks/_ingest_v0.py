"""Frozen copy of ``smiling_pipeline/ingest.py`` as of commit 6277ecf (before the streaming rewrite).

Used only by ``benchmarks/ingest_scale.py`` as the "before" measurement and to check that the new
ingestion writes the same arrays (train, val, mean, std: bit for bit) and the same content hash.
Do not edit; do not import from the package.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from smiling_pipeline.config import IngestConfig, as_dict
from smiling_pipeline.demos import check_box_spaces, load_dataset, resolve_dataset
from smiling_pipeline.errors import DataError, UserError
from smiling_pipeline.io import atomic_dir, write_json

@dataclass(frozen=True)
class ExpertData:
    """Expert inputs for score models: states, or [state, action] rows in the state-action variant."""

    train: np.ndarray
    val: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    meta: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])


def read_episodes(dataset: Any, max_episodes: Optional[int], every: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flatten episodes into (states, actions, episode returns); states are those actions were taken in."""
    states, actions, returns = [], [], []
    total = dataset.total_episodes if max_episodes is None else min(max_episodes, dataset.total_episodes)
    episodes = dataset.iterate_episodes(dataset.episode_indices[:total])
    for ep in tqdm(episodes, total=total, desc="reading episodes", unit="ep", leave=False):
        obs = np.asarray(ep.observations)
        act = np.asarray(ep.actions)
        if obs.ndim != 2 or act.ndim != 2 or len(obs) != len(act) + 1:
            raise DataError(
                f"{dataset.spec.dataset_id}: episode {ep.id} has observations {obs.shape} and actions {act.shape}; "
                "expected flat arrays with one more observation than actions"
            )
        states.append(obs[:-1:every])
        actions.append(act[::every])
        returns.append(float(np.sum(ep.rewards)))
    if not states or sum(len(s) for s in states) == 0:
        raise DataError(f"{dataset.spec.dataset_id} holds no steps; record some episodes first")
    return np.concatenate(states), np.concatenate(actions), np.asarray(returns)


def check_against_env(dataset: Any, states: np.ndarray, actions: np.ndarray) -> None:
    """The arrays must be finite and shaped like the dataset's and its environment's spaces."""
    dataset_id = dataset.spec.dataset_id
    for name, arr in (("observations", states), ("actions", actions)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise DataError(f"{dataset_id}: {int(bad.sum())} non-finite values (NaN/inf) in {name}; fix or re-record the dataset")
    obs_shape, act_shape = dataset.observation_space.shape, dataset.action_space.shape
    if states.shape[1:] != obs_shape or actions.shape[1:] != act_shape:
        raise DataError(
            f"{dataset_id}: stored arrays have shapes {states.shape[1:]} / {actions.shape[1:]} but the dataset "
            f"declares {obs_shape} / {act_shape}"
        )
    env = _make_env(dataset.spec.env_spec)
    if env is None:  # no spec, or the environment is not installed here: nothing to compare against
        return
    if env.observation_space.shape != obs_shape or env.action_space.shape != act_shape:
        raise DataError(
            f"{dataset_id}: observations {obs_shape} / actions {act_shape} do not match its environment {env.spec.id} "
            f"({env.observation_space.shape} / {env.action_space.shape})"
        )
    env.close()


def _make_env(spec: Optional[gym.envs.registration.EnvSpec]) -> Optional[gym.Env]:
    """The dataset's environment, without recorded wrappers that cannot be rebuilt here; None if unavailable."""
    if spec is None:
        return None
    for candidate in (spec, dataclasses.replace(spec, additional_wrappers=())):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return gym.make(candidate)
        except Exception:  # unknown env id or wrapper entry point
            continue
    return None


def split(rows: np.ndarray, cfg: IngestConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random subset of ``cfg.num_states`` rows, split into train and validation parts."""
    order = rng.permutation(len(rows))
    if cfg.num_states is not None:
        order = order[: cfg.num_states]
    n_val = int(round(len(order) * cfg.val_fraction))
    if len(order) - n_val < 2:
        raise DataError(f"only {len(order)} states after subsampling; need at least 2 for training")
    return rows[order[n_val:]], rows[order[:n_val]]


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, shapes and bytes (identifies the ingested data)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def validate(cfg: IngestConfig) -> None:
    """Options out of range are user errors."""
    if cfg.every < 1:
        raise UserError("--every must be at least 1")
    if cfg.num_states is not None and cfg.num_states < 2:
        raise UserError("--num-states must be at least 2")
    if cfg.max_episodes is not None and cfg.max_episodes < 1:
        raise UserError("--max-episodes must be at least 1")
    if not 0.0 <= cfg.val_fraction < 1.0:
        raise UserError("--val-fraction must be in [0, 1)")


def ingest(cfg: IngestConfig, out_dir: Path) -> dict[str, Any]:
    """Resolve, read, check, split and write; returns the metadata written to ``meta.json``."""
    validate(cfg)
    dataset_id = resolve_dataset(cfg.dataset)
    dataset = load_dataset(dataset_id)
    check_box_spaces(dataset, dataset_id)
    states, actions, returns = read_episodes(dataset, cfg.max_episodes, cfg.every)
    check_against_env(dataset, states, actions)

    rows = np.concatenate([states, actions], axis=1) if cfg.with_actions else states
    train, val = split(rows.astype(np.float32), cfg, np.random.default_rng(cfg.seed))
    mean = train.mean(axis=0)
    std = train.std(axis=0)  # raw; the score model floors it (score.min_std)
    arrays = {"train": train, "val": val, "mean": mean, "std": std}
    metadata = dataset.storage.metadata
    spec = dataset.spec.env_spec
    meta = {
        "dataset_id": dataset_id,
        "requested": cfg.dataset,
        "minari_version": dataset.minari_version,
        "env_id": spec.id if spec else None,
        "env_spec": spec.to_json() if spec else None,
        "obs_dim": int(states.shape[1]),
        "action_dim": int(actions.shape[1]),
        "input_dim": int(rows.shape[1]),
        "with_actions": cfg.with_actions,
        "ref_min_score": metadata.get("ref_min_score"),
        "ref_max_score": metadata.get("ref_max_score"),
        "episodes_total": int(dataset.total_episodes),
        "steps_total": int(dataset.total_steps),
        "episodes_used": int(len(returns)),
        "states_available": int(len(rows)),
        "train_rows": int(len(train)),
        "val_rows": int(len(val)),
        "expert_return_mean": float(returns.mean()),
        "expert_return_std": float(returns.std()),
        "content_hash": content_hash(arrays),
        "settings": as_dict(cfg),
    }
    with atomic_dir(out_dir) as tmp:
        np.savez_compressed(tmp / "expert.npz", **arrays)
        write_json(tmp / "meta.json", meta)
    return meta


def load_expert_data(ingest_dir: Path) -> ExpertData:
    """Read what :func:`ingest` wrote, with a clear error for missing or corrupted files."""
    npz, meta_file = ingest_dir / "expert.npz", ingest_dir / "meta.json"
    if not npz.is_file() or not meta_file.is_file():
        raise UserError(f"no ingested data in {ingest_dir}; run `smiling-cli ingest --dataset ID` first")
    try:
        with np.load(npz) as f:
            arrays = {k: f[k] for k in ("train", "val", "mean", "std")}
        meta = json.loads(meta_file.read_text())
    except Exception as e:
        raise DataError(f"ingested data in {ingest_dir} is unreadable ({e.__class__.__name__}); run ingest again") from e
    return ExpertData(meta=meta, **arrays)
