"""Dataclass settings mirroring the sections of ``params.yaml`` and the CLI options.

Every stage reads its section from ``params.yaml`` (unknown or mistyped keys are errors naming
the key); CLI options override single fields with :func:`override`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import dacite
import yaml

from smiling_pipeline.errors import UserError


@dataclass(frozen=True)
class RuntimeConfig:
    """Where things live and how compute is used."""

    minari_root: Optional[str] = None  # None: $MINARI_DATASETS_PATH, else ~/.minari/datasets
    workdir: Optional[str] = None  # stages write below this folder; None: data/<dataset id as a folder name>
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 1  # torch intra-op threads; one is fastest for small MLPs on CPU
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # score-model matmuls; auto: bfloat16 where native


@dataclass(frozen=True)
class DemosConfig:
    """Make a local expert dataset: train an SB3 expert on the true reward, record with DataCollector."""

    env_id: str = "InvertedPendulum-v5"
    dataset_id: str = "smiling/invertedpendulum/expert-v0"
    algorithm: Literal["sac", "ppo"] = "ppo"  # PPO is the quicker expert for the pendulums
    expert_steps: int = 40_000
    expert_net: tuple[int, ...] = (64, 64)
    eval_every: int = 10_000  # evaluate the expert on the true reward every this many steps; the best is recorded
    eval_episodes: int = 5
    episodes: int = 10
    random_episodes: int = 100
    policy_path: Optional[str] = None  # an SB3 .zip (of `algorithm`) to record instead of training one
    seed: int = 0


@dataclass(frozen=True)
class IngestConfig:
    """Turn a Minari dataset into the arrays the later stages read."""

    dataset: str = "smiling/invertedpendulum/expert-v0"
    num_states: Optional[int] = 5_000  # None: all (after subsampling)
    every: int = 1  # keep every k-th step of each episode
    max_episodes: Optional[int] = None
    val_fraction: float = 0.1
    with_actions: bool = False  # state-action variant: also store the actions
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    """Epsilon-prediction network and DDPM noise schedule (paper defaults)."""

    hidden: int = 256
    depth: int = 1
    time_embed: int = 16
    linear: bool = False  # paper's ablation: no activations at all
    num_timesteps: int = 5_000
    beta_schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    min_signal: float = 0.01  # use t only while sqrt(alpha_bar_t) >= this (the informative range)
    normalize: bool = True  # standardise inputs with the expert statistics ...
    min_std: float = 0.1  # ... dividing by max(std, min_std): never magnify a feature more than 1/min_std
    clip: Optional[float] = None  # then clip to [-clip, clip] (features constant in the expert data)


@dataclass(frozen=True)
class PretrainConfig:
    """Denoising score matching of the expert score model."""

    # the held-out loss on the locomotion datasets stops improving near 20k steps (benchmarks/pretrain_length.py);
    # at 2k it is still ~0.01 above, as large as the reward differences training has to resolve
    steps: int = 20_000
    batch_size: int = 1_024
    lr: float = 5e-3
    weight_decay: float = 0.01
    eval_every: int = 500
    seed: int = 0


@dataclass(frozen=True)
class CostConfig:
    """The SMILING reward estimator (see ``cost.py`` for why these defaults)."""

    timesteps: int = 32  # K: stratified timesteps shared by a batch (reports/cost_estimator.md)
    antithetic: bool = True
    # run: one draw set for the whole run (each row's expert half computed once); refit: new draws at
    # every refit (both halves recomputed), so a row's estimation error varies over training
    draws: Literal["run", "refit"] = "run"
    reward_norm: Literal["batch", "none"] = "batch"
    reward_std: float = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """Iterative SMILING (or a baseline): RL on the imitation reward, reward model refit every iteration."""

    algorithm: Literal["smiling", "dac", "bc"] = "smiling"
    rl: Literal["sac", "td3", "ddpg"] = "sac"  # the SB3 off-policy learner (smiling, dac)
    steps: int = 12_000
    iteration_steps: int = 1_000
    learning_starts: int = 1_000
    net: tuple[int, ...] = (64, 64)
    batch_size: int = 256
    lr: float = 3e-4
    gamma: float = 0.99
    # SAC temperature: learnable from 0.1 as in the paper; SB3's default start of 1.0 swamps rewards
    # normalised to std 0.1 for thousands of steps.
    ent_coef: str = "auto_0.1"
    # What a fall (early termination in Hopper, Walker2d, ...) means to the learner. env: the episode
    # ends (value 0 after it); absorbing: it leads to an absorbing state with the batch's lowest reward
    # forever; ignore: train on the environment without early termination (evaluation unchanged).
    termination: Literal["env", "absorbing", "ignore"] = "env"
    reward_offset: float = 0.0  # added to every relabelled reward after normalisation (> 0: survival bonus)
    learner_window: Optional[int] = 200_000  # learner states kept for the refit (None: all)
    # AdamW steps per refit: 100 x 1,024 rows ~ the official one pass over 100k rows sampled with replacement
    learner_fit_steps: int = 100
    learner_batch_size: int = 1_024
    learner_lr: float = 5e-3
    eval_every: int = 1_000
    eval_episodes: int = 5
    checkpoint_every: int = 5_000
    seed: int = 0


@dataclass(frozen=True)
class BaselinesConfig:
    """DAC (GAIL-style discriminator with gradient penalty) and behaviour cloning."""

    # Defaults are the official baseline's (ziqian2000/SMILING config/alg/dac.yaml).
    dac_hidden: int = 256  # one hidden layer, LeakyReLU
    dac_lr: float = 5e-3  # AdamW
    dac_gradient_penalty: float = 10.0
    # discriminator steps per refit at batch train.learner_batch_size: the official one epoch over
    # 100k (learner, expert) pairs at batch 1,024 is 98 steps
    dac_fit_steps: int = 98
    dac_reward_norm: Literal["none", "batch"] = "none"  # official: normalize_reward false
    dac_standardize: bool = False  # official: raw inputs; true: standardise with the expert statistics
    bc_steps: int = 5_000  # gradient steps on expert (state, action) pairs
    bc_batch_size: int = 256
    bc_lr: float = 1e-3


@dataclass(frozen=True)
class EvaluateConfig:
    """Final evaluation with the true environment reward."""

    episodes: int = 10
    seed: int = 10_000
    video: bool = False


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``."""

    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    demos: DemosConfig = field(default_factory=DemosConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    cost: CostConfig = field(default_factory=CostConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselinesConfig = field(default_factory=BaselinesConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


class _Bool:
    """A YAML boolean given to a number field: no number type accepts it, so dacite names the field."""

    def __init__(self, value: bool):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _to_float(value: Any) -> Any:
    """YAML reads ``5e-3`` as a string and ``1`` as an int; float fields accept both (not booleans)."""
    if isinstance(value, bool):
        return _Bool(value)
    try:
        number = float(value) if isinstance(value, (int, str)) else value
    except ValueError:
        return value
    return number if not isinstance(number, float) or math.isfinite(number) else value


def _to_int(value: Any) -> Any:
    return _Bool(value) if isinstance(value, bool) else value


_DACITE = dacite.Config(strict=True, cast=[tuple], type_hooks={float: _to_float, int: _to_int})


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    """Build :class:`Params` from a mapping; unknown keys and wrong types raise :class:`UserError`."""
    _check_keys(raw, source)
    try:
        return dacite.from_dict(Params, raw, config=_DACITE)
    except dacite.WrongTypeError as e:
        raise UserError(f"{source}: '{e.field_path}' must be {_type_name(e.field_type)}, got {e.value!r}") from e
    except dacite.DaciteError as e:
        raise UserError(f"{source}: {e}") from e


def load_params(path: str | Path | None) -> Params:
    """Read ``params.yaml`` (defaults when ``path`` is None or the default file is absent)."""
    if path is None:
        path = Path("params.yaml")
        if not path.exists():
            return Params()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"params file {path} not found; pass an existing file with --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from e
    if not isinstance(raw, dict):
        raise UserError(f"{path} must hold a mapping of sections (runtime, ingest, ...)")
    return params_from_dict(raw, str(path))


def override(cfg: Any, **values: Any) -> Any:
    """Return ``cfg`` with the given fields replaced, skipping values that are None (option not given)."""
    given = {k: v for k, v in values.items() if v is not None}
    return dataclasses.replace(cfg, **given) if given else cfg


def as_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict of a config (tuples as lists), for logging and JSON."""
    def plain(v: Any) -> Any:
        return list(v) if isinstance(v, tuple) else v

    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


def _check_keys(raw: dict[str, Any], source: str) -> None:
    """Name every unknown ``section.key`` (dacite alone reports keys without their section)."""
    sections = typing.get_type_hints(Params)
    unknown = [k for k in raw if k not in sections]
    for name, value in raw.items():
        if name in sections and isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(sections[name])}
            unknown += [f"{name}.{k}" for k in value if k not in known]
        elif name in sections and value is not None:
            raise UserError(f"{source}: section '{name}' must be a mapping, got {value!r}")
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; see params.yaml for the valid ones")


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
