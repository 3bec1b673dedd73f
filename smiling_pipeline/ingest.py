"""Ingestion: read a Minari dataset once and write the expert arrays the later stages use.

Output folder (written whole or not at all):
``expert.npz`` - ``train``, ``val`` (states, or [state, action] rows for the state-action variant),
``mean``, ``std`` (of the training rows, for normalisation);
``meta.json`` - dataset id, the recorded environment's full spec (``EnvSpec.to_json()``: kwargs,
``max_episode_steps``, wrappers; ``envs.make_env`` rebuilds it), dims, reference scores, counts, mean
return, content hash.

Reading streams (peak memory about the size of the float32 output; ``benchmarks/ingest_scale.py``
measures it): the number of states is known up front from Minari's per-episode
``total_steps`` metadata, so the random subset and its train/validation split are drawn first
(:func:`_selection`) and each episode's picked rows are written straight into one preallocated
float32 array, at their final positions. Nothing else of the dataset's size is ever
allocated: finiteness is checked episode by episode, mean and std are computed in chunks (bit for
bit what NumPy's ``mean``/``std`` give), the hash reads the arrays in place. Large outputs are
written uncompressed (zlib is slow and saves little on float data).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, cast

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from smiling_pipeline.config import IngestConfig, as_dict
from smiling_pipeline.demos import load_dataset, resolve_dataset
from smiling_pipeline.envs import check_box_spaces, env_name, make_from_spec
from smiling_pipeline.errors import DataError, UserError
from smiling_pipeline.io import atomic_dir, write_json

COMPRESS_MAX_BYTES = 32 * 2**20  # outputs up to this size are zlib-compressed; larger ones are not
_STATS_CHUNK_ROWS = 16_384
_STATS_ONE_SHOT_BYTES = 64 * 2**20  # below this, mean_std is plain NumPy (a full-size temporary is small)


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


# --- reading ----------------------------------------------------------------------------------


def _episode_indices(dataset: Any, max_episodes: Optional[int]) -> np.ndarray:
    total = dataset.total_episodes if max_episodes is None else min(max_episodes, dataset.total_episodes)
    return np.asarray(dataset.episode_indices[:total])


def _episodes(dataset: Any, indices: np.ndarray, every: int, desc: str = "reading episodes"
              ) -> Iterator[tuple[np.ndarray, np.ndarray, float]]:
    """Per episode: (states actions were taken in, those actions, return), each every ``every``-th step."""
    episodes = dataset.iterate_episodes(indices)
    for ep in tqdm(episodes, total=len(indices), desc=desc, unit="ep", leave=False):
        obs = np.asarray(ep.observations)
        act = np.asarray(ep.actions)
        if obs.ndim != 2 or act.ndim != 2 or len(obs) != len(act) + 1:
            raise DataError(
                f"{dataset.spec.dataset_id}: episode {ep.id} has observations {obs.shape} and actions {act.shape}; "
                "expected flat arrays with one more observation than actions"
            )
        yield obs[:-1:every], act[::every], float(np.sum(ep.rewards))


# --- checks -----------------------------------------------------------------------------------


def _check_finite(dataset_id: str, bad_observations: int, bad_actions: int) -> None:
    for name, bad in (("observations", bad_observations), ("actions", bad_actions)):
        if bad:
            raise DataError(f"{dataset_id}: {bad} non-finite values (NaN/inf) in {name}; fix or re-record the dataset")


def _check_shapes(dataset: Any, obs_shape: tuple[int, ...], act_shape: tuple[int, ...]) -> None:
    """Stored per-step shapes must be those the dataset declares and its environment has."""
    dataset_id = dataset.spec.dataset_id
    declared_obs, declared_act = dataset.observation_space.shape, dataset.action_space.shape
    if obs_shape != declared_obs or act_shape != declared_act:
        raise DataError(
            f"{dataset_id}: stored arrays have shapes {obs_shape} / {act_shape} but the dataset "
            f"declares {declared_obs} / {declared_act}"
        )
    env = _make_env(dataset.spec.env_spec)
    if env is None:  # no spec, or the environment is not installed here: nothing to compare against
        return
    if env.observation_space.shape != declared_obs or env.action_space.shape != declared_act:
        raise DataError(
            f"{dataset_id}: observations {declared_obs} / actions {declared_act} do not match its environment "
            f"{env_name(env)} ({env.observation_space.shape} / {env.action_space.shape})"
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
                return make_from_spec(candidate)
        except Exception:  # not installed here, or a wrapper that cannot be rebuilt
            continue
    return None


# --- subset, split, statistics, hash ----------------------------------------------------------


def _selection(n: int, cfg: IngestConfig, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """The picked rows in output order (validation rows first) and the validation count."""
    order = rng.permutation(n)
    if cfg.num_states is not None:
        order = order[: cfg.num_states]
    return order, int(round(len(order) * cfg.val_fraction))


def _check_enough(picked: int, n_val: int) -> None:
    if picked - n_val < 2:
        held = f", {n_val} of them held out for validation (lower ingest.val_fraction)" if n_val else ""
        raise DataError(f"only {picked} states after subsampling{held}; need at least 2 for training")


def _column_sum(rows: np.ndarray, fn: Any = None) -> np.ndarray:
    """``np.add.reduce(fn(rows), axis=0)`` in chunks, bit-identical to the one-shot reduction.

    NumPy sums axis 0 of a C-ordered array row after row into one accumulator; carrying that
    accumulator as the first row of the next chunk keeps exactly the same order of additions.
    """
    n, d = rows.shape
    buf = np.empty((min(n, _STATS_CHUNK_ROWS) + 1, d), dtype=rows.dtype)
    acc: Optional[np.ndarray] = None
    for i in range(0, n, _STATS_CHUNK_ROWS):
        chunk = rows[i : i + _STATS_CHUNK_ROWS]
        m, start = len(chunk), (0 if acc is None else 1)
        view = buf[: m + start]
        if acc is not None:
            view[0] = acc
        if fn is None:
            view[start:] = chunk
        else:
            fn(chunk, out=view[start:])
        acc = np.add.reduce(view, axis=0)
    assert acc is not None
    return acc


def mean_std(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``rows.mean(axis=0)`` and ``rows.std(axis=0)`` bit for bit (float32 rows stay float32), without a
    full-size temporary for large arrays.

    With one column NumPy coalesces the array to 1-D and sums pairwise, which the chunked sums do
    not reproduce; such arrays (and small ones) go to NumPy directly.
    """
    if rows.ndim != 2 or rows.shape[1] == 1 or rows.nbytes <= _STATS_ONE_SHOT_BYTES:
        return rows.mean(axis=0), rows.std(axis=0)
    n = len(rows)
    mean = _column_sum(rows) / n

    def squared_deviation(chunk: np.ndarray, out: np.ndarray) -> None:
        np.subtract(chunk, mean, out=out)
        np.multiply(out, out, out=out)

    return mean, np.sqrt(_column_sum(rows, squared_deviation) / n)


def content_hash(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays' names, shapes and bytes (identifies the ingested data)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype}:{a.shape}".encode())
        h.update(a.reshape(-1).data.cast("B"))  # the same bytes as a.tobytes(), without the copy
    return h.hexdigest()


# --- streaming ingestion ----------------------------------------------------------------------


class _CountMismatch(Exception):
    """An episode holds another number of steps than its metadata says."""


@dataclass
class _Gathered:
    rows: np.ndarray  # (picked, input dim) float32: validation rows first, then training rows
    n_val: int
    available: int  # states after ``every`` (what the subset was drawn from)
    returns: np.ndarray
    obs_dim: int
    action_dim: int


def _metadata_counts(dataset: Any, indices: np.ndarray) -> Optional[np.ndarray]:
    """Steps per episode from Minari's episode metadata (what ``MinariDataset.total_steps`` sums); None if absent."""
    try:
        return np.array([int(m["total_steps"]) for m in dataset.storage.get_episode_metadata(indices)], dtype=np.int64)
    except Exception:  # missing or malformed metadata: count by reading
        return None


def _counted_steps(dataset: Any, indices: np.ndarray) -> np.ndarray:
    return np.array([len(a) for _, a, _ in _episodes(dataset, indices, 1, desc="counting steps")], dtype=np.int64)


def _gather(dataset: Any, indices: np.ndarray, cfg: IngestConfig, steps: np.ndarray) -> _Gathered:
    """Read every episode once and write its picked rows (as float32) at their final positions.

    ``steps`` (steps per episode) fixes the number of states before reading, so the subset and the
    split are drawn before reading; an episode that disagrees raises
    :class:`_CountMismatch`.
    """
    dataset_id = dataset.spec.dataset_id
    counts = -(-steps // cfg.every)  # states kept per episode: ceil(steps / every)
    n = int(counts.sum())
    order, n_val = _selection(n, cfg, np.random.default_rng(cfg.seed))
    dest = np.full(n, -1, dtype=np.int64)  # row i of the flattened dataset goes to rows[dest[i]] (-1: not picked)
    dest[order] = np.arange(len(order))
    rows: Optional[np.ndarray] = None
    shapes: Optional[tuple[tuple[int, ...], tuple[int, ...]]] = None
    bad_obs = bad_act = 0
    returns = np.empty(len(indices))
    offset = 0
    for i, (states, actions, ret) in enumerate(_episodes(dataset, indices, cfg.every)):
        if len(states) != counts[i]:
            raise _CountMismatch
        returns[i] = ret
        bad_obs += int(np.count_nonzero(~np.isfinite(states)))
        bad_act += int(np.count_nonzero(~np.isfinite(actions)))
        if shapes is None:
            shapes = (states.shape[1:], actions.shape[1:])
            width = states.shape[1] + (actions.shape[1] if cfg.with_actions else 0)
            rows = np.empty((len(order), width), dtype=np.float32)
        elif (states.shape[1:], actions.shape[1:]) != shapes:
            raise DataError(f"{dataset_id}: episode {indices[i]} has observations {states.shape[1:]} / actions "
                            f"{actions.shape[1:]} per step but earlier episodes have {shapes[0]} / {shapes[1]}")
        assert rows is not None
        where = dest[offset : offset + len(states)]
        offset += len(states)
        picked = where >= 0
        if not picked.any():
            continue
        if not picked.all():
            where, states, actions = where[picked], states[picked], actions[picked]
        obs_dim = shapes[0][0]
        rows[where, :obs_dim] = states
        if cfg.with_actions:
            rows[where, obs_dim:] = actions
    if n == 0 or shapes is None or rows is None:
        raise DataError(f"{dataset_id} holds no steps; record some episodes first")
    _check_finite(dataset_id, bad_obs, bad_act)
    _check_shapes(dataset, *shapes)
    _check_enough(len(order), n_val)
    return _Gathered(rows, n_val, n, returns, shapes[0][0], shapes[1][0])


def _read(dataset: Any, cfg: IngestConfig) -> _Gathered:
    """The selected rows of the dataset's episodes (steps counted from metadata, else by reading)."""
    indices = _episode_indices(dataset, cfg.max_episodes)
    steps = _metadata_counts(dataset, indices)
    try:
        if steps is None:
            raise _CountMismatch
        return _gather(dataset, indices, cfg, steps)
    except _CountMismatch:  # metadata absent or wrong: count by reading, then read again
        return _gather(dataset, indices, cfg, _counted_steps(dataset, indices))


def ingest(cfg: IngestConfig, out_dir: Path) -> dict[str, Any]:
    """Resolve, read, check, split and write; returns the metadata written to ``meta.json``."""
    dataset_id = resolve_dataset(cfg.dataset)
    dataset = load_dataset(dataset_id)
    check_box_spaces(dataset, dataset_id)
    try:
        g = _read(dataset, cfg)
    except OSError as e:  # h5py: a truncated or damaged file
        raise UserError(f"cannot read dataset {dataset_id} in {dataset.spec.data_path}: {str(e).splitlines()[0]}; "
                        "the file is damaged, record or download it again") from e

    train, val = g.rows[g.n_val :], g.rows[: g.n_val]
    mean, std = mean_std(train)  # raw std; the score model floors it (score.min_std)
    arrays = {"train": train, "val": val, "mean": mean, "std": std}
    metadata = dataset.storage.metadata
    spec = dataset.spec.env_spec
    meta = {
        "dataset_id": dataset_id,
        "requested": cfg.dataset,
        "minari_version": dataset.minari_version,
        "env_id": spec.id if spec else None,
        "env_spec": spec.to_json() if spec else None,
        "obs_dim": g.obs_dim,
        "action_dim": g.action_dim,
        "input_dim": int(g.rows.shape[1]),
        "with_actions": cfg.with_actions,
        "ref_min_score": metadata.get("ref_min_score"),
        "ref_max_score": metadata.get("ref_max_score"),
        "episodes_total": int(dataset.total_episodes),
        "steps_total": int(dataset.total_steps),
        "episodes_used": int(len(g.returns)),
        "states_available": g.available,
        "train_rows": int(len(train)),
        "val_rows": int(len(val)),
        "expert_return_mean": float(g.returns.mean()),
        "expert_return_std": float(g.returns.std()),
        "content_hash": content_hash(arrays),
        "settings": as_dict(cfg),
    }
    save = np.savez_compressed if sum(a.nbytes for a in arrays.values()) <= COMPRESS_MAX_BYTES else np.savez
    with atomic_dir(out_dir) as tmp:
        save(tmp / "expert.npz", **cast(dict[str, Any], arrays))
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
