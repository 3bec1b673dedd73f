"""Compute settings: device, torch threads and seeding, set deliberately in one place."""

from __future__ import annotations

import random

import numpy as np
import torch

from smiling_pipeline.errors import UserError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; an unavailable CUDA device is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available here; use --device cpu or auto")
    return dev


def set_threads(threads: int) -> None:
    """Torch intra-op threads (one beats two for the small MLPs here)."""
    if threads < 1:
        raise UserError("runtime.threads must be at least 1")
    torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
