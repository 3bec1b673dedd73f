"""The registry of imitation methods: ``train.algorithm`` names one of :data:`REGISTRY`.

Each method is one module of this package holding its :class:`~smiling_pipeline.algorithms.base.Algorithm`
spec as ``SPEC``. Adding a method is that module and its line in :data:`REGISTRY`; the training loop,
settings checks, run tags, sweeps, the cluster backend, the CLI, evaluation and reports read it from here.
"""

from __future__ import annotations

from smiling_pipeline import config
from smiling_pipeline.algorithms import bc, dac, iqlearn, smiling
from smiling_pipeline.algorithms.base import Algorithm
from smiling_pipeline.config import Params
from smiling_pipeline.errors import UserError

REGISTRY: dict[str, Algorithm] = {spec.name: spec for spec in (
    smiling.SPEC,
    dac.SPEC,
    bc.SPEC,
    iqlearn.SPEC,
)}


def names() -> tuple[str, ...]:
    """The registered methods' names, in registration order."""
    return tuple(REGISTRY)


def get(name: str) -> Algorithm:
    """The method ``name`` (``train.algorithm``); an unknown one is a one-line error listing the others."""
    if name not in REGISTRY:
        raise UserError(f"train.algorithm must be one of {', '.join(REGISTRY)}, got {name!r}")
    return REGISTRY[name]


def check(p: Params) -> None:
    """Every rule on a command's final settings: those between settings, then the method's own."""
    config.check(p)
    get(p.train.algorithm).check(p)
