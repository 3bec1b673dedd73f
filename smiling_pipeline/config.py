"""Dataclass settings mirroring the sections of ``params.yaml`` and the CLI options, validated here.

Every field has a type and, where it matters, a range (``_at_least``/``_above``/... beside its
default). Each section checks its own fields in ``__post_init__``, which runs however the section was
made: read from ``params.yaml`` (also after a DVC ``-S`` override), changed by a CLI option through
:func:`override`, or built in Python. Checks that relate several fields (``learning_starts < steps``,
cost.timesteps dividing score.num_timesteps) are in :func:`check`, run by a command once all its settings are final. Dataclasses
rather than pydantic models: the sections stay plain frozen dataclasses that dacite fills from YAML,
with the rules written beside the defaults.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import dacite
import yaml

from smiling_pipeline.errors import UserError


def _at_least(low: float, default: Any) -> Any:
    return field(default=default, metadata={"min": low})


def _above(low: float, default: Any) -> Any:
    return field(default=default, metadata={"gt": low})


def _within(low: float, high: float, default: Any, high_open: bool = False) -> Any:
    return field(default=default, metadata={"min": low, ("lt" if high_open else "max"): high})


def _nonempty(default: Any) -> Any:
    return field(default=default, metadata={"nonempty": True})


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the field type ``hint`` (bool is not a number; ints are floats)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        return isinstance(value, tuple) and all(_type_ok(v, args[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _expected(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin is tuple:
        return f"a list of {_expected(args[0])}s"
    return {int: "an integer", float: "a finite number", str: "a string", bool: "true or false"}.get(hint, str(hint))


class _Section:
    """Checks every field of a section against its type and its range when the section is made."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value, name = getattr(self, f.name), f"{self.section}.{f.name}"
            if not _type_ok(value, hints[f.name]):
                raise UserError(f"{name} must be {_expected(hints[f.name])}, got {_short(value)}")
            items = value if isinstance(value, tuple) else (value,)
            for v in (v for v in items if isinstance(v, (int, float))):
                m = f.metadata
                if ("min" in m and v < m["min"]) or ("gt" in m and v <= m["gt"]) or ("max" in m and v > m["max"]) \
                        or ("lt" in m and v >= m["lt"]):
                    bounds = [f">= {m['min']}" if "min" in m else f"> {m['gt']}" if "gt" in m else "",
                              f"<= {m['max']}" if "max" in m else f"< {m['lt']}" if "lt" in m else ""]
                    raise UserError(f"{name} must be {' and '.join(b for b in bounds if b)}, got {_short(value)}")
            if f.metadata.get("nonempty") and isinstance(value, (str, tuple)) and not value:
                raise UserError(f"{name} must not be empty")
        self._check_more()

    def _check_more(self) -> None:
        """A section's own rule that a range cannot say (one field, or fields no option changes)."""


@dataclass(frozen=True)
class RuntimeConfig(_Section):
    """Where things live and how compute is used."""

    section: ClassVar[str] = "runtime"

    minari_root: Optional[str] = None  # None: $MINARI_DATASETS_PATH, else ~/.minari/datasets
    workdir: Optional[str] = None  # stages write below this folder; None: data/<dataset id as a folder name>
    device: str = _nonempty("auto")  # auto | cpu | cuda | cuda:N
    threads: int = _at_least(1, 1)  # torch intra-op threads; one is fastest for small MLPs on CPU
    precision: Literal["auto", "float32", "bfloat16"] = "auto"  # score-model matmuls; auto: bfloat16 where native

    def _check_more(self) -> None:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise UserError(f"runtime.device must be auto, cpu, cuda or cuda:N, got {_short(self.device)}")


@dataclass(frozen=True)
class DemosConfig(_Section):
    """Make a local expert dataset: train an SB3 expert on the true reward, record with DataCollector."""

    section: ClassVar[str] = "demos"

    env_id: str = _nonempty("InvertedPendulum-v5")
    dataset_id: str = "smiling/invertedpendulum/expert-v0"  # checked as a Minari id when used
    algorithm: Literal["sac", "ppo"] = "ppo"  # PPO is the quicker expert for the pendulums
    expert_steps: int = _at_least(1, 40_000)
    expert_net: tuple[int, ...] = field(default=(64, 64), metadata={"min": 1, "nonempty": True})
    eval_every: int = _at_least(1, 10_000)  # evaluate the expert on the true reward every this many steps; the best is recorded
    eval_episodes: int = _at_least(1, 5)
    episodes: int = _at_least(1, 10)
    random_episodes: int = _at_least(1, 100)
    policy_path: Optional[str] = None  # an SB3 .zip (of `algorithm`) to record instead of training one
    # record the expert's sampled actions, as the official code does (act(obs, sample=True)); true: its mean action
    deterministic: bool = False
    seed: int = _at_least(0, 0)


@dataclass(frozen=True)
class IngestConfig(_Section):
    """Turn a Minari dataset into the arrays the later stages read."""

    section: ClassVar[str] = "ingest"

    dataset: str = "smiling/invertedpendulum/expert-v0"  # checked as a Minari id when used
    num_states: Optional[int] = _at_least(2, 5_000)  # None: all (after subsampling)
    every: int = _at_least(1, 1)  # keep every k-th step of each episode
    max_episodes: Optional[int] = _at_least(1, None)
    val_fraction: float = _within(0, 1, 0.1, high_open=True)
    with_actions: bool = False  # state-action variant: also store the actions
    seed: int = _at_least(0, 0)


@dataclass(frozen=True)
class ScoreConfig(_Section):
    """Epsilon-prediction network and DDPM noise schedule (paper defaults)."""

    section: ClassVar[str] = "score"

    hidden: int = _at_least(1, 256)
    depth: int = _at_least(1, 1)  # hidden layers
    time_embed: int = _at_least(2, 16)  # even
    linear: bool = False  # paper's ablation: no activations at all
    num_timesteps: int = _at_least(2, 5_000)
    beta_schedule: Literal["linear", "cosine"] = "linear"
    beta_start: float = _within(0, 1, 1e-4, high_open=True)
    beta_end: float = _within(0, 1, 0.02, high_open=True)
    min_signal: float = _within(0, 1, 0.01, high_open=True)  # use t only while sqrt(alpha_bar_t) >= this (the informative range)
    normalize: bool = False  # true: standardise inputs with the expert statistics (raw by default, as the official code) ...
    min_std: float = _above(0, 0.1)  # ... dividing by max(std, min_std): never magnify a feature more than 1/min_std

    def _check_more(self) -> None:
        if self.time_embed % 2:
            raise UserError(f"score.time_embed must be even (sines and cosines), got {self.time_embed}")
        if self.beta_start >= self.beta_end:
            raise UserError(f"score.beta_start ({self.beta_start}) must be below score.beta_end ({self.beta_end})")


@dataclass(frozen=True)
class PretrainConfig(_Section):
    """Denoising score matching of the expert score model."""

    section: ClassVar[str] = "pretrain"

    # the held-out loss on the locomotion datasets stops improving near 20k steps (benchmarks/pretrain_length.py);
    # at 2k it is still ~0.01 above, as large as the reward differences training has to resolve
    steps: int = _at_least(1, 20_000)
    batch_size: int = _at_least(1, 1_024)
    lr: float = _above(0, 5e-3)
    weight_decay: float = _at_least(0, 0.01)
    eval_every: int = _at_least(1, 500)
    seed: int = _at_least(0, 0)


@dataclass(frozen=True)
class CostConfig(_Section):
    """The SMILING reward estimator (see ``cost.py`` for why these defaults)."""

    section: ClassVar[str] = "cost"

    timesteps: int = _at_least(1, 32)  # K: stratified timesteps shared by a batch (reports/cost_estimator.md)
    antithetic: bool = True
    # run: one draw set for the whole run (each row's expert half computed once); refit: new draws at
    # every refit (both halves recomputed), so a row's estimation error varies over training
    draws: Literal["run", "refit"] = "run"
    # rank: the batch's ranks standardised to mean 0, std reward_std (one row's spike cannot squash the others'
    # differences; reports/fidelity); batch: the rewards themselves standardised (the paper); clip: batch, clipped at 3 std
    reward_norm: Literal["batch", "rank", "clip", "none"] = "rank"
    reward_std: float = _above(0, 0.1)
    # fast: the estimator above (rewards.SmilingReward); official: the official code's computation on every
    # sampled batch (rewards.OfficialReward: grid of `timesteps` over all of [0, T), fresh noise per row), slow
    estimator: Literal["fast", "official"] = "fast"


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Iterative SMILING (or a baseline): RL on the imitation reward, reward model refit every iteration."""

    section: ClassVar[str] = "train"

    algorithm: str = _nonempty("smiling")  # a method of the registry (smiling_pipeline.algorithms), checked there
    rl: Literal["sac", "td3", "ddpg"] = "sac"  # the SB3 off-policy learner (smiling, dac)
    steps: int = _at_least(2, 12_000)
    iteration_steps: int = _at_least(1, 1_000)
    learning_starts: int = _at_least(1, 1_000)
    net: tuple[int, ...] = field(default=(64, 64), metadata={"min": 1, "nonempty": True})
    batch_size: int = _at_least(1, 256)
    lr: float = _above(0, 3e-4)
    gamma: float = _within(0, 1, 0.99, high_open=True)
    target_update_interval: int = _at_least(1, 1)  # gradient steps between target-network updates (official: 2)
    # SAC temperature: learnable from 0.1 as in the paper; SB3's default start of 1.0 swamps rewards
    # normalised to std 0.1 for thousands of steps.
    ent_coef: str = _nonempty("auto_0.1")
    # What a fall (early termination in Hopper, Walker2d, ...) means to the learner. env: the episode
    # ends (value 0 after it); absorbing: it leads to an absorbing state with the batch's lowest reward
    # forever; ignore: train on the environment without early termination (evaluation unchanged).
    termination: Literal["env", "absorbing", "ignore"] = "env"
    reward_offset: float = 0.0  # added to every relabelled reward after normalisation (> 0: survival bonus)
    learner_window: Optional[int] = _at_least(2, 200_000)  # learner states kept for the refit (None: all)
    # AdamW steps per refit: 100 x 1,024 rows ~ the official one pass over 100k rows sampled with replacement
    learner_fit_steps: int = _at_least(1, 100)
    learner_batch_size: int = _at_least(1, 1_024)
    learner_lr: float = _above(0, 5e-3)
    eval_every: int = _at_least(1, 1_000)
    eval_episodes: int = _at_least(1, 5)
    checkpoint_every: int = _at_least(1, 5_000)
    seed: int = _at_least(0, 0)


@dataclass(frozen=True)
class BaselinesConfig(_Section):
    """DAC (GAIL-style discriminator with gradient penalty) and behaviour cloning."""

    section: ClassVar[str] = "baselines"

    # Defaults are the official baseline's (ziqian2000/SMILING config/alg/dac.yaml).
    dac_hidden: int = _at_least(1, 256)  # one hidden layer, LeakyReLU
    dac_lr: float = _above(0, 5e-3)  # AdamW
    dac_gradient_penalty: float = _at_least(0, 10.0)
    # discriminator steps per refit at batch train.learner_batch_size: the official one epoch over
    # 100k (learner, expert) pairs at batch 1,024 is 98 steps
    dac_fit_steps: int = _at_least(1, 98)
    dac_reward_norm: Literal["none", "batch"] = "none"  # official: normalize_reward false
    dac_standardize: bool = False  # official: raw inputs; true: standardise with the expert statistics
    bc_steps: int = _at_least(1, 5_000)  # gradient steps on expert (state, action) pairs
    bc_batch_size: int = _at_least(1, 256)
    bc_lr: float = _above(0, 1e-3)


@dataclass(frozen=True)
class IQLearnConfig(_Section):
    """IQ-Learn's own learner (train.algorithm: iqlearn), in place of train.net, train.lr and train.ent_coef."""

    section: ClassVar[str] = "iqlearn"

    # Defaults are the authors' MuJoCo settings (Div99/IQ-Learn conf/agent/sac.yaml, conf/env/*.yaml,
    # scripts/run_mujoco.sh): 256x256 networks, one Q network, actor lr 3e-5, critic lr 3e-4, a fixed
    # temperature of 0.01, the chi^2 regulariser's alpha 0.5.
    net: tuple[int, ...] = field(default=(256, 256), metadata={"min": 1, "nonempty": True})
    critics: int = _within(1, 2, 1)  # Q networks: 1 (the authors' MuJoCo SingleQCritic) or 2 (SAC's twin, averaged)
    actor_lr: float = _above(0, 3e-5)
    critic_lr: float = _above(0, 3e-4)
    init_temp: float = _above(0, 0.01)  # the entropy coefficient (its start when learn_temp)
    learn_temp: bool = False  # true: SAC's temperature learning from init_temp
    alpha: float = _above(0, 0.5)  # the chi^2 term is 1 / (4 alpha) E[(Q - gamma V')^2]
    # What follows a terminal step (a fall) in the critic's targets. zero: nothing (value 0, the authors'), which
    # with the learner's negative implicit rewards makes falling the best action; bootstrap: the soft value of
    # the state it leads to, as after a time limit (docs/baselines.md measures both).
    terminal: Literal["bootstrap", "zero"] = "bootstrap"


@dataclass(frozen=True)
class EvaluateConfig(_Section):
    """Final evaluation with the true environment reward."""

    section: ClassVar[str] = "evaluate"

    episodes: int = _at_least(1, 10)
    seed: int = _at_least(0, 10_000)
    video: bool = True  # record the first episode (MuJoCo renders off-screen with MUJOCO_GL=egl)


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
    iqlearn: IQLearnConfig = field(default_factory=IQLearnConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def check(p: Params) -> None:
    """Rules between settings, checked by a command once its options are applied (a CLI option may
    repair what ``params.yaml`` alone would break, so these are not checked while sections are made)."""
    if p.train.learning_starts >= p.train.steps:
        raise UserError(f"train.learning_starts ({p.train.learning_starts}) must be below train.steps ({p.train.steps})")
    if p.cost.estimator == "official" and p.score.num_timesteps % p.cost.timesteps:
        raise UserError(f"cost.estimator official scores on a grid of cost.timesteps points over score.num_timesteps "
                        f"({p.score.num_timesteps}), so cost.timesteps must divide it, got {p.cost.timesteps}; "
                        "the official grid is 500 (preset official-reward)")


# Named sets of settings ({"section.key": value}), applied before a command's own options (``--preset``) or by
# a sweep grid (``presets:``). The official ones are ziqian2000/SMILING's settings (DESIGN.md section 3).
PRESETS: dict[str, dict[str, Any]] = {
    # the official reward: raw states, all T timesteps in training and reward, the 500-point grid with fresh
    # noise for every row of every batch, per-batch normalisation to std 0.1
    "official-reward": {"score.normalize": False, "score.min_signal": 0.0, "cost.estimator": "official",
                        "cost.timesteps": 500, "cost.reward_norm": "batch", "cost.reward_std": 0.1},
    # the official SAC: 1024x1024, batch 1024, lr 1e-4, 5,000 random steps, critic target every 2 steps,
    # temperature learnable from 0.1 (SB3 keeps its own log-std bounds [-20, 2]; official [-5, 2])
    "official-sac": {"train.net": (1024, 1024), "train.batch_size": 1024, "train.lr": 1e-4,
                     "train.learning_starts": 5000, "train.target_update_interval": 2, "train.ent_coef": "auto_0.1",
                     "train.gamma": 0.99},
}


def apply_overrides(p: Params, overrides: dict[str, Any], source: str) -> Params:
    """``p`` with ``{"section.key": value}`` applied (each section re-validated)."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if not hasattr(p, section) or name not in {f.name for f in dataclasses.fields(getattr(p, section))}:
            raise UserError(f"{source}: unknown setting {key!r}")
        sections.setdefault(section, {})[name] = value
    try:
        return dataclasses.replace(p, **{s: dataclasses.replace(getattr(p, s), **v) for s, v in sections.items()})
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def preset_overrides(names: typing.Sequence[str]) -> dict[str, Any]:
    """The ``{"section.key": value}`` of the named :data:`PRESETS`, later ones winning."""
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        raise UserError(f"unknown preset {unknown[0]!r}; the presets are {', '.join(PRESETS)}")
    return {k: v for n in names for k, v in PRESETS[n].items()}


def apply_presets(p: Params, names: typing.Sequence[str]) -> Params:
    """``p`` with the named :data:`PRESETS` applied in order."""
    return apply_overrides(p, preset_overrides(names), f"preset {', '.join(names)}") if names else p


# Settings that do not define what a run is (its seed, budget, evaluation and checkpoint cadence, its data,
# which have tags of their own): left out of :func:`config_tag`.
_NOT_IN_TAG = {"ingest.seed", "ingest.dataset", "ingest.with_actions", "ingest.num_states", "pretrain.seed",
               "pretrain.eval_every", "train.seed", "train.steps", "train.eval_every", "train.eval_episodes",
               "train.checkpoint_every", "train.algorithm"}


# The value a run recorded before a setting was recorded ran with, where it is not the setting's default
# today (the default changed since): a record lacking ``score.normalize`` standardised its states.
BEFORE_RECORDED: dict[str, Any] = {"score.normalize": True, "cost.reward_norm": "batch"}


def in_scopes(key: str, scopes: typing.Sequence[str]) -> bool:
    """Whether ``section.key`` is in one of ``scopes`` (a section, or ``section.prefix``) and defines a run."""
    section, _, name = key.partition(".")
    return key not in _NOT_IN_TAG and any(
        section == s and name.startswith(prefix) for s, _, prefix in (scope.partition(".") for scope in scopes))


def run_settings(p: Params, scopes: typing.Sequence[str]) -> dict[str, Any]:
    """Every setting in ``scopes`` (the run's algorithm's ``tag_scopes``) that defines what a run is, default or
    not, ``{"section.key": value}``: recorded with each run, so a report labels it against today's defaults."""
    return {f"{section}.{f.name}": getattr(getattr(p, section), f.name) for section in typing.get_type_hints(Params)
            for f in dataclasses.fields(getattr(p, section)) if in_scopes(f"{section}.{f.name}", scopes)}


def _same(value: Any) -> Any:
    """A setting's value as comparable whatever recorded it (JSON lists, MLflow's strings, tuples)."""
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
    return tuple(value) if isinstance(value, (list, tuple)) else value


def settings_tag(settings: typing.Mapping[str, Any], scopes: typing.Sequence[str]) -> str:
    """``name=value`` of every setting in ``scopes`` in which a run's recorded ``settings`` differ from today's
    defaults ("default" if none); a setting it lacks ran with :data:`BEFORE_RECORDED`'s value or the default.
    The name is the field's own, or ``section.field`` where another section has a field of that name; a
    preset's name stands for its settings where the run has all of them (``official-reward;draws=refit``)."""
    defaults = run_settings(Params(), scopes)
    names = [f.name for s in typing.get_type_hints(Params) for f in dataclasses.fields(getattr(Params(), s))]

    def short(key: str) -> str:
        field_name = key.split(".", 1)[1]
        return field_name if names.count(field_name) == 1 else key

    def text(value: Any) -> str:
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)

    recorded = ((k, _same(settings.get(k, BEFORE_RECORDED.get(k, d)))) for k, d in defaults.items())
    changed = {k: v for k, v in recorded if v != _same(defaults[k])}
    named = []  # a preset whose every setting here that is not a default is in the run: its name stands for them
    for name, preset in PRESETS.items():
        own = {k: _same(v) for k, v in preset.items() if k in defaults and _same(v) != _same(defaults[k])}
        if own and all(changed.get(k) == v for k, v in own.items()):
            named.append(name)
            changed = {k: v for k, v in changed.items() if k not in own}
    return ";".join(named + [f"{short(k)}={text(v)}" for k, v in changed.items()]) or "default"


def config_tag(p: Params, scopes: typing.Sequence[str]) -> str:
    """The tag of a run with settings ``p``: :func:`settings_tag` of its :func:`run_settings`."""
    return settings_tag(run_settings(p, scopes), scopes)


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


def _to_tuple(value: Any) -> Any:
    """YAML lists for tuple fields; anything else is left for dacite to name as the wrong type."""
    return tuple(value) if isinstance(value, list) else value


_DACITE = dacite.Config(strict=True, type_hooks={float: _to_float, int: _to_int, tuple[int, ...]: _to_tuple})


def params_from_dict(raw: dict[str, Any], source: str = "params") -> Params:
    """Build :class:`Params` from a mapping; unknown keys and wrong types raise :class:`UserError`."""
    _check_keys(raw, source)
    try:
        return dacite.from_dict(Params, raw, config=_DACITE)
    except UserError as e:  # a section's own check
        raise UserError(f"{source}: {e}") from None
    except dacite.WrongTypeError as e:
        raise UserError(f"{source}: '{e.field_path}' must be {_type_name(e.field_type)}, got {_short(e.value)}") from e
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
    unknown = [_key(k) for k in raw if k not in sections]
    for name, value in raw.items():
        if name in sections and isinstance(value, dict):
            known = {f.name for f in dataclasses.fields(sections[name])}
            unknown += [f"{name}.{_key(k)}" for k in value if k not in known]
        elif name in sections and value is not None:
            raise UserError(f"{source}: section '{name}' must be a mapping, got {_short(value)}")
    if unknown:
        raise UserError(f"{source}: unknown key(s) {', '.join(unknown)}; see params.yaml for the valid ones")


def _key(k: Any) -> str:
    """A key as written, quoted when it is not a plain name."""
    return k if isinstance(k, str) and k.isidentifier() else _short(k)


def _type_name(t: Any) -> str:
    return t.__name__ if isinstance(t, type) else str(t).replace("typing.", "")
